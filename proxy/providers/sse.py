"""An incremental Server-Sent Events decoder: raw bytes in, complete events out.

Mirrors the OpenAI/Anthropic SDKs' parser (and the WHATWG spec): events end at a blank line; lines end at
`\n`, `\r\n` or `\r`; lines starting with `:` are comments (keep-alives) and are dropped; `data:` loses one
optional leading space; several `data:` lines are joined with `\n`; a UTF-8 byte order mark opening the stream is
dropped. Bytes may be split anywhere, including inside a UTF-8 character or between `\r` and `\n`. Bytes that are
not UTF-8 become U+FFFD, as the spec says.

Bounded: a line, or an event's data, longer than `MAX_EVENT_BYTES` (8 MiB) raises `SseError` (a `ValueError`)
instead of growing without end; the protocol decoders report it as a malformed stream.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_BYTES = 8 * 1024 * 1024
BOM = b"\xef\xbb\xbf"


class SseError(ValueError):
    """The byte stream cannot be an event stream (a line or an event over `MAX_EVENT_BYTES`)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


class SseDecoder:
    """Feed bytes with `feed()`, get the events they complete. `pending` says whether a partial event is held."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_pending_cr", "_size", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False
        self._started = False  # past a leading byte order mark (or sure there is none)
        self._data: list[str] = []
        self._size = 0  # characters in `_data`
        self._event: str | None = None
        self._id: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self._buffer or self._data or self._event is not None)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if not chunk:
            return []  # an empty read must not end a pending `\r` (its `\n` may still come)
        if self._pending_cr:
            # The previous chunk ended in `\r`; a `\n` here belongs to that line ending.
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
            self._pending_cr = False
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._started:
            if len(buffer) < len(BOM) and BOM.startswith(buffer):
                self._buffer = buffer  # maybe the start of a byte order mark: wait for more
                return []
            self._started = True
            if buffer.startswith(BOM):
                buffer = buffer[len(BOM) :]
        events: list[SseEvent] = []
        start = 0
        length = len(buffer)
        nl = cr = -2  # -2: not searched yet; -1: none left in the buffer
        while start < length:
            # Search again only past a consumed position, so a chunk of many lines stays linear.
            if nl != -1 and nl < start:
                nl = buffer.find(b"\n", start)
            if cr != -1 and cr < start:
                cr = buffer.find(b"\r", start)
            if nl == -1 and cr == -1:
                break
            if cr == -1 or (nl != -1 and nl < cr):
                end, next_start = nl, nl + 1
            else:
                end = cr
                if cr + 1 < length:
                    next_start = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    next_start = cr + 1
                    self._pending_cr = True
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = next_start
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise SseError(f"a line of the event stream is longer than {MAX_EVENT_BYTES // (1024 * 1024)} MiB")
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:
            if not self._data and self._event is None:
                return None
            event = SseEvent("\n".join(self._data), self._event, self._id)
            self._data = []
            self._size = 0
            self._event = None
            return event
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                raise SseError(f"an event of the event stream is larger than {MAX_EVENT_BYTES // (1024 * 1024)} MiB")
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        # `retry:` and unknown fields are ignored, as the spec says.
        return None
