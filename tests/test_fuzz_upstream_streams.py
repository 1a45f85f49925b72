"""Bad upstream streams: the real providers (YAML -> codec -> aiohttp transport) against the fake OpenAI and
Anthropic upstreams on 127.0.0.1, sending event streams a broken server sends, byte for byte.

`Frames` scripts a reply as raw writes (the fakes' own `Wire` machinery sends them, one TCP write each, and can
drop the connection after the last). Covered: line endings (LF, CRLF, CR), comments, `retry:`/`id:` fields, events
without data, a byte order mark, chunks split mid-line and mid-UTF-8 character; an error event behind text in the
same read (raised at once, not lost to the connection's end); OpenAI `event: error` events and Anthropic error
events whose data is not JSON; chunks whose parts have the wrong type; tool-call fragments out of order, for an
index no delta started, for a block never started, or a block started twice; bad usage in the last chunk; a stream
request answered with a whole JSON body (an error, or an answer) or an HTML page; an event over the size bound; a
stream that stalls past its idle timeout; gzip claimed but not sent; JSON nested too deeply. Then a seeded fuzz of
both stream decoders (a few hundred mutated transcripts, fed in random pieces): a decoder returns chunks or raises
an `UpstreamError`, nothing else, and mutations that keep the meaning keep the text. The last tests go through the
engine and both HTTP fronts: before the commit point a bad stream falls back invisibly; after it the client gets
its text and then an error event, never a clean end.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from proxy.config import load_config_text
from proxy.errors import (
    StreamInterrupted,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
)
from proxy.fronts import anthropic_api, openai_api
from proxy.providers import sse
from proxy.providers.anthropic import AnthropicCodec
from proxy.providers.base import Provider
from proxy.providers.openai import OpenAICodec
from proxy.providers.registry import build_provider
from proxy.types import ChatRequest, StreamChunk, ToolCall
from tests.fakes import AnthropicFake, OpenAIFake, Reply
from tests.fakes.server import Wire, merge_headers
from tests.http_server import engine_app
from tests.test_providers_e2e import assemble_tool_calls, stream_text

KEYS = {"openai": "test-fuzz-openai-key-0123456789abcdef", "anthropic": "test-fuzz-anthropic-key-0123456789abcdef"}
FAST = "{connect: 1s, first_token: 300ms, total: 3s}"
HELLO = ChatRequest.from_prompt("hello", max_tokens=50)
TEXT = "héllo wörld € 😀 日本"  # multi-byte characters, to be split between writes


# --- raw frames through the fakes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """A reply written as these raw byte frames, one write each (`delay` seconds apart); `abort` drops the
    connection after the last frame instead of ending the body."""

    frames: Sequence[bytes]
    content_type: str = "text/event-stream"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    abort: bool = False


class FramesMixin:
    def to_wire(self, reply: Any, request_json: Any) -> Wire:
        if not isinstance(reply, Frames):
            return super().to_wire(reply, request_json)  # type: ignore[misc]
        headers = merge_headers(
            self.standard_headers(),  # type: ignore[attr-defined]
            {"content-type": reply.content_type},
            reply.headers,
        )
        frames = list(reply.frames)
        return Wire(
            200, headers, frames=frames, chunk_delay=reply.delay, cut_after=len(frames) if reply.abort else None
        )


class RawOpenAIFake(FramesMixin, OpenAIFake):
    pass


class RawAnthropicFake(FramesMixin, AnthropicFake):
    pass


# --- wire builders ----------------------------------------------------------------------------------------------------


def oai(payload: Any = None, **delta: Any) -> bytes:
    """One OpenAI chunk event; `payload` replaces the whole chunk, else `delta` (with `finish_reason`/`usage`)."""
    if payload is None:
        finish = delta.pop("finish_reason", None)
        usage = delta.pop("usage", None)
        payload = {"id": "c1", "object": "chat.completion.chunk", "model": "m-1"}
        payload["choices"] = (
            [] if delta.pop("no_choice", False) else [{"index": 0, "delta": delta, "finish_reason": finish}]
        )
        if usage is not None:
            payload["usage"] = usage
    data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    return b"data: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"
OAI_USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


def oai_stream(text: str = TEXT) -> list[bytes]:
    half = len(text) // 2
    return [
        oai(role="assistant", content=""),
        oai(content=text[:half]),
        oai(content=text[half:]),
        oai(finish_reason="stop"),
        oai(no_choice=True, usage=OAI_USAGE),
        DONE,
    ]


def ant(kind: str, data: Any) -> bytes:
    body = data if isinstance(data, bytes) else json.dumps({"type": kind, **data}, ensure_ascii=False).encode()
    return f"event: {kind}\ndata: ".encode() + body + b"\n\n"


ANT_START = ant("message_start", {"message": {"id": "msg_1", "model": "m-1", "usage": {"input_tokens": 5}}})


def ant_text(text: str, index: int = 0) -> bytes:
    return ant("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": text}})


def ant_tool_start(index: int, call_id: str = "toolu_1", name: str = "f", kind: str = "tool_use") -> bytes:
    block = {"type": kind, "id": call_id, "name": name, "input": {}}
    return ant("content_block_start", {"index": index, "content_block": block})


def ant_json(index: int, fragment: str) -> bytes:
    return ant("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}})


def ant_end(stop_reason: str = "end_turn", usage: Any = None) -> list[bytes]:
    return [
        ant("message_delta", {"delta": {"stop_reason": stop_reason}, "usage": usage or {"output_tokens": 7}}),
        ant("message_stop", {}),
    ]


def ant_stream(text: str = TEXT) -> list[bytes]:
    half = len(text) // 2
    return [
        ANT_START,
        ant("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ant_text(text[:half]),
        ant("ping", {}),
        ant_text(text[half:]),
        ant("content_block_stop", {"index": 0}),
        *ant_end(),
    ]


def good_stream(kind: str) -> list[bytes]:
    return oai_stream() if kind == "openai" else ant_stream()


def error_event(kind: str) -> bytes:
    if kind == "openai":
        return oai({"error": {"message": "The server is overloaded", "type": "server_error"}})
    return ant("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})


# --- providers built from YAML ----------------------------------------------------------------------------------------


@dataclass
class Upstream:
    kind: str
    provider: Provider
    fake: Any

    async def stream(self, *replies: Any) -> list[StreamChunk]:
        self.fake.script(*replies)
        return [chunk async for chunk in self.provider.stream(HELLO, "m-1")]

    async def fails(self, *replies: Any) -> tuple[list[StreamChunk], UpstreamError]:
        """Script `replies`, stream once; the chunks that came before the `UpstreamError` it raised, and the error."""
        self.fake.script(*replies)
        chunks: list[StreamChunk] = []
        with pytest.raises(UpstreamError) as caught:
            async for chunk in self.provider.stream(HELLO, "m-1"):
                chunks.append(chunk)
        assert caught.value.provider == "up"
        assert KEYS[self.kind] not in str(caught.value)
        return chunks, caught.value


@pytest.fixture
async def make_upstream(start_fake) -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    built: list[Provider] = []

    async def make(kind: str) -> Upstream:
        fake = await start_fake(RawOpenAIFake(api_key=KEYS[kind]) if kind == "openai" else RawAnthropicFake())
        text = (
            "version: 1\n"
            "providers:\n"
            f"  up: {{type: {kind}, base_url: '{fake.base_url}', api_key: '{KEYS[kind]}', timeout: {FAST}}}\n"
            "models:\n"
            "  default: {targets: [{provider: up, model: m-1}]}\n"
        )
        provider = build_provider(load_config_text(text, env={}).providers["up"], default_max_tokens=100)
        built.append(provider)
        return Upstream(kind, provider, fake)

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture(params=["openai", "anthropic"])
async def up(request: pytest.FixtureRequest, make_upstream) -> Upstream:
    return await make_upstream(request.param)


@pytest.fixture
async def oai_up(make_upstream) -> Upstream:
    return await make_upstream("openai")


@pytest.fixture
async def ant_up(make_upstream) -> Upstream:
    return await make_upstream("anthropic")


# --- framing that must not change the answer --------------------------------------------------------------------------


def reframe(frames: list[bytes], how: str) -> list[bytes]:
    whole = b"".join(frames)
    if how == "crlf":
        return [frame.replace(b"\n", b"\r\n") for frame in frames]
    if how == "cr":
        return [frame.replace(b"\n", b"\r") for frame in frames]
    if how == "comments-and-fields":
        return [b": keep-alive\n\nretry: 3000\nid: 7\n\nevent: nothing\n\n" + frame for frame in frames]
    if how == "byte-order-mark":  # before a chunk with text (OpenAI lost that whole first event)
        return [b"\xef\xbb\xbf" + frames[1], *frames[2:]]
    if how == "seven-byte-writes":
        return [whole[i : i + 7] for i in range(0, len(whole), 7)]
    if how == "mid-character":  # cut inside each multi-byte character of the text
        cuts = [i + 1 for i in range(len(whole)) if whole[i] >= 0xC0]
        return [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    if how == "crlf-split-between-cr-and-lf":
        crlf = whole.replace(b"\n", b"\r\n")
        cuts = [i + 1 for i in range(len(crlf)) if crlf[i : i + 1] == b"\r"]
        return [crlf[a:b] for a, b in zip([0, *cuts], [*cuts, len(crlf)], strict=True)]
    assert how == "as-is"
    return frames


FRAMINGS = [
    "as-is",
    "crlf",
    "cr",
    "comments-and-fields",
    "byte-order-mark",
    "seven-byte-writes",
    "mid-character",
    "crlf-split-between-cr-and-lf",
]


@pytest.mark.parametrize("how", FRAMINGS)
async def test_framing_does_not_change_the_answer(up: Upstream, how: str) -> None:
    chunks = await up.stream(Frames(reframe(good_stream(up.kind), how)))
    assert stream_text(chunks) == TEXT
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage][-1].output_tokens > 0


# --- errors inside the stream -----------------------------------------------------------------------------------------


async def test_an_error_event_behind_text_is_raised_at_once_not_lost_to_the_connection_end(up: Upstream) -> None:
    """Text and the error event arrive in one read, then the server drops the connection: the client gets the text
    and then the classified error, not a `the connection was closed` interruption (the error used to wait for the
    next read, and the dropped connection took its place)."""
    head = [oai(role="assistant", content="")] if up.kind == "openai" else [ANT_START]
    text = oai(content="Hel") if up.kind == "openai" else ant_text("Hel")
    chunks, error = await up.fails(Frames([*head, text + error_event(up.kind)], abort=True))
    assert stream_text(chunks) == "Hel"
    expected = UpstreamServerError if up.kind == "openai" else UpstreamOverloaded
    assert type(error) is expected, error
    assert "overloaded" in error.message.lower()


@pytest.mark.parametrize(
    ("data", "error_class", "says"),
    [
        (b'{"message": "Model is loading", "type": "server_error"}', UpstreamServerError, "Model is loading"),
        (b'{"error": {"message": "Slow down", "type": "rate_limit_error"}}', UpstreamRateLimited, "Slow down"),
        (b"upstream exploded", UpstreamServerError, "upstream exploded"),
        (b"", UpstreamServerError, "an error event in the stream"),
    ],
    ids=["flat-json", "wrapped-json", "plain-text", "empty"],
)
async def test_an_openai_compatible_error_event_is_its_error(oai_up: Upstream, data, error_class, says) -> None:
    """`event: error` (some OpenAI-compatible servers): its data is the error, whatever its shape; it used to be
    skipped, and the stream ended as a bare interruption."""
    event = b"event: error\ndata: " + data + b"\n\n"
    chunks, error = await oai_up.fails(Frames([oai(role="assistant", content=""), oai(content="Hel"), event]))
    assert stream_text(chunks) == "Hel"
    assert type(error) is error_class and says in error.message


async def test_an_anthropic_error_event_in_plain_text_is_a_server_error(ant_up: Upstream) -> None:
    chunks, error = await ant_up.fails(Frames([ANT_START, ant_text("Hel"), ant("error", b"Internal server error")]))
    assert stream_text(chunks) == "Hel"
    assert type(error) is UpstreamServerError and error.message == "Internal server error"


OPENAI_BAD_CHUNKS = {
    "choices-object": (oai({"choices": {"0": {"delta": {"content": "x"}}}}), "`choices` is an object"),
    "choice-number": (oai({"choices": [5]}), "a choice is an integer"),
    "index-string": (oai({"choices": [{"index": "0", "delta": {"content": "x"}}]}), "`index` is a string"),
    "delta-string": (oai({"choices": [{"index": 0, "delta": "x"}]}), "`choices[0].delta` is a string"),
    "content-number": (oai(content=5), "`choices[0].delta.content` is an integer"),
    "tool-calls-object": (oai(tool_calls={"index": 0}), "`delta.tool_calls` is an object"),
    "tool-index-string": (oai(tool_calls=[{"index": "0", "function": {"name": "f"}}]), "`index` is a string"),
    "tool-arguments-number": (
        oai(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": 5}}]),
        "`tool_calls[0].function.arguments` is an integer",
    ),
    "not-an-object": (oai([1, 2]), "not a JSON object"),
    "deeply-nested": (oai(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "not-json": (oai(b"{not json"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(OPENAI_BAD_CHUNKS), ids=list(OPENAI_BAD_CHUNKS))
async def test_an_openai_chunk_of_the_wrong_shape_is_malformed_after_the_text_before_it(oai_up, case) -> None:
    bad, says = OPENAI_BAD_CHUNKS[case]
    frames = [oai(role="assistant", content=""), oai(content="Hel"), bad, oai(content="lo"), *oai_stream()[3:]]
    chunks, error = await oai_up.fails(Frames(frames))
    assert stream_text(chunks) == "Hel"  # what came before is kept; nothing after the bad chunk is made up
    assert isinstance(error, UpstreamProtocolError), error
    assert says in error.message


ANTHROPIC_BAD_EVENTS = {
    "text-number": (ant("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": 5}}), "text"),
    "delta-null": (ant("content_block_delta", {"index": 0, "delta": None}), "`delta` is not an object"),
    "deeply-nested": (ant("content_block_delta", b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "huge-number": (ant("message_delta", b'{"usage": {"output_tokens": ' + b"9" * 5000 + b"}}"), "number too long"),
    "not-json": (ant("content_block_delta", b"{not json"), "invalid JSON in a `content_block_delta` event"),
}


@pytest.mark.parametrize("case", list(ANTHROPIC_BAD_EVENTS), ids=list(ANTHROPIC_BAD_EVENTS))
async def test_an_anthropic_event_of_the_wrong_shape_is_malformed_after_the_text_before_it(ant_up, case) -> None:
    bad, says = ANTHROPIC_BAD_EVENTS[case]
    chunks, error = await ant_up.fails(Frames([ANT_START, ant_text("Hel"), bad, ant_text("lo"), *ant_end()]))
    assert stream_text(chunks) == "Hel"
    assert isinstance(error, UpstreamProtocolError), error
    assert says in error.message


async def test_a_stream_whose_usage_is_not_one_keeps_its_text_and_loses_only_the_usage(oai_up, ant_up, caplog) -> None:
    """The answer was generated and paid for: a bad count is a warning naming it, and the usage is unknown."""
    frames = oai_stream()
    frames[4] = oai(no_choice=True, usage={"prompt_tokens": "3", "completion_tokens": -1})
    chunks = await oai_up.stream(Frames(frames))
    assert stream_text(chunks) == TEXT and all(chunk.usage is None for chunk in chunks)
    assert any('`usage.prompt_tokens` is "3"' in r.getMessage() for r in caplog.records)
    end = ant("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": -7}})
    chunks = await ant_up.stream(Frames([ANT_START, ant_text("Hel"), ant_text("lo"), end, ant("message_stop", {})]))
    assert stream_text(chunks) == "Hello" and all(chunk.usage is None for chunk in chunks)
    assert any("`usage.output_tokens` is -7, not a count of tokens" in r.getMessage() for r in caplog.records)


# --- tool calls -------------------------------------------------------------------------------------------------------


async def test_openai_tool_calls_are_numbered_in_the_order_they_start(oai_up: Upstream) -> None:
    """Indices out of order, with gaps, negative or huge: calls 0, 1, 2 by first appearance, fragments joined."""
    tool = [
        oai(tool_calls=[{"index": 5, "id": "call_b", "function": {"name": "g", "arguments": '{"y"'}}]),
        oai(tool_calls=[{"index": -1, "id": "call_a", "function": {"name": "f", "arguments": "{}"}}]),
        oai(tool_calls=[{"index": 5, "function": {"arguments": ": 2}"}}]),
        oai(tool_calls=[{"index": 10**9, "function": {"name": "h", "arguments": "{}"}}]),  # no id: one is made up
        oai(finish_reason="tool_calls"),
        DONE,
    ]
    chunks = await oai_up.stream(Frames(tool))
    assert assemble_tool_calls(chunks) == [
        ToolCall("call_b", "g", '{"y": 2}'),
        ToolCall("call_a", "f", "{}"),
        ToolCall("call_2", "h", "{}"),
    ]


async def test_openai_whole_tool_calls_without_an_index_are_one_call_each(oai_up: Upstream) -> None:
    whole = [{"function": {"name": "f", "arguments": '{"a": 1}'}}, {"id": "x", "function": {"name": "g"}}]
    chunks = await oai_up.stream(Frames([oai(tool_calls=whole), oai(finish_reason="tool_calls"), DONE]))
    assert assemble_tool_calls(chunks) == [ToolCall("call_0", "f", '{"a": 1}'), ToolCall("x", "g", "")]


async def test_an_openai_tool_fragment_for_an_index_no_delta_started_is_malformed(oai_up: Upstream) -> None:
    """It used to reach the client as a call with no name (the fronts made up an id and an empty name)."""
    frames = [
        oai(tool_calls=[{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{"}}]),
        oai(tool_calls=[{"index": 1, "function": {"arguments": "}"}}]),
        oai(finish_reason="tool_calls"),
        DONE,
    ]
    chunks, error = await oai_up.fails(Frames(frames))
    assert assemble_tool_calls(chunks) == [ToolCall("call_a", "f", "{")]
    assert isinstance(error, UpstreamProtocolError)
    assert "a tool-call delta for index 1 starts no call" in error.message


async def test_anthropic_tool_input_for_a_block_never_started_is_malformed(ant_up: Upstream) -> None:
    """It used to be dropped in silence: the call reached the client with `{}` for arguments."""
    frames = [ANT_START, ant_tool_start(1), ant_json(1, '{"a":'), ant_json(2, "1}"), *ant_end("tool_use")]
    chunks, error = await ant_up.fails(Frames(frames))
    assert assemble_tool_calls(chunks) == [ToolCall("toolu_1", "f", '{"a":')]
    assert isinstance(error, UpstreamProtocolError)
    assert "tool input for content block 2, which was never started" in error.message


async def test_anthropic_block_started_twice_is_malformed(ant_up: Upstream) -> None:
    frames = [ANT_START, ant_tool_start(1, "toolu_1", "f"), ant_tool_start(1, "toolu_2", "g"), *ant_end("tool_use")]
    _, error = await ant_up.fails(Frames(frames))
    assert isinstance(error, UpstreamProtocolError) and "content block 1 started twice" in error.message


async def test_anthropic_tool_blocks_out_of_order_and_server_tool_input(ant_up: Upstream) -> None:
    """Fragments of two calls interleaved assemble by block; a server tool's input is not a call of ours."""
    frames = [
        ANT_START,
        ant_tool_start(0, "srvtoolu_1", "web_search", kind="server_tool_use"),
        ant_json(0, '{"query": "x"}'),
        ant_tool_start(1, "toolu_1", "f"),
        ant_json(1, '{"a"'),
        ant_tool_start(2, "toolu_2", "g"),
        ant_json(2, "{}"),
        ant_json(1, ": 1}"),
        *ant_end("tool_use"),
    ]
    chunks = await ant_up.stream(Frames(frames))
    assert assemble_tool_calls(chunks) == [ToolCall("toolu_1", "f", '{"a": 1}'), ToolCall("toolu_2", "g", "{}")]


# --- a stream request answered with something that is not a stream ----------------------------------------------------


def whole_error(kind: str) -> dict[str, Any]:
    if kind == "openai":
        return {
            "error": {"message": "You exceeded your quota", "type": "insufficient_quota", "code": "insufficient_quota"}
        }
    return {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many requests"}}


def whole_answer(kind: str) -> dict[str, Any]:
    if kind == "openai":
        message = {"role": "assistant", "content": TEXT}
        return {
            "id": "x",
            "model": "m-1",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": OAI_USAGE,
        }
    return {
        "id": "msg",
        "type": "message",
        "model": "m-1",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_a_json_error_at_200_on_a_stream_is_the_error(up: Upstream, content_type: str) -> None:
    """It used to end as `the stream ended before [DONE]`, the upstream's message lost."""
    body = json.dumps(whole_error(up.kind)).encode()
    chunks, error = await up.fails(Reply(body=b"\n" + body, content_type=content_type))
    assert chunks == []
    assert isinstance(error, UpstreamRateLimited)
    assert ("exceeded your quota" if up.kind == "openai" else "Too many requests") in error.message


async def test_a_whole_answer_to_a_stream_request_is_streamed(up: Upstream) -> None:
    """A server that ignored `stream: true`: its answer comes through as chunks."""
    chunks = await up.stream(Reply(json=whole_answer(up.kind)))
    assert stream_text(chunks) == TEXT
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage][-1].output_tokens == 2


async def test_an_html_page_on_a_stream_is_malformed_and_says_so(up: Upstream) -> None:
    _, error = await up.fails(Reply(body=b"<html><body>Gateway says hi</body></html>", content_type="text/html"))
    assert isinstance(error, UpstreamProtocolError)
    assert "not an event stream (text/html)" in error.message and "Gateway says hi" in error.message


# --- bounds, stalls, encodings ----------------------------------------------------------------------------------------


async def test_an_event_over_the_size_bound_is_malformed(up: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 1000)
    head = good_stream(up.kind)[:2]
    long_line = b"data: " + b"x" * 3000  # no line end: the buffer would grow for ever
    _, error = await up.fails(Frames([*head, long_line[:1500], long_line[1500:]]))
    assert isinstance(error, UpstreamProtocolError) and "longer than" in error.message
    many_lines = b"".join(b"data: " + b"y" * 100 + b"\n" for _ in range(30))  # no blank line: one growing event
    _, error = await up.fails(Frames([*head, many_lines]))
    assert isinstance(error, UpstreamProtocolError) and "larger than" in error.message
    _, error = await up.fails(Frames([b"\n" * 700, b" " * 700, b" " * 700]))  # blank, before any event
    assert isinstance(error, UpstreamProtocolError) and "longer than" in error.message


async def test_a_stream_that_stalls_past_its_idle_timeout_is_interrupted_with_its_text(up: Upstream) -> None:
    frames = good_stream(up.kind)
    chunks, error = await up.fails(Frames([b"".join(frames[:3]), b"".join(frames[3:])], delay=1.0))
    assert isinstance(error, StreamInterrupted)
    assert "no data for 0.3s" in error.message
    assert stream_text(chunks) and error.partial_text == stream_text(chunks)


async def test_gzip_claimed_on_a_stream_but_not_sent_is_an_interruption_saying_so(up: Upstream) -> None:
    _, error = await up.fails(Frames(good_stream(up.kind), headers={"content-encoding": "gzip"}))
    assert isinstance(error, StreamInterrupted)
    assert "content-encoding" in error.message


# --- seeded fuzz of the decoders --------------------------------------------------------------------------------------

KEEPS_MEANING = ("none", "crlf", "cr", "comments", "bom", "blank-lines")


def mutate(transcript: bytes, rng: random.Random) -> tuple[str, bytes]:
    how = rng.choice([*KEEPS_MEANING, "flip-byte", "truncate", "drop-line", "duplicate-line", "garbage-line"])
    data = transcript
    if how == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif how == "cr":
        data = data.replace(b"\n", b"\r")
    elif how == "comments":
        data = data.replace(b"\n\n", b"\n\n: ping\n\n")
    elif how == "bom":
        data = b"\xef\xbb\xbf" + data
    elif how == "blank-lines":
        data = data.replace(b"\n\n", b"\n\n\n\n")
    elif how == "flip-byte":
        at = rng.randrange(len(data))
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    elif how == "truncate":
        data = data[: rng.randrange(len(data))]
    else:
        lines = data.split(b"\n")
        at = rng.randrange(len(lines))
        if how == "drop-line":
            del lines[at]
        elif how == "duplicate-line":
            lines.insert(at, lines[at])
        else:
            lines.insert(at, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
        data = b"\n".join(lines)
    return how, data


def decode_in_pieces(decoder: Any, data: bytes, rng: random.Random) -> list[StreamChunk]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12)))) if len(data) > 1 else []
    chunks: list[StreamChunk] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        chunks += decoder.feed(data[start:end])
    return chunks + decoder.close()


TOOL_TRANSCRIPTS = {
    "openai": [
        oai(tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]),
        oai(tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]),
        oai(finish_reason="tool_calls", usage=OAI_USAGE),
        DONE,
    ],
    "anthropic": [ANT_START, ant_tool_start(1), ant_json(1, '{"a"'), ant_json(1, ": 1}"), *ant_end("tool_use")],
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_fuzzed_transcripts_decode_or_raise_an_upstream_error_nothing_else(kind: str) -> None:
    codec = OpenAICodec("up") if kind == "openai" else AnthropicCodec("up")
    rng = random.Random(20240607)
    outcomes: dict[str, int] = {}
    for case in range(300):
        transcript = b"".join(good_stream(kind) if case % 3 else TOOL_TRANSCRIPTS[kind])
        how, data = mutate(transcript, rng)
        try:
            chunks = decode_in_pieces(codec.stream_decoder(), data, rng)
        except UpstreamError as error:
            assert error.provider == "up"
            outcomes["error"] = outcomes.get("error", 0) + 1
            assert how not in KEEPS_MEANING, (case, how, error)
            continue
        outcomes["ok"] = outcomes.get("ok", 0) + 1
        if how in KEEPS_MEANING:
            if case % 3:
                assert stream_text(chunks) == TEXT, (case, how)
            else:
                assert assemble_tool_calls(chunks)[0].arguments == '{"a": 1}', (case, how)
    assert outcomes["ok"] > 100 and outcomes["error"] > 30  # both paths were really exercised


# --- through the engine and the HTTP fronts ---------------------------------------------------------------------------

ENGINE_YAML = """
version: 1
providers:
  primary: {{type: openai, base_url: '{openai}', api_key: '{key}', timeout: {fast}}}
  backup: {{type: anthropic, base_url: '{anthropic}', api_key: '{key}', timeout: {fast}}}
retry: {{max_attempts: 2, initial_backoff: 1ms, max_backoff: 10ms, deadline: 20s}}
models:
  default:
    targets: [{{provider: primary, model: gpt-4o-mini}}, {{provider: backup, model: claude-sonnet-4-5}}]
"""


@dataclass
class Served:
    base_url: str
    engine: Any
    primary: RawOpenAIFake
    backup: AnthropicFake

    async def stream(self, front: str) -> tuple[str, list[Any]]:
        """Stream through `front`; the text the client got, and the events after it (parsed JSON)."""
        if front == "openai":
            path, body = "/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        else:
            path, body = (
                "/v1/messages",
                {"model": "default", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
            )
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.base_url + path, json={**body, "stream": True}) as response,
        ):
            assert response.status == 200
            raw = await response.text()
        events = [
            line[len("data: ") :]
            for frame in raw.split("\n\n")
            for line in frame.split("\n")
            if line.startswith("data: ")
        ]
        parsed = [json.loads(event) for event in events if event != "[DONE]"]
        if front == "openai":
            text = "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for e in parsed)
        else:
            text = "".join(e.get("delta", {}).get("text", "") for e in parsed if e.get("type") == "content_block_delta")
        return text, (parsed if "[DONE]" not in events else [*parsed, "[DONE]"])


@pytest.fixture
async def served(start_fake) -> AsyncIterator[Served]:
    primary = await start_fake(RawOpenAIFake(api_key=KEYS["openai"]))
    backup = await start_fake(AnthropicFake())
    text = ENGINE_YAML.format(openai=primary.base_url, anthropic=backup.base_url, key=KEYS["openai"], fast=FAST)
    async with engine_app(text, api_routes=[*openai_api.routes, *anthropic_api.routes]) as (base_url, engine):
        yield Served(base_url, engine, primary, backup)


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_a_bad_stream_before_its_first_content_falls_back_invisibly(served: Served, front: str) -> None:
    quota = Reply(json=whole_error("openai"))  # a JSON error at 200 instead of a stream
    malformed = Frames([oai(role="assistant", content=""), oai(content=7)])  # bad before any text
    served.primary.script(quota, malformed)
    text, events = await served.stream(front)
    assert text == "Hello from the fake Anthropic."
    assert not any("error" in event for event in events if isinstance(event, dict))
    primary = served.engine.metrics_snapshot()["provider_metrics"]["primary"]
    assert primary["errors_by_kind"] == {"rate_limited": 1, "malformed": 1}  # each classified for what it was
    assert len(served.backup.requests) == 1


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_a_bad_stream_after_its_first_content_ends_with_an_error_never_cleanly(served: Served, front) -> None:
    frames = [oai(role="assistant", content=""), oai(content="Hel"), oai(content="lo"), oai(content=7), DONE]
    served.primary.script(Frames(frames))
    text, events = await served.stream(front)
    assert text == "Hello"
    assert events[-1] != "[DONE]" and "error" in events[-1]
    message = events[-1]["error"]["message"]
    assert "broke after 5 characters" in message and "`choices[0].delta.content` is an integer" in message
    if front == "anthropic":
        assert not any(e.get("type") == "message_stop" for e in events)
    assert served.engine.metrics_snapshot()["streams_truncated"] == 1
    assert len(served.backup.requests) == 0  # past the commit point: no invisible fallback
