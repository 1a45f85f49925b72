"""The OpenAI Chat Completions codec: `ChatRequest` -> HTTP call, and replies, errors and SSE -> normalized types.

Pure translation, no I/O (see `proxy.providers.base`). Decisions worth knowing:
- `max_completion_tokens` is sent instead of `max_tokens` for o-series and gpt-5 models (o1*, o3*, o4*, gpt-5*).
- Streaming always asks for `stream_options.include_usage`, so the last chunk carries usage.
- `finish_reason`: `stop|length|tool_calls|content_filter` kept, the deprecated `function_call` becomes
  `tool_calls`, any other value becomes `stop` (the reply did end; the vocabulary is just unknown), absent stays None.
- Reply text is None when the message has only tool calls; a `refusal` fills the text when `content` is null.
- Errors are classified by HTTP status, then by the error `code`/`type` (never by matching message text).
- Stream chunks that carry nothing (the role-only first delta, empty deltas) yield no `StreamChunk`. If an error
  event follows chunks decoded in the same `feed()` call, those chunks are returned first and the error is raised
  by the next `feed()`/`close()`, so no text is lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    StreamInterrupted,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
)
from proxy.providers.base import HttpCall
from proxy.providers.retry_after import parse_retry_after
from proxy.providers.sse import SseDecoder
from proxy.types import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    FinishReason,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDef,
    Usage,
)

if TYPE_CHECKING:
    from proxy.config.model import ProviderConfig

DEFAULT_BASE_URL = "https://api.openai.com/v1"
EXCERPT_CHARS = 200
MAX_MESSAGE_CHARS = 1000
_SECRET_MIN_CHARS = 8  # shorter header values are not worth redacting (and would mangle messages)

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}
_STATUS_ERRORS: Mapping[int, type[UpstreamError]] = {
    400: UpstreamBadRequest,
    401: UpstreamAuthError,
    403: UpstreamPermissionError,
    404: UpstreamNotFound,
    408: UpstreamServerError,
    409: UpstreamServerError,
    413: UpstreamBadRequest,
    422: UpstreamBadRequest,
    429: UpstreamRateLimited,
    503: UpstreamOverloaded,
    529: UpstreamOverloaded,
}
# Codes that refine a bad request.
_BAD_REQUEST_CODES: Mapping[str, type[UpstreamError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "content_filter": ContentFiltered,
    "content_policy_violation": ContentFiltered,
    "exceed_context_size_error": ContextLengthExceeded,  # llama.cpp says it in `type`, with `code: 400`
}
# When the status says nothing (an error inside a 200 stream): classify by `code`, then `type`.
_CODE_OR_TYPE_ERRORS: Mapping[str, type[UpstreamError]] = {
    **_BAD_REQUEST_CODES,
    "rate_limit_exceeded": UpstreamRateLimited,
    "insufficient_quota": UpstreamRateLimited,
    "rate_limit_error": UpstreamRateLimited,
    "tokens": UpstreamRateLimited,
    "requests": UpstreamRateLimited,
    "invalid_api_key": UpstreamAuthError,
    "authentication_error": UpstreamAuthError,
    "permission_error": UpstreamPermissionError,
    "model_not_found": UpstreamNotFound,
    "not_found_error": UpstreamNotFound,
    "NotFoundError": UpstreamNotFound,
    "invalid_request_error": UpstreamBadRequest,
    "BadRequestError": UpstreamBadRequest,
    "overloaded_error": UpstreamOverloaded,
    "server_error": UpstreamServerError,
    "api_error": UpstreamServerError,
    "InternalServerError": UpstreamServerError,
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body said: its message, `type` and `code` (stringified), and an HTTP status it claimed."""

    message: str
    type: str | None = None
    code: str | None = None
    status_hint: int | None = None  # vLLM and llama.cpp put the HTTP status in an integer `code`


class OpenAICodec:
    """Codec for `POST {base_url}/chat/completions`. Construct once per provider; all methods are pure."""

    def __init__(
        self,
        provider: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        call_headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            call_headers["Authorization"] = f"Bearer {api_key}"
        if organization:
            call_headers["OpenAI-Organization"] = organization
        if project:
            call_headers["OpenAI-Project"] = project
        call_headers.update(headers or {})
        self.headers: Mapping[str, str] = MappingProxyType(call_headers)
        secrets = [api_key or "", *(headers or {}).values()]
        self._secrets = tuple(s for s in secrets if len(s) >= _SECRET_MIN_CHARS)

    @classmethod
    def from_config(cls, cfg: ProviderConfig) -> OpenAICodec:
        return cls(
            cfg.name,
            base_url=cfg.base_url or DEFAULT_BASE_URL,
            api_key=cfg.api_key.reveal() if cfg.api_key else None,
            organization=cfg.organization,
            project=cfg.project,
            headers={name: value.reveal() for name, value in cfg.headers.items()},
        )

    # --- requests -------------------------------------------------------------------------------------

    def encode(self, request: ChatRequest, model: str, *, stream: bool) -> HttpCall:
        body = self.encode_body(request, model, stream=stream)
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=_plain_json)
        return HttpCall(self.url, self.headers, data.encode("utf-8"))

    def encode_body(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        """The request body as a dict (before JSON encoding); only fields that are set."""
        body: dict[str, Any] = {"model": model, "messages": [encode_message(m) for m in request.messages]}
        if request.max_tokens is not None:
            body[self.max_tokens_field(model)] = request.max_tokens
        for key, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("seed", request.seed),
            ("user", request.user),
            ("response_format", request.response_format),
            ("parallel_tool_calls", request.parallel_tool_calls),
        ):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [encode_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = encode_tool_choice(request.tool_choice)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(request.extra)
        return body

    def max_tokens_field(self, model: str) -> str:
        """`max_completion_tokens` for reasoning models (o1*, o3*, o4*, gpt-5*), `max_tokens` otherwise."""
        return "max_completion_tokens" if model.lower().startswith(("o1", "o3", "o4", "gpt-5")) else "max_tokens"

    # --- replies --------------------------------------------------------------------------------------

    def decode(self, status: int, headers: Mapping[str, str], body: bytes) -> ChatResponse:
        if not 200 <= status < 300:
            raise self.decode_error(status, headers, body)
        request_id = header_value(headers, "x-request-id")
        try:
            payload = json.loads(body)
        except ValueError:
            raise self._malformed("the response body is not valid JSON", body, status, request_id) from None
        if not isinstance(payload, dict):
            raise self._malformed("the response body is not a JSON object", body, status, request_id)
        if payload.get("error") and "choices" not in payload:
            raise self.decode_error(status, headers, body)
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._malformed("the response has no `choices`", body, status, request_id)
        choice = choices[0]
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        tool_calls = decode_tool_calls(message.get("tool_calls"))
        text = message_text(message)
        return ChatResponse(
            text=None if tool_calls and not text else text,
            tool_calls=tool_calls,
            finish_reason=self.normalize_finish_reason(choice.get("finish_reason"), has_tool_calls=bool(tool_calls)),
            usage=self.decode_usage(payload.get("usage")),
            provider=self.provider,
            model=_str_or_none(payload.get("model")) or "",
            id=_str_or_none(payload.get("id")),
            request_id=request_id,
        )

    def normalize_finish_reason(self, raw: object, *, has_tool_calls: bool) -> FinishReason | None:
        if raw is None or raw == "":
            return None
        return _FINISH_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"

    def decode_usage(self, raw: object) -> Usage | None:
        if not isinstance(raw, dict):
            return None
        prompt_details = raw.get("prompt_tokens_details")
        completion_details = raw.get("completion_tokens_details")
        return Usage(
            input_tokens=_count(raw.get("prompt_tokens")),
            output_tokens=_count(raw.get("completion_tokens")),
            cached_input_tokens=_count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
            reasoning_tokens=(
                _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
            ),
        )

    # --- errors ---------------------------------------------------------------------------------------

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        try:
            payload = json.loads(body) if body.strip() else None
        except ValueError:
            info = ErrorInfo(f"HTTP {status} with a non-JSON body: {excerpt(body)}")
        else:
            info = error_info(payload) if payload is not None else ErrorInfo(f"HTTP {status} with an empty body")
            if not info.message:
                info = ErrorInfo(f"HTTP {status}: {excerpt(body)}", info.type, info.code, info.status_hint)
        return self.error_from_info(
            info,
            status=status,
            request_id=header_value(headers, "x-request-id"),
            retry_after=parse_retry_after(headers, status=status),
        )

    def error_from_info(
        self, info: ErrorInfo, *, status: int | None, request_id: str | None = None, retry_after: float | None = None
    ) -> UpstreamError:
        """The classified error for what an error body (or stream error event) said."""
        error_class = classify(status if status is not None else info.status_hint, info.type, info.code)
        message = info.message
        if "insufficient_quota" in (info.code, info.type):
            message += " (insufficient_quota: the account is out of quota; retrying will not help until it is paid)"
        return error_class(
            self.redact(message),
            provider=self.provider,
            status=status if status is not None else info.status_hint,
            error_type=info.type,
            code=info.code,
            request_id=request_id,
            retry_after=retry_after,
        )

    def redact(self, text: str) -> str:
        """`text` with the configured API key and header values replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _malformed(self, what: str, body: bytes, status: int | None, request_id: str | None) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            self.redact(f"{what}: {excerpt(body)}"), provider=self.provider, status=status, request_id=request_id
        )

    # --- streaming ------------------------------------------------------------------------------------

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(self)


class OpenAIStreamDecoder:
    """Decodes one `stream: true` reply: `data: {chunk}` events until `data: [DONE]`."""

    __slots__ = ("_codec", "_done", "_next_tool_index", "_pending_error", "_saw_tool_calls", "_sse", "_text")

    def __init__(self, codec: OpenAICodec) -> None:
        self._codec = codec
        self._sse = SseDecoder()
        self._done = False
        self._text: list[str] = []
        self._saw_tool_calls = False
        self._next_tool_index = 0
        self._pending_error: UpstreamError | None = None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def text(self) -> str:
        """The text decoded so far."""
        return "".join(self._text)

    def feed(self, data: bytes) -> list[StreamChunk]:
        self._raise_pending()
        if self._done:
            return []
        return self._decode_events([event.data for event in self._sse.feed(data)])

    def close(self) -> list[StreamChunk]:
        self._raise_pending()
        chunks: list[StreamChunk] = []
        if not self._done and self._sse.pending:
            # The last event was not terminated by a blank line: decode it if it is whole.
            try:
                chunks = self._decode_events([event.data for event in self._sse.feed(b"\n\n")])
            except UpstreamProtocolError:
                chunks = []  # cut in the middle of a chunk: an interruption, reported below
            self._raise_pending()
        if not self._done:
            raise StreamInterrupted(
                "the stream ended before `data: [DONE]`", provider=self._codec.provider, partial_text=self.text
            )
        return chunks

    def _raise_pending(self) -> None:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error

    def _decode_events(self, datas: list[str]) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        for data in datas:
            if data.startswith("[DONE]"):
                self._done = True
                break
            if not data.strip():
                continue
            try:
                chunk = self._decode_chunk(data)
            except UpstreamError as error:
                if not chunks:
                    raise
                self._pending_error = error
                break
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _decode_chunk(self, data: str) -> StreamChunk | None:
        codec = self._codec
        try:
            payload = json.loads(data)
        except ValueError:
            raise codec._malformed("a stream chunk is not valid JSON", data.encode(), None, None) from None
        if not isinstance(payload, dict):
            raise codec._malformed("a stream chunk is not a JSON object", data.encode(), None, None)
        if payload.get("error"):
            raise codec.error_from_info(error_info(payload), status=None)
        choices = payload.get("choices")
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None) if choices else None
        text, tool_calls, finish_reason = "", (), None
        if choice is not None:
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            content = delta.get("content")
            text = content if isinstance(content, str) else ""
            tool_calls = self._tool_call_deltas(delta.get("tool_calls"))
            self._saw_tool_calls = self._saw_tool_calls or bool(tool_calls)
            finish_reason = codec.normalize_finish_reason(
                choice.get("finish_reason"), has_tool_calls=self._saw_tool_calls
            )
        usage = codec.decode_usage(payload.get("usage"))
        if not (text or tool_calls or finish_reason or usage):
            return None
        if text:
            self._text.append(text)
        return StreamChunk(
            text=text,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
            id=_str_or_none(payload.get("id")),
            model=_str_or_none(payload.get("model")),
        )

    def _tool_call_deltas(self, raw: object) -> tuple[ToolCallDelta, ...]:
        if not isinstance(raw, list):
            return ()
        deltas = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                index = self._next_tool_index  # servers that send whole calls without an index: one call each
            self._next_tool_index = max(self._next_tool_index, index + 1)
            function = item.get("function")
            function = function if isinstance(function, dict) else {}
            deltas.append(
                ToolCallDelta(
                    index=index,
                    id=_str_or_none(item.get("id")),
                    name=_str_or_none(function.get("name")),
                    arguments=_arguments_text(function.get("arguments")),
                )
            )
        return tuple(deltas)


# --- encoding helpers -----------------------------------------------------------------------------------


def encode_message(message: Message) -> dict[str, Any]:
    encoded: dict[str, Any] = {"role": message.role}
    if message.role == "assistant" and message.tool_calls:
        encoded["content"] = _encode_content(message.content) if message.content else None
        encoded["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    else:
        encoded["content"] = _encode_content(message.content) if message.content is not None else ""
    if message.role == "tool":
        encoded["tool_call_id"] = message.tool_call_id or ""
    elif message.name:
        encoded["name"] = message.name
    return encoded


def _encode_content(content: str | tuple[ContentPart, ...]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            image: dict[str, Any] = {"url": part.url}
            if part.detail:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
    return parts


def encode_tool(tool: ToolDef) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def encode_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name or ""}}
    return choice.mode


def _plain_json(value: object) -> object:
    """`json.dumps` fallback: read-only mappings (MappingProxyType, frozen config) become dicts."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- decoding helpers -----------------------------------------------------------------------------------


def decode_tool_calls(raw: object) -> tuple[ToolCall, ...]:
    if not isinstance(raw, list):
        return ()
    calls = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        function = item.get("function")
        function = function if isinstance(function, dict) else {}
        calls.append(
            ToolCall(
                id=_str_or_none(item.get("id")) or f"call_{position}",
                name=_str_or_none(function.get("name")) or "",
                arguments=_arguments_text(function.get("arguments")) or "{}",
            )
        )
    return tuple(calls)


def message_text(message: Mapping[str, Any]) -> str | None:
    """A reply message's text: `content` (a string or text parts), else its `refusal`, else None."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    refusal = message.get("refusal")
    return refusal if isinstance(refusal, str) else None


def error_info(payload: object) -> ErrorInfo:
    """Read `{"error": {...}}`, `{"error": "text"}`, flat `{"object": "error", "message": ...}` or `{"detail": ...}`."""
    if not isinstance(payload, dict):
        return ErrorInfo("")
    error = payload.get("error")
    if isinstance(error, str):
        return ErrorInfo(_clip(error), _str_or_none(payload.get("type")), _code_text(payload.get("code")))
    source = error if isinstance(error, dict) else payload
    message = source.get("message")
    if message is None:
        message = source.get("detail")
    if message is None:
        message = ""
    elif not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)  # e.g. a list of validation problems
    code = source.get("code")
    status_hint = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599 else None
    return ErrorInfo(_clip(message), _str_or_none(source.get("type")), _code_text(code), status_hint)


def classify(status: int | None, error_type: str | None, code: str | None) -> type[UpstreamError]:
    """The error class for a status and the body's `type`/`code`. No message text is looked at."""
    error_class = _STATUS_ERRORS.get(status) if status is not None else None
    if error_class is None and status is not None and 400 <= status < 500:
        error_class = UpstreamBadRequest
    elif error_class is None and status is not None and 500 <= status < 600:
        error_class = UpstreamServerError
    if error_class is UpstreamBadRequest:
        return _BAD_REQUEST_CODES.get(code or "") or _BAD_REQUEST_CODES.get(error_type or "", UpstreamBadRequest)
    if error_class is not None:
        return error_class
    return _CODE_OR_TYPE_ERRORS.get(code or "") or _CODE_OR_TYPE_ERRORS.get(error_type or "") or UpstreamServerError


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header by lowercase `name`, whatever case `headers` uses."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def excerpt(body: bytes | str) -> str:
    """The first ~200 characters of a body, whitespace collapsed."""
    text = body[: EXCERPT_CHARS * 8].decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text[: EXCERPT_CHARS * 8].split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _arguments_text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if raw is None:
        return ""
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)  # some servers send an object


def _code_text(code: object) -> str | None:
    return None if code is None or code == "" else str(code)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
