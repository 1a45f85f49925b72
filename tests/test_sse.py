"""Tests for the incremental SSE decoder (proxy/providers/sse.py)."""

from __future__ import annotations

import pytest

from proxy.providers.sse import SseDecoder, SseEvent


def decode(*pieces: bytes) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events


TRANSCRIPT = (
    ": keep-alive\n"
    "\n"
    "event: message_start\n"
    "id: 1\n"
    'data: {"a": 1}\n'
    "\n"
    "data: first line\n"
    "data: second line\n"
    "\n"
    ": comment between events\n"
    "data: 日本 👋\n"
    "\n"
    "data: [DONE]\n"
    "\n"
)
EXPECTED = [
    SseEvent('{"a": 1}', "message_start", "1"),
    SseEvent("first line\nsecond line", None, "1"),  # the last event id persists (WHATWG)
    SseEvent("日本 👋", None, "1"),
    SseEvent("[DONE]", None, "1"),
]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_ending_form(newline: str) -> None:
    assert decode(TRANSCRIPT.replace("\n", newline).encode()) == EXPECTED


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_split_point_gives_the_same_events(newline: str) -> None:
    data = TRANSCRIPT.replace("\n", newline).encode()
    for split in range(len(data) + 1):
        assert decode(data[:split], data[split:]) == EXPECTED, f"split at byte {split}"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_one_byte_at_a_time(newline: str) -> None:
    data = TRANSCRIPT.replace("\n", newline).encode()
    assert decode(*(data[i : i + 1] for i in range(len(data)))) == EXPECTED


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r") == [SseEvent("a\nb\nc"), SseEvent("d")]


def test_cr_at_chunk_end_then_lf_in_next_chunk_is_one_line_ending() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    # if the `\n` were a second line ending, this would dispatch "a" alone
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [SseEvent("a\nb")]
    assert decoder.feed(b"\n") == []
    assert not decoder.pending


def test_empty_chunk_between_cr_and_lf_does_not_split_the_line_ending() -> None:
    assert decode(b"data: a\r", b"", b"\ndata: b\n\n") == [SseEvent("a\nb")]


def test_cr_then_non_lf_is_a_line_ending_of_its_own() -> None:
    assert decode(b"data: a\r", b"\r") == [SseEvent("a")]
    assert decode(b"data: a\r", b"data: b\r\r") == [SseEvent("a\nb")]


def test_comments_are_dropped() -> None:
    assert decode(b": keep-alive\n\n:\n\n: OPENROUTER PROCESSING\r\n\r\n") == []
    assert decode(b"data: a\n: in the middle\ndata: b\n\n") == [SseEvent("a\nb")]


def test_data_field_spacing() -> None:
    assert decode(b"data:x\n\n") == [SseEvent("x")]
    assert decode(b"data:  two spaces\n\n") == [SseEvent(" two spaces")]  # only one space is removed
    assert decode(b"data\n\n") == [SseEvent("")]  # a field name alone has an empty value
    assert decode(b"data: a:b: c\n\n") == [SseEvent("a:b: c")]


def test_empty_data_lines_are_kept() -> None:
    assert decode(b"data:\ndata: x\ndata:\n\n") == [SseEvent("\nx\n")]


def test_event_and_id_fields() -> None:
    events = decode(b"event: ping\ndata: {}\n\nid: 42\ndata: a\n\ndata: b\n\nevent: error\nid: 43\ndata: c\n\n")
    assert events == [
        SseEvent("{}", "ping", None),
        SseEvent("a", None, "42"),
        SseEvent("b", None, "42"),  # event type resets after each event, the id does not
        SseEvent("c", "error", "43"),
    ]


def test_event_without_data_is_dispatched_like_the_sdk() -> None:
    assert decode(b"event: ping\n\n") == [SseEvent("", "ping")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\r\r") == []


def test_unknown_fields_and_retry_are_ignored() -> None:
    assert decode(b"retry: 1000\nfoo: bar\ndata: x\n\n") == [SseEvent("x")]


def test_utf8_split_inside_a_character() -> None:
    data = "data: héllo 日本 👋\n\n".encode()
    emoji_start = data.index("👋".encode())
    assert decode(data[: emoji_start + 2], data[emoji_start + 2 :]) == [SseEvent("héllo 日本 👋")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SseEvent("\ufffd\ufffd")]


def test_pending_reports_a_partial_event() -> None:
    decoder = SseDecoder()
    assert not decoder.pending
    decoder.feed(b"data: par")
    assert decoder.pending
    decoder.feed(b"tial\n")
    assert decoder.pending  # a data line without its blank line
    assert decoder.feed(b"\n") == [SseEvent("partial")]
    assert not decoder.pending
    decoder.feed(b"event: x\n")
    assert decoder.pending


def test_unterminated_event_is_held_not_dispatched() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.feed(b"\n") == [SseEvent("[DONE]")]


def test_many_lines_in_one_chunk() -> None:
    data = b"".join(b"data: %d\n\n" % i for i in range(2000))
    assert [e.data for e in decode(data)] == [str(i) for i in range(2000)]
