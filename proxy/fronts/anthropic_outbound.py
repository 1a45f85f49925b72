"""Engine answers -> Anthropic Messages JSON and SSE events (pure, no I/O).

- `message_json(response, model=...)`: a `ChatResponse` as Anthropic's `message` object.
- `MessageEvents`: one per streamed answer; turns `StreamChunk`s into the event sequence Anthropic sends:
  `message_start`, `ping`, then per content block `content_block_start` / `content_block_delta` (`text_delta`,
  `input_json_delta`) / `content_block_stop`, then `message_delta` (stop_reason, usage) and `message_stop`.
  A failure after the first event is `error_event(...)`: `event: error` and no `message_stop`.
- `error_type_for(error)`: the Anthropic error type for a `ProxyError` (by its status, or its cause's).

Conventions (PROTOCOLS.md 4.2, reverse direction):
- stop reasons: `length` -> `max_tokens`, `content_filter` -> `refusal`, a reply with tool calls -> `tool_use`
  (also when an OpenAI-compatible server says `stop`), a matched stop string the provider named ->
  `stop_sequence` (with `stop_sequence` set; only Anthropic upstreams say which), anything else -> `end_turn`;
- usage: Anthropic's `input_tokens` excludes cache reads and writes, the proxy's `Usage.input_tokens` includes
  them; `message_start` carries the proxy's offline estimate of the input tokens, the final `message_delta` the
  upstream's counts (when it reported any);
- tool inputs: the arguments' JSON object; empty arguments are `{}`; arguments that are not a JSON object (a
  model's broken output) are kept as text under `_raw_arguments`. Streamed, the argument fragments pass through
  as `input_json_delta`s exactly as the upstream sent them;
- `model` (in the message and in `message_start`) is the name the client asked for (the configured model), not
  the upstream's model id, as in the OpenAI front; the `x-llm-proxy-model` header names the target's model id;
- ids: an upstream `msg_...` id is kept, anything else gets a fresh `msg_<hex>`; a tool call without an id
  gets `toolu_<hex>`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.errors import ProxyError
from proxy.ids import random_hex
from proxy.types import ChatResponse, FinishReason, StreamChunk, Usage

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def message_id(upstream_id: str | None) -> str:
    return upstream_id if upstream_id and upstream_id.startswith("msg_") else f"msg_{random_hex()}"


def _tool_id(call_id: str | None) -> str:
    return call_id or f"toolu_{random_hex()}"


def stop_reason_for(finish_reason: FinishReason | None, *, tool_calls: bool, stop_sequence: str | None = None) -> str:
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "content_filter":
        return "refusal"
    if tool_calls:
        return "tool_use"
    if stop_sequence:
        return "stop_sequence"
    return "end_turn"


def usage_json(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        usage = Usage()
    cached, created = usage.cached_input_tokens, usage.cache_creation_input_tokens
    return {
        "input_tokens": max(0, usage.input_tokens - cached - created),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.output_tokens,
    }


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as Anthropic's `input` object (see the module docstring)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # also NaN/Infinity, and integers too long to read
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def message_json(response: ChatResponse, *, model: str | None = None) -> dict[str, Any]:
    """A whole answer as Anthropic's `message` object; its `model` is `model`, the name the client asked for
    (default: the configured model that served it, `response.route`)."""
    content: list[dict[str, Any]] = []
    if response.text:
        content.append({"type": "text", "text": response.text})
    for call in response.tool_calls:
        content.append(
            {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": tool_input(call.arguments)}
        )
    stop_reason = stop_reason_for(
        response.finish_reason, tool_calls=bool(response.tool_calls), stop_sequence=response.stop_sequence
    )
    return {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": model or response.route or response.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": response.stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": usage_json(response.usage),
    }


def error_type_for(error: ProxyError) -> str:
    """Anthropic's `error.type` for `error`: by the status of what actually failed (a broken stream's cause)."""
    cause = error.__cause__ if isinstance(error.__cause__, ProxyError) else error
    status = cause.status_code
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def json_bytes(data: object) -> bytes:
    """Compact UTF-8 JSON. A lone surrogate (a model can produce one through a `\\ud800` escape; UTF-8 cannot
    carry it) stays an escape instead of failing the answer."""
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode()


def sse_event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    return sse_event("error", {"type": "error", "error": {"type": error_type, "message": message}})


class MessageEvents:
    """The SSE events of one streamed message. `start()` once, `chunk()` per chunk, then `finish()` (clean end)."""

    __slots__ = (
        "_finish_reason",
        "_id",
        "_input_tokens",
        "_model",
        "_next_index",
        "_open",
        "_open_text",
        "_tools",
        "_usage",
    )

    def __init__(self, *, message_id: str, model: str, input_tokens: int) -> None:
        self._id = message_id
        self._model = model
        self._input_tokens = input_tokens
        self._next_index = 0
        self._open: int | None = None  # the index of the open content block
        self._open_text = False  # whether that block is a text block
        self._tools: dict[int, int] = {}  # tool call ordinal -> its block index
        self._finish_reason: FinishReason | None = None
        self._usage: Usage | None = None

    def start(self) -> bytes:
        message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage_json(Usage(input_tokens=self._input_tokens)), "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message}) + sse_event(
            "ping", {"type": "ping"}
        )

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _begin(self, block: dict[str, Any], *, text: bool) -> list[bytes]:
        events = self._close()
        self._open, self._open_text = self._next_index, text
        self._next_index += 1
        start = {"type": "content_block_start", "index": self._open, "content_block": block}
        events.append(sse_event("content_block_start", start))
        return events

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def chunk(self, chunk: StreamChunk) -> bytes:
        events: list[bytes] = []
        if chunk.text:
            if self._open is None or not self._open_text:
                events += self._begin({"type": "text", "text": ""}, text=True)
            assert self._open is not None
            events.append(self._delta(self._open, {"type": "text_delta", "text": chunk.text}))
        for delta in chunk.tool_calls:
            index = self._tools.get(delta.index)
            if index is None:
                block = {"type": "tool_use", "id": _tool_id(delta.id), "name": delta.name or "", "input": {}}
                events += self._begin(block, text=False)
                index = self._tools[delta.index] = self._next_index - 1
            if delta.arguments:  # to its own block, even in the odd case that the upstream interleaves calls
                events.append(self._delta(index, {"type": "input_json_delta", "partial_json": delta.arguments}))
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return b"".join(events)

    def finish(self) -> bytes:
        events = self._close()
        stop_reason = stop_reason_for(self._finish_reason, tool_calls=bool(self._tools))
        usage: dict[str, int] = usage_json(self._usage) if self._usage is not None else {"output_tokens": 0}
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        events.append(sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(sse_event("message_stop", {"type": "message_stop"}))
        return b"".join(events)
