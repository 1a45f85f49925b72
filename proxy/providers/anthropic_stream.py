"""Anthropic Messages replies: the vocabulary shared by whole and streamed replies, and the stream decoder.

Shared pieces (used by `proxy.providers.anthropic` too): `finish_reason_for` (stop_reason -> OpenAI vocabulary),
`usage_from` (Anthropic usage counters -> `Usage`), `upstream_error` (status and/or `error.type` -> the right
`UpstreamError` subclass) and `excerpt` (a short, secret-free snippet of a bad body for error messages).

`AnthropicStreamDecoder` turns the named-event SSE stream (PROTOCOLS.md 3.3) into `StreamChunk`s:
`message_start` -> a chunk with id/model; `text_delta` -> text; a `tool_use` block -> `ToolCallDelta`s indexed by
the block's ordinal among tool_use blocks (not Anthropic's block index); `message_delta` -> finish_reason and the
combined usage; `message_stop` -> done. `ping`, thinking/signature/citations deltas and unknown events are ignored;
an `error` event raises the classified `UpstreamError` (one whose data is not JSON is a server error carrying that
text). An `input_json_delta` for a block no `content_block_start` opened, and a block index started twice, are
malformed (arguments are never dropped in silence); a token count must be a non-negative integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import (
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
from proxy.json_kinds import json_kind
from proxy.providers.http_provider import NotJson, ShapeError, error_for_status, parse_json, usage_or_none
from proxy.providers.openai_wire import token_count
from proxy.providers.sse import SseDecoder, SseError, SseEvent
from proxy.types import FinishReason, StreamChunk, ToolCallDelta, Usage

EXCERPT_CHARS = 200

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # no OpenAI equivalent; the turn is incomplete but ended normally
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# A 4xx/5xx HTTP status decides (it is what retry policies and the SDKs key on), through `error_for_status`, the
# one status table (402 billing_error -> permission: fall back, do not retry); `error.type` decides when there is no
# such status: alone for `event: error` inside a 200 stream.
_ERROR_BY_TYPE: Mapping[str, type[UpstreamError]] = {
    "invalid_request_error": UpstreamBadRequest,
    "request_too_large": UpstreamBadRequest,
    "authentication_error": UpstreamAuthError,
    "billing_error": UpstreamPermissionError,
    "permission_error": UpstreamPermissionError,
    "not_found_error": UpstreamNotFound,
    "rate_limit_error": UpstreamRateLimited,
    "api_error": UpstreamServerError,
    "timeout_error": UpstreamServerError,
    "overloaded_error": UpstreamOverloaded,
}


def finish_reason_for(stop_reason: object) -> FinishReason | None:
    """Anthropic `stop_reason` -> OpenAI `finish_reason`; None stays None, an unknown reason counts as `stop`."""
    if stop_reason is None:
        return None
    if not isinstance(stop_reason, str):
        raise ShapeError(f"stop_reason is not a string: {stop_reason!r}")
    return _FINISH_REASONS.get(stop_reason, "stop")


def usage_from(usage: Mapping[str, Any], provider: str) -> Usage | None:
    """Anthropic usage -> `Usage`. Anthropic's `input_tokens` excludes cache reads and writes; ours includes both.
    None, with a warning, when it is not usable (a count that is not one): see `usage_or_none`."""
    return usage_or_none(_usage, usage, provider)


def _usage(usage: Mapping[str, Any]) -> Usage:
    if not isinstance(usage, Mapping):
        raise ShapeError(f"`usage` is {json_kind(usage)}, not an object")
    cache_read = token_count(usage, "cache_read_input_tokens")
    cache_creation = token_count(usage, "cache_creation_input_tokens")
    details = usage.get("output_tokens_details")
    thinking = (
        token_count(details, "thinking_tokens", "usage.output_tokens_details") if isinstance(details, Mapping) else 0
    )
    return Usage(
        input_tokens=token_count(usage, "input_tokens") + cache_read + cache_creation,
        output_tokens=token_count(usage, "output_tokens"),
        cached_input_tokens=cache_read,
        cache_creation_input_tokens=cache_creation,
        reasoning_tokens=thinking,
    )


def excerpt(text: str, secret: str | None = None) -> str:
    """At most ~200 characters of `text`, whitespace collapsed, with `secret` (the API key) blanked out."""
    text = redact(" ".join(text.split()), secret)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***` (upstreams should never echo keys; be sure)."""
    return text.replace(secret, "***") if secret else text


def is_prompt_too_long(message: str) -> bool:
    """Whether a 400 `invalid_request_error` means the context window is exceeded.

    Anthropic has no error code for this, so we match its two known messages narrowly:
    `prompt is too long: 210266 tokens > 200000 maximum` and
    `input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, ...`.
    """
    lowered = message.lower()
    return lowered.startswith("prompt is too long") or "exceed context limit" in lowered


def upstream_error(
    provider: str,
    message: str,
    *,
    status: int | None,
    error_type: str | None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    """The `UpstreamError` subclass for an HTTP status (None inside a stream) and an Anthropic `error.type`. Any
    status but a 2xx decides through the status table (a 3xx redirect is a protocol error)."""
    cls = error_for_status(status) if status is not None and not 200 <= status < 300 else None
    if cls is None and error_type is not None:
        cls = _ERROR_BY_TYPE.get(error_type)
    if cls is None:
        cls = UpstreamServerError if status is None or status >= 500 else UpstreamBadRequest
    if cls is UpstreamBadRequest and status != 413 and is_prompt_too_long(message):
        cls = ContextLengthExceeded
    return cls(
        message,
        provider=provider,
        status=status,
        error_type=error_type,
        request_id=request_id,
        retry_after=retry_after,
    )


class AnthropicStreamDecoder:
    """Decodes one streamed Messages reply. Fresh per reply; see the module docstring for the event mapping."""

    __slots__ = (
        "_blocks",
        "_done",
        "_partial_text",
        "_pending_error",
        "_provider",
        "_secret",
        "_sse",
        "_tool_args_seen",
        "_tool_ordinals",
        "_usage",
    )

    def __init__(self, provider: str, *, secret: str | None = None) -> None:
        self._provider = provider
        self._secret = secret
        self._sse = SseDecoder()
        self._done = False
        self._partial_text: list[str] = []
        self._blocks: set[object] = set()  # Anthropic block indexes started so far (any type)
        self._tool_ordinals: dict[object, int] = {}  # Anthropic block index -> ordinal among tool_use blocks
        self._tool_args_seen: set[int] = set()  # ordinals that received a non-empty input_json_delta
        self._usage: dict[str, Any] = {}  # latest raw Anthropic counters (message_start, then message_delta)
        # An error met after other chunks in the same feed() is raised by raise_pending() or the next
        # feed()/close(), so the text the upstream sent before failing still reaches the caller (as the OpenAI
        # decoder does).
        self._pending_error: UpstreamError | None = None

    @property
    def done(self) -> bool:
        return self._done

    def raise_pending(self) -> None:
        """Raise the error held back behind the chunks the last `feed()` returned, if any (see `StreamDecoder`)."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error

    def feed(self, data: bytes) -> list[StreamChunk]:
        self.raise_pending()
        chunks: list[StreamChunk] = []
        try:
            events = self._sse.feed(data)
        except SseError as exc:
            raise UpstreamProtocolError(f"the stream is malformed: {exc}", provider=self._provider) from None
        for event in events:
            if self._done:
                break
            try:
                chunk = self._event(event)
            except UpstreamError as exc:
                if not chunks:
                    raise
                self._pending_error = exc
                break
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def close(self) -> list[StreamChunk]:
        self.raise_pending()
        if self._done:
            return []
        raise StreamInterrupted(
            "the stream ended before `message_stop`",
            provider=self._provider,
            partial_text="".join(self._partial_text),
        )

    def _event(self, event: SseEvent) -> StreamChunk | None:
        if not event.data.strip() and event.event != "error":
            return None
        try:
            payload = parse_json(event.data)
        except ValueError as exc:
            if event.event == "error":  # a server that says what went wrong in plain text
                raise self._error_event({"error": {"message": excerpt(event.data, self._secret)}}) from None
            reason = "invalid JSON" if isinstance(exc, NotJson) else f"JSON that {exc}"
            raise self._malformed(f"{reason} in a `{event.event or 'message'}` event", event.data) from None
        if not isinstance(payload, dict):
            raise self._malformed("a stream event is not a JSON object", event.data)
        kind = payload.get("type") or event.event
        try:
            return self._dispatch(kind, payload)
        except ShapeError as exc:
            raise self._malformed(f"bad `{kind}` event ({exc})", event.data) from None

    def _dispatch(self, kind: object, payload: dict[str, Any]) -> StreamChunk | None:
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "content_block_stop":
            return self._block_stop(payload)
        if kind == "message_start":
            return self._message_start(payload)
        if kind == "message_delta":
            return self._message_delta(payload)
        if kind == "message_stop":
            self._done = True
            return None
        if kind == "error":
            raise self._error_event(payload)
        return None  # ping, and event types newer than this code

    def _message_start(self, payload: dict[str, Any]) -> StreamChunk:
        message = _object(payload, "message")
        self._merge_usage(message.get("usage"))
        return StreamChunk(id=_optional_str(message, "id"), model=_optional_str(message, "model"))

    def _block_start(self, payload: dict[str, Any]) -> StreamChunk | None:
        block = _object(payload, "content_block")
        index = payload.get("index")
        if index in self._blocks:
            raise ShapeError(f"content block {index!r} started twice")
        self._blocks.add(index)
        if block.get("type") == "tool_use":
            ordinal = len(self._tool_ordinals)
            self._tool_ordinals[payload.get("index")] = ordinal
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise ShapeError("tool_use block without a string id and name")
            return StreamChunk(tool_calls=(ToolCallDelta(index=ordinal, id=call_id, name=name),))
        if block.get("type") == "text":
            return self._text(block.get("text"))
        return None

    def _block_delta(self, payload: dict[str, Any]) -> StreamChunk | None:
        delta = _object(payload, "delta")
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(delta.get("text"))
        if kind == "input_json_delta":
            ordinal = self._tool_ordinals.get(payload.get("index"))
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str):
                raise ShapeError("input_json_delta without a string partial_json")
            if ordinal is None and payload.get("index") not in self._blocks:
                raise ShapeError(f"tool input for content block {payload.get('index')!r}, which was never started")
            if ordinal is None or not fragment:  # server-tool blocks also stream input; they are not our calls
                return None
            self._tool_args_seen.add(ordinal)
            return StreamChunk(tool_calls=(ToolCallDelta(index=ordinal, arguments=fragment),))
        return None  # thinking_delta, signature_delta, citations_delta, ...

    def _block_stop(self, payload: dict[str, Any]) -> StreamChunk | None:
        ordinal = self._tool_ordinals.get(payload.get("index"))
        if ordinal is None or ordinal in self._tool_args_seen:
            return None
        # A tool call without arguments streams only empty fragments: give it valid JSON text.
        self._tool_args_seen.add(ordinal)
        return StreamChunk(tool_calls=(ToolCallDelta(index=ordinal, arguments="{}"),))

    def _message_delta(self, payload: dict[str, Any]) -> StreamChunk:
        delta = _object(payload, "delta")
        self._merge_usage(payload.get("usage"))
        usage = usage_from(self._usage, self._provider) if self._usage else None
        return StreamChunk(finish_reason=finish_reason_for(delta.get("stop_reason")), usage=usage)

    def _text(self, text: object) -> StreamChunk | None:
        if not isinstance(text, str):
            raise ShapeError("text without a string value")
        if not text:
            return None
        self._partial_text.append(text)
        return StreamChunk(text=text)

    def _merge_usage(self, usage: object) -> None:
        # message_delta counters are cumulative; a null or missing counter keeps message_start's value.
        if isinstance(usage, Mapping):
            self._usage.update((key, value) for key, value in usage.items() if value is not None)

    def _error_event(self, payload: dict[str, Any]) -> UpstreamError:
        error = payload.get("error")
        error = error if isinstance(error, dict) else {}
        error_type = error.get("type") if isinstance(error.get("type"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        request_id = payload.get("request_id") if isinstance(payload.get("request_id"), str) else None
        return upstream_error(
            self._provider,
            redact(message, self._secret) or f"error event in the stream ({error_type or 'unknown type'})",
            status=None,
            error_type=error_type,
            request_id=request_id,
        )

    def _malformed(self, what: str, data: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{what}: {excerpt(data, self._secret)}", provider=self._provider)


def _object(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    if not isinstance(value, Mapping):
        raise ShapeError(f"`{key}` is not an object")
    return value


def _optional_str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise ShapeError(f"`{key}` is not a string")
    return value
