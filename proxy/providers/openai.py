"""The OpenAI Chat Completions codec: `ChatRequest` -> HTTP call, and replies, errors and SSE -> normalized types.

Pure translation, no I/O (see `proxy.providers.base`). Decisions worth knowing:
- `max_completion_tokens` is sent instead of `max_tokens` for o-series and gpt-5 models (o1*, o3*, o4*, gpt-5*).
- Streaming always asks for `stream_options.include_usage`, so the last chunk carries usage.
- `finish_reason`: `stop|length|tool_calls|content_filter` kept, the deprecated `function_call` becomes
  `tool_calls`, any other value becomes `stop` (the reply did end; the vocabulary is just unknown), absent stays None.
- Reply text is None when the message has only tool calls; a `refusal` fills the text when `content` is null.
- A reply whose parts have the wrong shape is an `UpstreamProtocolError` naming the part (`choices` empty or not
  a list, `message` missing or not an object (allowed only with `content_filter`), `content` a number, a tool call
  without a function name, a token count that is a string or negative, JSON nested too deeply or not UTF-8);
  absent and null optional fields are fine.
- Errors are classified by HTTP status, then by the error `code`/`type` (never by matching message text); an
  error body wins over a reply without usable `choices`, and a 3xx is named a redirect.
- Stream chunks that carry nothing (the role-only first delta, empty deltas) yield no `StreamChunk`. If an error
  event follows chunks decoded in the same `feed()` call, those chunks are returned first and the error is raised
  by `raise_pending()` or the next `feed()`/`close()`, so no text is lost.

The stream decoder lives in `proxy.providers.openai_stream` and the shared wire helpers (error reading and
classification, excerpts) in `proxy.providers.openai_wire`; both are re-exported here, with `header_value`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from proxy.errors import UpstreamError, UpstreamProtocolError
from proxy.json_kinds import json_kind
from proxy.providers.base import HttpCall
from proxy.providers.http_provider import ShapeError, header_value, parse_json, status_message, usage_or_none
from proxy.providers.openai_stream import OpenAIStreamDecoder
from proxy.providers.openai_wire import (
    EXCERPT_CHARS,
    MAX_MESSAGE_CHARS,
    ErrorInfo,
    _str_or_none,
    classify,
    decode_tool_calls,
    error_info,
    excerpt,
    message_text,
    token_count,
)
from proxy.providers.retry_after import parse_retry_after
from proxy.types import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    FinishReason,
    Message,
    TextPart,
    ToolChoice,
    ToolDef,
    Usage,
)

if TYPE_CHECKING:
    from proxy.config.model import ProviderConfig

__all__ = [
    "DEFAULT_BASE_URL",
    "EXCERPT_CHARS",
    "MAX_MESSAGE_CHARS",
    "ErrorInfo",
    "OpenAICodec",
    "OpenAIStreamDecoder",
    "classify",
    "decode_tool_calls",
    "encode_message",
    "encode_tool",
    "encode_tool_choice",
    "error_info",
    "excerpt",
    "header_value",
    "message_text",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_SECRET_MIN_CHARS = 8  # shorter header values are not worth redacting (and would mangle messages)

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}


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
            payload = parse_json(body)
        except ValueError as exc:
            what = f"the response body {exc}" if body.strip() else "the response body is empty"
            raise self._malformed(what, body, status, request_id) from None
        if not isinstance(payload, dict):
            raise self._malformed("the response body is not a JSON object", body, status, request_id)
        choices = payload.get("choices")
        usable = isinstance(choices, list) and choices and isinstance(choices[0], dict)
        if payload.get("error") and not usable:
            raise self.decode_error(status, headers, body)
        if not usable:
            raise self._malformed("the response has no `choices`", body, status, request_id)
        try:
            return self._response(payload, choices[0], request_id)
        except ShapeError as exc:
            raise self._malformed(f"the response is not a chat completion ({exc})", body, status, request_id) from None

    def _response(self, payload: Mapping[str, Any], choice: Mapping[str, Any], request_id: str | None) -> ChatResponse:
        message = choice.get("message")
        raw_finish = choice.get("finish_reason")
        if not isinstance(message, dict):
            if message is not None:
                raise ShapeError(f"`choices[0].message` is {json_kind(message)}, not an object")
            if raw_finish != "content_filter":  # a filtered answer may come without one
                raise ShapeError("`choices[0]` has no `message`")
            message = {}
        tool_calls = decode_tool_calls(message.get("tool_calls"))
        text = message_text(message)
        return ChatResponse(
            text=None if tool_calls and not text else text,
            tool_calls=tool_calls,
            finish_reason=self.normalize_finish_reason(raw_finish, has_tool_calls=bool(tool_calls)),
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
        """`usage` -> `Usage`; None when absent, or when it is not usable (a count that is not one): the answer is
        kept, paid for, and only its usage is unknown (the rate limiter keeps its estimate), with a warning."""
        return None if raw is None else usage_or_none(_usage, raw, self.provider)

    # --- errors ---------------------------------------------------------------------------------------

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        said = status_message(status)
        try:
            payload = parse_json(body) if body.strip() else None
        except ValueError:
            info = ErrorInfo(f"{said} with a non-JSON body: {excerpt(body)}")
        else:
            info = error_info(payload) if payload is not None else ErrorInfo(f"{said} with an empty body")
            if not info.message:
                info = ErrorInfo(f"{said}: {excerpt(body)}", info.type, info.code, info.status_hint)
            elif payload is not None and said != f"HTTP {status}":  # a redirect: say so before what it said
                info = dataclasses.replace(info, message=f"{said}: {info.message}")
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
        shown = excerpt(body)
        return UpstreamProtocolError(
            self.redact(f"{what}: {shown}" if shown else what),
            provider=self.provider,
            status=status,
            request_id=request_id,
        )

    # --- streaming ------------------------------------------------------------------------------------

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(self)


# --- decoding helpers -----------------------------------------------------------------------------------


def _usage(raw: object) -> Usage:
    """An OpenAI `usage` object -> `Usage`; raises `ShapeError` naming what is not usable."""
    if not isinstance(raw, dict):
        raise ShapeError(f"`usage` is {json_kind(raw)}, not an object")
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    return Usage(
        input_tokens=token_count(raw, "prompt_tokens"),
        output_tokens=token_count(raw, "completion_tokens"),
        cached_input_tokens=(
            token_count(prompt_details, "cached_tokens", "usage.prompt_tokens_details")
            if isinstance(prompt_details, dict)
            else 0
        ),
        reasoning_tokens=(
            token_count(completion_details, "reasoning_tokens", "usage.completion_tokens_details")
            if isinstance(completion_details, dict)
            else 0
        ),
    )


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
