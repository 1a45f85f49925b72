"""The upstream transport and `HttpProvider` over real loopback sockets.

A tiny raw HTTP/1.1 server (asyncio streams) plays the upstream, so each test scripts exactly what goes on the
wire: replies that never come, streams that stall or break off, connections that are reused or dropped.
A small test codec (JSON bodies, SSE `data:` lines, `[DONE]`) stands in for the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import pytest

from proxy.config.model import TimeoutConfig
from proxy.errors import (
    StreamInterrupted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from proxy.providers.base import HttpCall
from proxy.providers.http_provider import HttpProvider, error_for_status
from proxy.providers.sse import SseDecoder
from proxy.providers.transport import Transport
from proxy.types import ChatRequest, ChatResponse, StreamChunk, Usage

SECRET = "sk-test-secret-do-not-leak"
FAST = TimeoutConfig(connect=1.0, first_token=0.3, total=5.0)

# --- a raw loopback upstream -----------------------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """HTTP/1.1 on 127.0.0.1; `handler` writes the reply bytes and returns whether to keep the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[RawRequest] = []
        self.request_seen = asyncio.Event()
        self.client_gone = asyncio.Event()  # a client closed its side while a handler waited for it
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                self.request_seen.set()
                if not await self.handler(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(method, path, headers, body)


def reply_bytes(status: int, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(text: str) -> bytes:
    return chunk(b"data: " + json.dumps({"text": text}).encode() + b"\n\n")


END_OF_BODY = b"0\r\n\r\n"


async def wait_for_client_to_leave(server: RawServer, reader: asyncio.StreamReader) -> bool:
    """Block until the client closes the connection (read returns EOF), then tell the test."""
    await reader.read()
    server.client_gone.set()
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a tiny codec ----------------------------------------------------------------------------------------


class _Decoder:
    """Text events, then [DONE]; holds no error back."""

    def __init__(self, provider: str) -> None:
        self._sse = SseDecoder()
        self._provider = provider
        self.done = False

    def feed(self, data: bytes) -> list[StreamChunk]:
        chunks = []
        for sse in self._sse.feed(data):
            if sse.data == "[DONE]":
                self.done = True
                chunks.append(StreamChunk(finish_reason="stop", usage=Usage(1, 2)))
            else:
                chunks.append(StreamChunk(text=json.loads(sse.data)["text"]))
        return chunks

    def close(self) -> list[StreamChunk]:
        if not self.done:
            raise StreamInterrupted("the stream ended before [DONE]", provider=self._provider)
        return []

    def raise_pending(self) -> None:
        pass  # this decoder holds no error back


class JsonCodec:
    """`{"text": ...}` bodies; an API key header, so tests can check it never leaks into errors."""

    def __init__(self, provider: str, base_url: str) -> None:
        self.provider = provider
        self._url = base_url + "/chat"
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"}

    def encode(self, request: ChatRequest, model: str, *, stream: bool) -> HttpCall:
        body = {"model": model, "prompt": request.messages[-1].text(), "stream": stream}
        return HttpCall(self._url, self._headers, json.dumps(body).encode())

    def decode(self, status: int, headers: Mapping[str, str], body: bytes) -> ChatResponse:
        return ChatResponse(text=json.loads(body)["text"], provider=self.provider, finish_reason="stop")

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        text = body.decode("utf-8", "replace")[:80]
        return error_for_status(status)(f"upstream said {status}: {text}", provider=self.provider, status=status)

    def stream_decoder(self) -> _Decoder:
        return _Decoder(self.provider)


REQUEST = ChatRequest.from_prompt("hello")


@pytest.fixture
async def make_provider() -> AsyncIterator[Callable[..., HttpProvider]]:
    providers: list[HttpProvider] = []

    def make(url: str, timeout: TimeoutConfig = FAST) -> HttpProvider:
        provider = HttpProvider(JsonCodec("up", url), Transport("up", timeout), type="openai")
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


async def collect(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


# --- complete() ------------------------------------------------------------------------------------------


async def test_complete_decodes_a_json_reply_and_measures_latency(make_provider) -> None:
    async def handler(request: RawRequest, reader, writer) -> bool:
        await asyncio.sleep(0.02)
        writer.write(reply_bytes(200, json.dumps({"text": "hi " + json.loads(request.body)["prompt"]}).encode()))
        return True

    async with RawServer(handler) as server:
        response = await make_provider(server.url).complete(REQUEST, "m1")
    assert response.text == "hi hello"
    assert response.latency_ms >= 20
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/chat")
    assert json.loads(sent.body) == {"model": "m1", "prompt": "hello", "stream": False}
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["user-agent"].startswith("mcp-llm-proxy/")
    assert "cookie" not in sent.headers


async def test_keep_alive_reuses_one_connection(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        if json.loads(request.body)["stream"]:
            writer.write(STREAM_HEAD + event("a") + chunk(b"data: [DONE]\n\n") + END_OF_BODY)
        else:
            writer.write(reply_bytes(200, b'{"text": "ok"}'))
        return True

    async with RawServer(handler) as server:
        provider = make_provider(server.url)
        await provider.complete(REQUEST, "m")
        await provider.complete(REQUEST, "m")
        await collect(provider.stream(REQUEST, "m"))
        await provider.complete(REQUEST, "m")
    assert len(server.requests) == 4
    assert server.connections == 1


async def test_connection_refused_is_a_connect_error(make_provider) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamConnectError) as caught:
        await make_provider(url).complete(REQUEST, "m")
    assert "up:" in str(caught.value)
    assert "127.0.0.1:" in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_server_that_never_answers_times_out_at_first_token(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout) as caught:
            await make_provider(server.url).complete(REQUEST, "m")
        elapsed = loop.time() - started
        assert caught.value.phase == "first_token"
        assert 0.25 <= elapsed < 1.5
        assert "0.3s" in str(caught.value)
        assert SECRET not in str(caught.value)
        await asyncio.wait_for(server.client_gone.wait(), 2)  # the connection was aborted, not leaked


async def test_connect_timeout_has_phase_connect() -> None:
    # A listener whose accept queue is full drops new SYNs, so the handshake never completes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        transport = Transport("up", TimeoutConfig(connect=0.2, first_token=5, total=5))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(UpstreamTimeout) as caught:
                await transport.send(HttpCall(f"http://127.0.0.1:{port}/x", {"x-api-key": SECRET}, b""))
        finally:
            await transport.aclose()
            for filler in fillers:
                filler.close()
    assert caught.value.phase == "connect"
    assert loop.time() - started < 1.0
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_html_502_goes_through_decode_error(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(reply_bytes(502, b"<html><body>Bad gateway</body></html>", "text/html"))
        return True

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamServerError) as caught:
            await make_provider(server.url).complete(REQUEST, "m")
        assert caught.value.status == 502
        assert "Bad gateway" in str(caught.value)
        with pytest.raises(UpstreamServerError):  # the same path for a stream
            await collect(make_provider(server.url).stream(REQUEST, "m"))


async def test_body_cut_short_is_a_connect_error(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"te')
        await writer.drain()
        return False

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamConnectError, match="mid-reply"):
            await make_provider(server.url).complete(REQUEST, "m")


async def test_server_closing_before_replying_is_a_connect_error(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        return False

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamConnectError, match="before replying"):
            await make_provider(server.url).complete(REQUEST, "m")


async def test_garbage_instead_of_http_is_a_protocol_error(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return False

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamProtocolError):
            await make_provider(server.url).complete(REQUEST, "m")


async def test_redirects_are_not_followed() -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(reply_bytes(307, b"", extra="Location: http://127.0.0.1:1/elsewhere\r\n"))
        return True

    async with RawServer(handler) as server:
        transport = Transport("up", FAST)
        try:
            reply = await transport.send(HttpCall(server.url + "/chat", {"x-api-key": SECRET}, b"{}"))
        finally:
            await transport.aclose()
    assert reply.status == 307
    assert len(server.requests) == 1
    assert error_for_status(307) is UpstreamProtocolError


async def test_cancelling_a_request_closes_the_connection(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        provider = make_provider(server.url, TimeoutConfig(connect=1, first_token=30, total=30))
        task = asyncio.create_task(provider.complete(REQUEST, "m"))
        await asyncio.wait_for(server.request_seen.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.client_gone.wait(), 2)


# --- stream() --------------------------------------------------------------------------------------------


async def test_stream_yields_chunks_as_they_arrive(make_provider) -> None:
    release = asyncio.Event()

    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("Hel"))
        await writer.drain()
        await release.wait()  # the first chunk must reach the client before the rest is even sent
        writer.write(event("lo") + chunk(b"data: [DONE]\n\n") + END_OF_BODY)
        return True

    async with RawServer(handler) as server:
        stream = make_provider(server.url).stream(REQUEST, "m")
        first = await anext(stream)
        assert first.text == "Hel"
        release.set()
        rest = await collect(stream)
    assert [c.text for c in rest] == ["lo", ""]
    assert rest[-1].finish_reason == "stop"
    assert json.loads(server.requests[0].body)["stream"] is True


async def test_stream_stops_at_done_without_waiting_for_the_server_to_close(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("x") + chunk(b"data: [DONE]\n\n"))  # no end of body
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        chunks = await asyncio.wait_for(collect(make_provider(server.url).stream(REQUEST, "m")), 2)
        assert chunks[-1].finish_reason == "stop"
        await asyncio.wait_for(server.client_gone.wait(), 2)  # unfinished body: the connection is not pooled


async def test_stream_cut_midway_is_interrupted_with_the_partial_text(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("Hello") + event(", wor"))
        await writer.drain()
        return False  # close the connection mid-body: no terminating chunk

    async with RawServer(handler) as server:
        seen: list[StreamChunk] = []
        with pytest.raises(StreamInterrupted) as caught:
            async for piece in make_provider(server.url).stream(REQUEST, "m"):
                seen.append(piece)
    assert caught.value.partial_text == "Hello, wor"
    assert [c.text for c in seen] == ["Hello", ", wor"]
    assert all(c.finish_reason is None for c in seen)  # never a clean finish
    assert "127.0.0.1:" in str(caught.value)


async def test_stream_that_ends_cleanly_without_done_is_interrupted(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("Hi") + END_OF_BODY)
        return True

    async with RawServer(handler) as server:
        with pytest.raises(StreamInterrupted) as caught:
            await collect(make_provider(server.url).stream(REQUEST, "m"))
    assert caught.value.partial_text == "Hi"


async def test_stream_without_a_first_byte_times_out_at_first_token(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD)  # the head arrives at once, the body never does
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout) as caught:
            await collect(make_provider(server.url).stream(REQUEST, "m"))
        assert caught.value.phase == "first_token"
        assert loop.time() - started < 1.0
        await asyncio.wait_for(server.client_gone.wait(), 2)


async def test_first_token_counts_from_sending_not_from_the_head(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        await asyncio.sleep(0.2)
        writer.write(STREAM_HEAD)
        await writer.drain()
        await asyncio.sleep(0.2)  # 0.4s after sending > first_token 0.3s, though each gap is < 0.3s
        writer.write(event("late") + chunk(b"data: [DONE]\n\n") + END_OF_BODY)
        return True

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamTimeout) as caught:
            await collect(make_provider(server.url).stream(REQUEST, "m"))
    assert caught.value.phase == "first_token"


async def test_stream_silent_midway_is_interrupted(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("one"))
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        with pytest.raises(StreamInterrupted, match=r"no data for 0\.3s") as caught:
            await collect(make_provider(server.url).stream(REQUEST, "m"))
        assert caught.value.partial_text == "one"
        await asyncio.wait_for(server.client_gone.wait(), 2)


async def test_slow_stream_hits_the_total_timeout(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD)
        for n in range(100):
            writer.write(event(f"{n} "))
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    async with RawServer(handler) as server:
        provider = make_provider(server.url, TimeoutConfig(connect=1, first_token=0.3, total=0.5))
        loop = asyncio.get_running_loop()
        started = loop.time()
        seen: list[StreamChunk] = []
        with pytest.raises(UpstreamTimeout) as caught:
            async for piece in provider.stream(REQUEST, "m"):
                seen.append(piece)
    assert caught.value.phase == "total"
    assert 0.45 <= loop.time() - started < 1.5
    assert len(seen) >= 3  # chunks did flow; the whole stream just took too long


async def test_cancelling_a_stream_closes_the_upstream_connection(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("first"))
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        provider = make_provider(server.url, TimeoutConfig(connect=1, first_token=30, total=30))
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in provider.stream(REQUEST, "m"):
                got_first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.client_gone.wait(), 2)


async def test_closing_a_stream_early_closes_the_upstream_connection(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(STREAM_HEAD + event("first"))
        return await wait_for_client_to_leave(server, reader)

    async with RawServer(handler) as server:
        stream = make_provider(server.url, TimeoutConfig(connect=1, first_token=30, total=30)).stream(REQUEST, "m")
        assert (await anext(stream)).text == "first"
        await stream.aclose()
        await asyncio.wait_for(server.client_gone.wait(), 2)


async def test_stream_error_status_reads_the_body_for_decode_error(make_provider) -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(reply_bytes(429, b'{"error": "slow down"}', extra="Retry-After: 2\r\n"))
        return True

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamRateLimited, match="slow down"):
            await collect(make_provider(server.url).stream(REQUEST, "m"))


async def test_transport_can_be_used_after_aclose() -> None:
    async def handler(request, reader, writer) -> bool:
        writer.write(reply_bytes(200, b"{}"))
        return True

    async with RawServer(handler) as server:
        transport = Transport("up", FAST)
        call = HttpCall(server.url + "/x", {}, b"")
        assert (await transport.send(call)).status == 200
        await transport.aclose()
        await transport.aclose()  # idempotent
        assert (await transport.send(call)).status == 200
        await transport.aclose()
    assert server.connections == 2


# --- the status table ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "bad_request"),
        (401, "auth"),
        (402, "permission"),
        (403, "permission"),
        (404, "not_found"),
        (408, "server"),
        (409, "server"),
        (413, "bad_request"),
        (418, "bad_request"),
        (422, "bad_request"),
        (429, "rate_limited"),
        (500, "server"),
        (502, "server"),
        (503, "overloaded"),
        (504, "server"),
        (529, "overloaded"),
        (599, "server"),
    ],
)
def test_error_for_status(status: int, kind: str) -> None:
    assert error_for_status(status).kind.value == kind


def test_overloaded_and_rate_limited_are_retryable() -> None:
    assert UpstreamOverloaded.retryable and UpstreamRateLimited.retryable
