"""Engine answers -> OpenAI Chat Completions JSON and SSE (the outbound half of the OpenAI front).

- `completion_body(response, model=..., created=...)` is the `chat.completion` object;
- `ChunkEncoder` turns a stream of `StreamChunk`s into `data: {chat.completion.chunk}\\n\\n` events as OpenAI sends
  them: the role first (`{"role": "assistant", "content": ""}`, or with the first tool-call delta), content and
  tool-call deltas (`index`, and `id`/`type`/`function.name` on each call's first fragment), one chunk with an empty
  delta and the `finish_reason`, the usage chunk (`"choices": []`) when the client asked for it, then
  `data: [DONE]`. A failure after the first event is `data: {"error": {...}}` and no `[DONE]`.

Decisions (documented in the README section):
- `model` is the name the client asked for (the configured model), not the upstream's model id; the
  `x-llm-proxy-model` header names the target's model id.
- `id` is the upstream's response id, or a generated `chatcmpl-<hex>` when it gave none or the answer came from the
  cache (so two answers never share an id).
- a missing `finish_reason` is reported as `tool_calls` when the answer has tool calls, else `stop`;
  missing usage is `null`.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.ids import random_hex
from proxy.types import ChatResponse, StreamChunk, ToolCallDelta, Usage


def new_completion_id() -> str:
    return f"chatcmpl-{random_hex()}"


def usage_body(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's usage object; `prompt_tokens` includes cached tokens, as in `Usage.input_tokens`."""
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def completion_body(response: ChatResponse, *, model: str, created: int) -> dict[str, Any]:
    """The non-streaming `chat.completion` object for an engine answer."""
    message: dict[str, Any] = {"role": "assistant", "content": response.text}
    if response.tool_calls:
        message["content"] = response.text or None
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in response.tool_calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    finish_reason = response.finish_reason or ("tool_calls" if response.tool_calls else "stop")
    return {
        "id": response.id if response.id and not response.cached else new_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_body(response.usage),
    }


def json_bytes(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Text from an upstream may hold a lone surrogate (not encodable as UTF-8): then the whole
    payload is written ASCII-only, where it stays a `\\udXXX` escape, as the upstream sent it."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def sse(payload: dict[str, Any] | bytes) -> bytes:
    """One SSE event: `data: <one-line JSON>` (or a literal such as `[DONE]`) and a blank line."""
    return b"data: " + (payload if isinstance(payload, bytes) else json_bytes(payload)) + b"\n\n"


DONE = sse(b"[DONE]")


class ChunkEncoder:
    """Encodes one streamed answer; one instance per response (it remembers the role, calls and finish)."""

    def __init__(self, *, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self._role_sent = False
        self._calls: dict[int, str] = {}  # index -> id of the tool calls started
        self._finish_reason: str | None = None
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse(self._envelope(choices=[choice]))

    def _envelope(self, **fields: Any) -> dict[str, Any]:
        head = {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created}
        return {**head, "model": self.model, **fields}

    def _tool_call(self, delta: ToolCallDelta) -> dict[str, Any]:
        if delta.index in self._calls:
            return {"index": delta.index, "function": {"arguments": delta.arguments}}
        call_id = delta.id or f"call_{random_hex(24)}"
        self._calls[delta.index] = call_id
        function = {"name": delta.name or "", "arguments": delta.arguments}
        return {"index": delta.index, "id": call_id, "type": "function", "function": function}

    def encode(self, chunk: StreamChunk) -> list[bytes]:
        """The events for one engine chunk (none for a chunk that carries only ids or usage)."""
        if chunk.usage is not None:
            self._usage = chunk.usage
        events: list[bytes] = []
        if chunk.is_content:
            delta: dict[str, Any] = {}
            if not self._role_sent:
                self._role_sent = True
                if chunk.text:  # OpenAI sends the role alone first, with empty content
                    events.append(self._chunk({"role": "assistant", "content": ""}))
                else:
                    delta = {"role": "assistant", "content": None}
            if chunk.text:
                delta["content"] = chunk.text
            if chunk.tool_calls:
                delta["tool_calls"] = [self._tool_call(call) for call in chunk.tool_calls]
            events.append(self._chunk(delta))
        if chunk.finish_reason is not None and self._finish_reason is None:
            events.extend(self._finish(chunk.finish_reason))
        return events

    def _finish(self, finish_reason: str) -> list[bytes]:
        events = []
        if not self._role_sent:  # an empty answer: still one role chunk, as OpenAI sends
            self._role_sent = True
            events.append(self._chunk({"role": "assistant", "content": ""}))
        self._finish_reason = finish_reason
        events.append(self._chunk({}, finish_reason))
        return events

    def end(self, response: ChatResponse | None) -> list[bytes]:
        """The closing events after a clean end: the finish chunk if none was sent, usage if asked, `[DONE]`."""
        events: list[bytes] = []
        if self._finish_reason is None:
            reason = response.finish_reason if response is not None else None
            events.extend(self._finish(reason or ("tool_calls" if self._calls else "stop")))
        if self.include_usage:
            usage = response.usage if response is not None and response.usage is not None else self._usage
            events.append(sse(self._envelope(choices=[], usage=usage_body(usage))))
        events.append(DONE)
        return events


def error_event(error: dict[str, Any]) -> bytes:
    """A mid-stream error, as OpenAI sends it: `data: {"error": {"message", "type", "param", "code"}}`."""
    return sse({"error": error})
