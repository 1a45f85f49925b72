"""What a fake upstream can be scripted to answer: the reply dataclasses shared by the OpenAI and Anthropic fakes.

Three kinds of scripted reply, consumed one per request:

- `Reply`: a literal HTTP response sent as-is (status, headers, JSON or raw bytes body), e.g. an HTML 502 page.
- `ModelReply`: a successful model answer (text pieces and/or tool calls, usage). The fake renders it in its own
  wire format, as one JSON body or as an SSE stream depending on the request's `"stream"` flag. Its stream fields
  inject faults (delays, cut connection, malformed chunk, keep-alives, `\\r\\n`, mid-stream error, no terminal event).
- `ErrorReply`: an API error (status, type, message, code...). The fake renders it in its own error shape.

A script item may also be a callable `(RecordedRequest) -> Reply | ModelReply | ErrorReply`, for replies that
depend on the request (e.g. echoing it).

Stream positions (`cut_after`, `malformed_at`, `error_after`, `unknown_event_at`, `inject`) count SSE events as
the fake renders them, 0-based: for OpenAI event 0 is the role chunk; for Anthropic it is `message_start`. Use
`OpenAIFake.render_events()` / `AnthropicFake.render_events()` to see a rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from tests.fakes.server import RecordedRequest


@dataclass(frozen=True)
class Reply:
    """A literal response. `headers` are added on top of the fake's standard headers; a value of None removes one."""

    status: int = 200
    headers: Mapping[str, str | None] = field(default_factory=dict)
    json: Any = None
    body: bytes | None = None
    content_type: str | None = None  # defaults to application/json for `json`, application/octet-stream for `body`
    delay_headers: float = 0.0  # seconds before the status line and headers are sent
    delay_body: float = 0.0  # seconds between the headers and the first body byte
    cut_body_after: int | None = None  # send only this many body bytes (Content-Length is the full size), then abort

    def body_bytes(self) -> bytes:
        if self.body is not None:
            return self.body
        if self.json is None:
            return b""
        return json.dumps(self.json).encode()


@dataclass(frozen=True)
class ToolCall:
    """One tool call. `arguments` is JSON text or an object (dumped compactly); `fragments` says how the streamed
    arguments are split: a count of roughly equal pieces, or the exact pieces (they must join to the JSON text)."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None  # default: deterministic `call_fake_<i>` (OpenAI) / `toolu_fake_<i>` (Anthropic)
    fragments: int | Sequence[str] = 3

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))

    def argument_fragments(self) -> list[str]:
        text = self.arguments_json
        if not isinstance(self.fragments, int):
            pieces = list(self.fragments)
            if "".join(pieces) != text:
                raise ValueError(f"fragments {pieces!r} do not join to the arguments {text!r}")
            return pieces
        count = max(1, min(self.fragments, len(text)))
        size = -(-len(text) // count)
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(frozen=True)
class ModelReply:
    """A successful answer, rendered by the fake as JSON or SSE following the request's `stream` flag."""

    text: Sequence[str] = ()  # text pieces: one stream chunk each, joined when not streaming
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None  # provider-native; default stop/tool_calls (OpenAI), end_turn/tool_use (Anthropic)
    model: str | None = None  # default: the model named in the request
    # Usage, written as-is: OpenAI prompt_tokens / completion_tokens / prompt_tokens_details.cached_tokens;
    # Anthropic input_tokens / output_tokens / cache_read_input_tokens / cache_creation_input_tokens.
    input_tokens: int = 12
    output_tokens: int = 6
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    status: int = 200
    headers: Mapping[str, str | None] = field(default_factory=dict)
    delay_headers: float = 0.0
    delay_body: float = 0.0  # also before the first SSE event
    # Stream-only faults (ignored when the request does not stream):
    chunk_delay: float = 0.0  # seconds between SSE events
    cut_after: int | None = None  # send this many events (all if fewer), then abort the TCP connection mid body
    malformed_at: int | None = None  # insert a `data: {not json` event before event N
    keepalive: bool = False  # a `: keep-alive` comment line before every event
    crlf: bool = False  # `\r\n` line endings instead of `\n`
    error_after: int | None = None  # after N events send the provider's in-stream error event and end the stream
    error_type: str | None = None  # default server_error (OpenAI) / overloaded_error (Anthropic)
    error_message: str | None = None  # default: the provider's usual message for that error type
    omit_terminal: bool = False  # no `[DONE]` / `message_stop`, but the body still ends cleanly
    unknown_event_at: int | None = None  # Anthropic only: insert an event of an unknown type before event N
    inject: Mapping[int, bytes] = field(default_factory=dict)  # raw bytes sent before event N (as given, no \r\n fix)

    @property
    def full_text(self) -> str:
        return "".join(self.text)


@dataclass(frozen=True)
class ErrorReply:
    """An API error in the fake's error shape. None fields get provider defaults from the status."""

    status: int
    type: str | None = None
    message: str | None = None
    code: str | int | None = None  # OpenAI `code` (personas may turn it into the int status)
    param: str | None = None  # OpenAI `param`
    retry_after: str | float | None = None  # `retry-after` header (seconds or an HTTP-date)
    retry_after_ms: float | None = None  # `retry-after-ms` header (OpenAI SDK prefers it)
    should_retry: bool | None = None  # `x-should-retry: true|false`
    headers: Mapping[str, str | None] = field(default_factory=dict)
    delay_headers: float = 0.0

    def retry_headers(self) -> dict[str, str | None]:
        headers: dict[str, str | None] = {}
        if self.retry_after is not None:
            headers["retry-after"] = _number_text(self.retry_after)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = _number_text(self.retry_after_ms)
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        headers.update(self.headers)
        return headers


def text_reply(*pieces: str, **options: Any) -> ModelReply:
    """A text answer streamed as `pieces` (one SSE chunk each). `options` are any other `ModelReply` fields."""
    return ModelReply(text=pieces, **options)


def tool_reply(*calls: ToolCall, text: Sequence[str] = (), **options: Any) -> ModelReply:
    """An answer made of tool calls (optionally after some text). `options` are any other `ModelReply` fields."""
    return ModelReply(text=tuple(text), tool_calls=calls, **options)


GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


def html_error(status: int = 502, body: bytes = GATEWAY_HTML, **options: Any) -> Reply:
    """A non-JSON gateway error page (what a CDN answers for 502/504). `options`: any `Reply` field."""
    return Reply(status=status, body=body, content_type="text/html", **options)


ScriptedReply: TypeAlias = "Reply | ModelReply | ErrorReply"
ScriptItem: TypeAlias = "Reply | ModelReply | ErrorReply | Callable[[RecordedRequest], Reply | ModelReply | ErrorReply]"


def _number_text(value: str | float) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
