"""The OpenAI Chat Completions stream decoder: `data: {chunk}` SSE events until `data: [DONE]` -> `StreamChunk`s.

Created by `OpenAICodec.stream_decoder()`; it uses the codec for finish reasons, usage, error classification and
redaction, so subclasses (e.g. `OpenAICompatibleCodec`) apply to streams too. Stream chunks that carry nothing (the
role-only first delta, empty deltas) yield no `StreamChunk`. If an error event follows chunks decoded in the same
`feed()` call, those chunks are returned first and the error is raised by the next `feed()`/`close()`, so no text
is lost. Tool-call deltas without an `index` (servers that send whole calls) get one index each.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from proxy.errors import StreamInterrupted, UpstreamError, UpstreamProtocolError
from proxy.providers.openai_wire import _arguments_text, _str_or_none, error_info
from proxy.providers.sse import SseDecoder
from proxy.types import StreamChunk, ToolCallDelta

if TYPE_CHECKING:
    from proxy.providers.openai import OpenAICodec


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
