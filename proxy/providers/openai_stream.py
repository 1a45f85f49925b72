"""The OpenAI Chat Completions stream decoder: `data: {chunk}` SSE events until `data: [DONE]` -> `StreamChunk`s.

Created by `OpenAICodec.stream_decoder()`; it uses the codec for finish reasons, usage, error classification and
redaction, so subclasses (e.g. `OpenAICompatibleCodec`) apply to streams too. Stream chunks that carry nothing (the
role-only first delta, empty deltas) yield no `StreamChunk`. If an error event follows chunks decoded in the same
`feed()` call, those chunks are returned first and the error is raised by `raise_pending()` or the next
`feed()`/`close()`, so no text is lost.

Tool calls are numbered in the order they start (the upstream's `index` only groups fragments, so indices that
come out of order, skip numbers or are negative still give calls 0, 1, 2...); a delta without an `index` (servers
that send whole calls) is one call of its own. A call's first delta must name its function (its id is made up,
`call_<n>`, when the server sends none): a fragment for an index no delta started is an `UpstreamProtocolError`,
not a nameless call. So is a chunk whose parts have the wrong type (`choices` not a list, a choice `index` that is
not an integer, `delta` or `content` of the wrong type, a bad token count): a chunk is never dropped in silence.
A `content` list of typed parts (as in a whole reply) gives the text of its parts that have one: Mistral's
reasoning models stream `[{"type": "thinking", "thinking": [...]}]` before their answer.
An `event: error` event is read as an error body, like a `data: {"error": ...}` chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from proxy.errors import StreamInterrupted, UpstreamError, UpstreamProtocolError
from proxy.json_kinds import json_kind
from proxy.providers.http_provider import ShapeError, parse_json
from proxy.providers.openai_wire import (
    ErrorInfo,
    _arguments_text,
    _str_or_none,
    error_info,
    excerpt,
    message_text,
)
from proxy.providers.sse import SseDecoder, SseError, SseEvent
from proxy.types import StreamChunk, ToolCallDelta

if TYPE_CHECKING:
    from proxy.providers.openai import OpenAICodec


class OpenAIStreamDecoder:
    """Decodes one `stream: true` reply: `data: {chunk}` events until `data: [DONE]`."""

    __slots__ = (
        "_codec",
        "_done",
        "_pending_error",
        "_saw_tool_calls",
        "_sse",
        "_text",
        "_tool_calls",
        "_tool_ordinals",
    )

    def __init__(self, codec: OpenAICodec) -> None:
        self._codec = codec
        self._sse = SseDecoder()
        self._done = False
        self._text: list[str] = []
        self._saw_tool_calls = False
        self._tool_calls = 0  # calls started so far; the next one's number
        self._tool_ordinals: dict[int, int] = {}  # upstream index -> our call number
        self._pending_error: UpstreamError | None = None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def text(self) -> str:
        """The text decoded so far."""
        return "".join(self._text)

    def feed(self, data: bytes) -> list[StreamChunk]:
        self.raise_pending()
        if self._done:
            return []
        return self._decode_events(self._events(data))

    def _events(self, data: bytes) -> list[SseEvent]:
        try:
            return self._sse.feed(data)
        except SseError as exc:
            raise UpstreamProtocolError(f"the stream is malformed: {exc}", provider=self._codec.provider) from None

    def close(self) -> list[StreamChunk]:
        self.raise_pending()
        chunks: list[StreamChunk] = []
        if not self._done and self._sse.pending:
            # The last event was not terminated by a blank line: decode it if it is whole.
            try:
                chunks = self._decode_events(self._events(b"\n\n"))
            except UpstreamProtocolError:
                chunks = []  # cut in the middle of a chunk: an interruption, reported below
            self.raise_pending()
        if not self._done:
            raise StreamInterrupted(
                "the stream ended before `data: [DONE]`", provider=self._codec.provider, partial_text=self.text
            )
        return chunks

    def raise_pending(self) -> None:
        """Raise the error held back behind the chunks the last `feed()` returned, if any (see `StreamDecoder`)."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error

    def _decode_events(self, events: list[SseEvent]) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        for event in events:
            data = event.data
            if data.startswith("[DONE]"):
                self._done = True
                break
            if not data.strip() and event.event != "error":
                continue
            try:
                chunk = self._error_event(data) if event.event == "error" else self._decode_chunk(data)
            except UpstreamError as error:
                if not chunks:
                    raise
                self._pending_error = error
                break
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _error_event(self, data: str) -> NoReturn:
        """`event: error`: its data is an error body (JSON in any shape `error_info` reads, or plain text)."""
        try:
            payload = parse_json(data) if data.strip() else None
        except ValueError:
            payload = None
        info = error_info(payload) if payload is not None else ErrorInfo("")
        if not info.message:
            message = f"an error event in the stream: {excerpt(data)}"
            info = ErrorInfo(message, info.type, info.code, info.status_hint)
        raise self._codec.error_from_info(info, status=None)

    def _decode_chunk(self, data: str) -> StreamChunk | None:
        codec = self._codec
        try:
            payload = parse_json(data)
        except ValueError as exc:
            raise codec._malformed(f"a stream chunk {exc}", data.encode(), None, None) from None
        if not isinstance(payload, dict):
            raise codec._malformed("a stream chunk is not a JSON object", data.encode(), None, None)
        if payload.get("error"):
            raise codec.error_from_info(error_info(payload), status=None)
        try:
            return self._chunk(payload)
        except ShapeError as exc:
            what = f"a stream chunk is not a chat completion chunk ({exc})"
            raise codec._malformed(what, data.encode(), None, None) from None

    def _chunk(self, payload: dict[str, Any]) -> StreamChunk | None:
        codec = self._codec
        choice = _first_choice(payload.get("choices"))
        text, tool_calls, finish_reason = "", (), None
        if choice is not None:
            delta = choice.get("delta")
            if delta is None:
                delta = {}
            elif not isinstance(delta, dict):
                raise ShapeError(f"`choices[0].delta` is {json_kind(delta)}, not an object")
            content = delta.get("content")
            if type(content) is str:
                text = content
            elif isinstance(content, list):  # typed parts (Mistral's magistral streams its `thinking` so): their text
                text = message_text(delta) or ""
            elif content is not None:
                raise ShapeError(f"`choices[0].delta.content` is {json_kind(content)}, not a string")
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
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ShapeError(f"`delta.tool_calls` is {json_kind(raw)}, not an array")
        deltas = []
        for item in raw:
            if not isinstance(item, dict):
                raise ShapeError(f"a tool-call delta is {json_kind(item)}, not an object")
            index = item.get("index")
            if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
                raise ShapeError(f"a tool-call delta's `index` is {json_kind(index)}, not an integer")
            function = item.get("function")
            if function is None:
                function = {}
            elif not isinstance(function, dict):
                raise ShapeError(f"a tool-call delta's `function` is {json_kind(function)}, not an object")
            name = _str_or_none(function.get("name"))
            call_id = _str_or_none(item.get("id"))
            ordinal = self._tool_ordinals.get(index) if index is not None else None
            if ordinal is None:  # the first delta of a call (one without an index is a whole call)
                if name is None:
                    raise ShapeError(f"a tool-call delta for index {index} starts no call: it names no function")
                ordinal = self._tool_calls
                self._tool_calls += 1
                if index is not None:
                    self._tool_ordinals[index] = ordinal
                call_id = call_id or f"call_{ordinal}"
            deltas.append(
                ToolCallDelta(
                    index=ordinal,
                    id=call_id,
                    name=name,
                    arguments=_arguments_text(function.get("arguments"), f"tool_calls[{ordinal}]"),
                )
            )
        return tuple(deltas)


def _first_choice(choices: object) -> dict[str, Any] | None:
    """The choice with index 0 (others answer `n > 1`, which is not asked for), or None."""
    if choices is None:
        return None
    if not isinstance(choices, list):
        raise ShapeError(f"`choices` is {json_kind(choices)}, not an array")
    for choice in choices:
        if not isinstance(choice, dict):
            raise ShapeError(f"a choice is {json_kind(choice)}, not an object")
        index = choice.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ShapeError(f"a choice's `index` is {json_kind(index)}, not an integer")
        if index == 0:
            return choice
    return None
