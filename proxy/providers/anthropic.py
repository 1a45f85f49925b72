"""The Anthropic Messages codec: `ChatRequest` -> `POST {base}/v1/messages`, and replies back (pure, no I/O).

Request mapping (PROTOCOLS.md 4.1/4.5), with the policies where the protocols leave a choice:
- system messages (anywhere) are hoisted into the top-level `system`, joined with "\\n";
- tool messages become `tool_result` blocks of a user turn; consecutive same-role turns are merged, and inside a
  user turn the `tool_result` blocks are moved first (the API requires it); text blocks that are empty or only
  whitespace are dropped (the API rejects them), and so is a turn left with no blocks;
- a conversation whose first turn is the assistant's gets a placeholder user turn `"."` in front (the API needs a
  user turn first; "." is the least content that is not whitespace);
- a final assistant turn is a prefill: its trailing whitespace is stripped (the API rejects it otherwise);
- `temperature` is capped to 1; `response_format` and `seed` have no equivalent and are dropped;
  `tool_choice` is only sent with tools; `request.extra` is merged into the body last (passthrough: `top_k`,
  `thinking`, ...).
Reply decoding (stop reasons, usage, error classes) lives in `proxy.providers.anthropic_stream`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from proxy.config.model import ProviderConfig
from proxy.errors import RequestError, UpstreamError, UpstreamProtocolError
from proxy.providers.anthropic_stream import (
    AnthropicStreamDecoder,
    ShapeError,
    excerpt,
    finish_reason_for,
    redact,
    upstream_error,
    usage_from,
)
from proxy.providers.base import HttpCall
from proxy.providers.http_provider import NotJson, header_value, parse_json, status_message
from proxy.providers.retry_after import parse_retry_after
from proxy.types import ChatRequest, ChatResponse, ImagePart, Message, TextPart, ToolCall, ToolDef

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_API_VERSION = "2023-06-01"
PLACEHOLDER_USER_TEXT = "."
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_EMPTY_SCHEMA: Mapping[str, Any] = MappingProxyType({"type": "object", "properties": {}})
_TOOL_CHOICE_TYPES = {"auto": "auto", "required": "any", "none": "none", "tool": "tool"}

Block = dict[str, Any]


def messages_url(base_url: str) -> str:
    """`{base}/v1/messages`, whether `base_url` ends in `/v1` (or already in `/v1/messages`) or not."""
    base = base_url.rstrip("/")
    if base.endswith("/v1/messages"):
        return base
    if base.endswith("/v1"):
        return base + "/messages"
    return base + "/v1/messages"


class AnthropicCodec:
    """Encodes requests for, and decodes replies from, one Anthropic-compatible provider."""

    def __init__(
        self,
        provider: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        headers: Mapping[str, str] | None = None,
        default_max_tokens: int = 1024,
    ) -> None:
        self.provider = provider
        self.url = messages_url(base_url)
        self.default_max_tokens = default_max_tokens
        self._api_key = api_key
        base_headers = {
            "x-api-key": api_key,
            "anthropic-version": api_version,
            "content-type": "application/json",
            "accept": "application/json",
        }
        extra = dict(headers or {})
        overridden = {name.lower() for name in extra}
        merged = {k: v for k, v in base_headers.items() if v is not None and k not in overridden}
        self.headers: Mapping[str, str] = MappingProxyType({**merged, **extra})

    @classmethod
    def from_config(cls, cfg: ProviderConfig, *, default_max_tokens: int = 1024) -> AnthropicCodec:
        return cls(
            cfg.name,
            base_url=cfg.base_url or DEFAULT_BASE_URL,
            api_key=cfg.api_key.reveal() if cfg.api_key else None,
            api_version=cfg.api_version or DEFAULT_API_VERSION,
            headers={name: value.reveal() for name, value in cfg.headers.items()},
            default_max_tokens=default_max_tokens,
        )

    def __repr__(self) -> str:
        return f"AnthropicCodec({self.provider!r}, url={self.url!r})"

    # --- requests -------------------------------------------------------------------------------------------

    def encode(self, request: ChatRequest, model: str, *, stream: bool) -> HttpCall:
        body = self.encode_body(request, model, stream=stream)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain_json).encode(
            "utf-8"
        )
        return HttpCall(self.url, self.headers, data)

    def encode_body(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        """The request body as a fresh dict (what `encode` serializes)."""
        system, messages = encode_messages(request.messages)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else self.default_max_tokens,
        }
        if system:
            body["system"] = system
        body["messages"] = messages
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = [encode_tool(tool) for tool in request.tools]
            tool_choice = encode_tool_choice(request)
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        if request.user:
            body["metadata"] = {"user_id": request.user}
        if stream:
            body["stream"] = True
        body.update(request.extra)
        return body

    # --- replies --------------------------------------------------------------------------------------------

    def decode(self, status: int, headers: Mapping[str, str], body: bytes) -> ChatResponse:
        if not 200 <= status < 300:
            raise self.decode_error(status, headers, body)
        try:
            payload = parse_json(body)
        except ValueError as exc:
            what = "the reply is not JSON" if isinstance(exc, NotJson) else f"the reply {exc}"
            text = body.decode("utf-8", errors="replace")  # text only for the excerpt: not on every reply
            raise self._malformed(what if text.strip() else "the reply is empty", text) from None
        if isinstance(payload, dict) and (
            payload.get("type") == "error"
            or (isinstance(payload.get("error"), dict) and not isinstance(payload.get("content"), list))
        ):
            raise self.decode_error(status, headers, body)
        try:
            return self._response(payload, header_value(headers, "request-id"))
        except ShapeError as exc:
            what = f"the reply is not a Messages response ({exc})"
            raise self._malformed(what, body.decode("utf-8", errors="replace")) from None

    def _response(self, payload: object, request_id: str | None) -> ChatResponse:
        if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
            raise ShapeError("no `content` list")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in payload["content"]:
            if not isinstance(block, dict):
                raise ShapeError("a content block is not an object")
            if block.get("type") == "text":
                if not isinstance(block.get("text"), str):
                    raise ShapeError("a text block without text")
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append(_tool_call(block))
        usage = payload.get("usage")
        stop_sequence = payload.get("stop_sequence")
        return ChatResponse(
            text="".join(texts) if texts or not calls else None,
            tool_calls=tuple(calls),
            finish_reason=finish_reason_for(payload.get("stop_reason")),
            usage=usage_from(usage, self.provider) if usage is not None else None,
            provider=self.provider,
            model=payload.get("model") if isinstance(payload.get("model"), str) else "",
            id=payload.get("id") if isinstance(payload.get("id"), str) else None,
            request_id=request_id,
            stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
        )

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        text = body.decode("utf-8", errors="replace")
        request_id = header_value(headers, "request-id")
        error_type: str | None = None
        said = status_message(status)
        try:
            payload = parse_json(text) if text.strip() else None
        except ValueError:
            payload = None
            message = f"{said} with a non-JSON body: {excerpt(text, self._api_key)}"
        else:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                error_type = error.get("type") if isinstance(error.get("type"), str) else None
                raw = error.get("message") if isinstance(error.get("message"), str) else ""
                message = redact(raw, self._api_key) or f"{said} ({error_type or 'no message'})"
                if raw and 300 <= status < 400:
                    message = f"{said}: {message}"
            else:
                message = f"{said}: {excerpt(text, self._api_key)}" if text.strip() else said
            if request_id is None and isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
                request_id = payload["request_id"]
        return upstream_error(
            self.provider,
            message,
            status=status,
            error_type=error_type,
            request_id=request_id,
            retry_after=parse_retry_after(headers, status=status),
        )

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(self.provider, secret=self._api_key)

    def _malformed(self, what: str, text: str) -> UpstreamProtocolError:
        shown = excerpt(text, self._api_key)
        return UpstreamProtocolError(f"{what}: {shown}" if shown else what, provider=self.provider)


# --- request pieces (module functions: they need no codec state) ----------------------------------------------


def encode_messages(messages: tuple[Message, ...]) -> tuple[str, list[Block]]:
    """(`system` text, Anthropic `messages`) for a normalized conversation. Raises `RequestError`."""
    system_texts: list[str] = []
    turns: list[tuple[str, list[Block]]] = []
    for index, message in enumerate(messages):
        role: str = message.role
        if role in ("system", "developer"):
            text = message.text()
            if text.strip():
                system_texts.append(text)
            continue
        if role == "user":
            blocks = _content_blocks(message, index, images=True)
        elif role == "assistant":
            blocks = _content_blocks(message, index, images=False)
            blocks += [_tool_use_block(call, index) for call in message.tool_calls]
        elif role == "tool":
            role, blocks = "user", [_tool_result_block(message, index)]
        else:
            raise RequestError(f"messages[{index}]: role `{role}` is not supported", param=f"messages[{index}].role")
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    if turns and turns[-1][0] == "assistant":
        _strip_prefill(turns)
    if not turns:
        raise RequestError("the request has no user or assistant message with content", param="messages")
    if turns[0][0] == "assistant":
        turns.insert(0, ("user", [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]))
    return "\n".join(system_texts), [_turn(role, blocks) for role, blocks in turns]


def _turn(role: str, blocks: list[Block]) -> Block:
    if role == "user":
        blocks.sort(key=lambda block: block["type"] != "tool_result")  # stable: tool results first
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def _strip_prefill(turns: list[tuple[str, list[Block]]]) -> None:
    blocks = turns[-1][1]
    if blocks[-1]["type"] != "text":
        return
    stripped = blocks[-1]["text"].rstrip()
    if stripped:
        blocks[-1] = {"type": "text", "text": stripped}
    else:
        blocks.pop()
        if not blocks:
            turns.pop()


def _content_blocks(message: Message, index: int, *, images: bool) -> list[Block]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[Block] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart) and images:
            blocks.append(encode_image(part, index))
        else:
            raise RequestError(
                f"messages[{index}]: {message.role} messages cannot carry {part.type} parts for Anthropic",
                param=f"messages[{index}].content",
            )
    return blocks


def encode_image(part: ImagePart, index: int) -> Block:
    """A `data:` URI -> a base64 source; an http(s) URL -> a url source. Other forms raise `RequestError`."""
    url = part.url
    param = f"messages[{index}].content"
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding.lower() != "base64":
            raise RequestError(f"messages[{index}]: an image data URI must be base64-encoded", param=param)
        media_type = media_type.lower()
        if media_type not in IMAGE_MEDIA_TYPES:
            allowed = ", ".join(sorted(IMAGE_MEDIA_TYPES))
            raise RequestError(
                f"messages[{index}]: image type `{media_type}` is not supported by Anthropic (use {allowed})",
                param=param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise RequestError(f"messages[{index}]: an image must be an http(s) URL or a data: URI", param=param)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text} is too large for a JSON number")
    return value


# Built once: `json.loads` with hooks builds a decoder (and its scanner) on every call, ~2.5 us per tool call.
_ARGUMENTS_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def _tool_use_block(call: ToolCall, index: int) -> Block:
    arguments = call.arguments.strip()
    param = f"messages[{index}].tool_calls"
    try:  # NaN, Infinity and 1e999, which Python reads, are refused: the request to Anthropic must be JSON
        value = _ARGUMENTS_DECODER.decode(arguments) if arguments else {}
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"messages[{index}]: tool call `{call.id}` ({call.name}) has arguments that are not valid JSON: {exc.msg}",
            param=param,
        ) from None
    except (RecursionError, ValueError):  # nested too deeply, a number over 4,300 digits, NaN, Infinity, 1e999
        raise RequestError(
            f"messages[{index}]: tool call `{call.id}` ({call.name}) has arguments that cannot be sent as JSON "
            "(nested too deeply, a number too long, or NaN/Infinity)",
            param=param,
        ) from None
    if not isinstance(value, dict):
        raise RequestError(
            f"messages[{index}]: tool call `{call.id}` ({call.name}) has arguments that are not a JSON object",
            param=param,
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": value}


def _tool_result_block(message: Message, index: int) -> Block:
    if not message.tool_call_id:
        raise RequestError(f"messages[{index}]: a tool message needs a tool_call_id", param=f"messages[{index}]")
    block: Block = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = _content_blocks(message, index, images=True)
    if content and all(item["type"] == "text" for item in content):
        block["content"] = "".join(item["text"] for item in content)
    elif content:
        block["content"] = content
    return block


def encode_tool(tool: ToolDef) -> Block:
    """An OpenAI-style function definition -> an Anthropic tool (`parameters` -> `input_schema`)."""
    encoded: Block = {"name": tool.name}
    if tool.description:
        encoded["description"] = tool.description
    encoded["input_schema"] = dict(tool.parameters) if tool.parameters else dict(_EMPTY_SCHEMA)
    if tool.strict is not None:
        encoded["strict"] = tool.strict
    return encoded


def encode_tool_choice(request: ChatRequest) -> Block | None:
    """`tool_choice` + `parallel_tool_calls=False` -> Anthropic's `tool_choice` (None: leave the default)."""
    choice = request.tool_choice
    serial = request.parallel_tool_calls is False
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} if serial else None
    encoded: Block = {"type": _TOOL_CHOICE_TYPES[choice.mode]}
    if choice.mode == "tool":
        if not choice.name:
            raise RequestError("tool_choice names no tool", param="tool_choice")
        encoded["name"] = choice.name
    if serial and choice.mode != "none":  # the `none` choice has no such field
        encoded["disable_parallel_tool_use"] = True
    return encoded


def _tool_call(block: Mapping[str, Any]) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise ShapeError("a tool_use block without id, name and input object")
    return ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))


def _plain_json(value: object) -> object:
    """`json.dumps` fallback: read-only mappings (frozen config, `MappingProxyType`) serialize as objects."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
