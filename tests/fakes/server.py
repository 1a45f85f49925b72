"""Generic machinery of the fake upstreams: an aiohttp server on 127.0.0.1, request recording, the script queue,
byte-exact response writing (delays, SSE frames, connection cuts), and a thread runner.

Provider fakes subclass `FakeServer`: they add their routes (`answer` serves a scripted model endpoint: the
request is recorded, refused by `reject` or answered with the next scripted reply), say what an unknown route
answers (`not_found`), and turn replies into a `Wire` (status, headers and either a body or a list of SSE frames);
`send_wire` puts it on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.replies import ErrorReply, ModelReply, Reply, ScriptedReply, ScriptItem

KEEPALIVE_COMMENT = b": keep-alive\n\n"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


@dataclass
class RecordedRequest:
    """One request as the fake received it. `outcome` is set when the response ends: "completed", "cut" (the fake
    aborted the connection on purpose) or "client_disconnected"; it stays "pending" while the response is going."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any = None  # the parsed body, or None when it is not JSON
    outcome: str = "pending"

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


@dataclass
class Wire:
    """A response ready for the socket. `frames` (SSE events, final bytes) means a chunked streaming body."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    frames: Sequence[bytes] | None = None
    delay_headers: float = 0.0
    delay_body: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None  # frames sent before the connection is aborted
    cut_body_after: int | None = None  # body bytes sent before the connection is aborted (non-streaming)


def merge_headers(*layers: Mapping[str, str | None]) -> dict[str, str]:
    """Later layers win (case-insensitively); a None value removes the header."""
    merged: CIMultiDict[str] = CIMultiDict()
    for layer in layers:
        for name, value in layer.items():
            merged.popall(name, None)
            if value is not None:
                merged[name] = value
    return {name: value for name, value in merged.items()}


def sse_frame(data: str | Mapping[str, Any], event: str | None = None) -> bytes:
    """One SSE event: optional `event:` line, one `data:` line (compact JSON for mappings), blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {text}\n\n".encode()


def arrange_frames(
    events: Sequence[bytes],
    terminal: Sequence[bytes],
    reply: ModelReply,
    *,
    error_frame: bytes,
    malformed_frame: bytes,
    unknown_frame: bytes | None = None,
) -> list[bytes]:
    """Apply a ModelReply's stream faults to rendered events. `terminal` are the closing events that `omit_terminal`
    and `error_after` drop. Positions count the rendered sequence; injected frames go before the event at that
    position (or at the end when the position is past it)."""
    if reply.error_after is not None:
        sequence = [*[*events, *terminal][: reply.error_after], error_frame]
    else:
        sequence = [*events, *([] if reply.omit_terminal else terminal)]
    insertions: dict[int, list[bytes]] = {}
    if reply.malformed_at is not None:
        insertions.setdefault(reply.malformed_at, []).append(malformed_frame)
    if reply.unknown_event_at is not None:
        if unknown_frame is None:
            raise ValueError("this fake has no unknown event type to inject")
        insertions.setdefault(reply.unknown_event_at, []).append(unknown_frame)
    if reply.crlf:
        sequence = [frame.replace(b"\n", b"\r\n") for frame in sequence]
        insertions = {at: [frame.replace(b"\n", b"\r\n") for frame in frames] for at, frames in insertions.items()}
    for at, raw in reply.inject.items():
        insertions.setdefault(at, []).append(raw)
    frames: list[bytes] = []
    for position in range(max([len(sequence), *(at + 1 for at in insertions)])):
        frames.extend(insertions.get(position, ()))
        if position < len(sequence):
            frames.append(sequence[position])
    if reply.keepalive:
        comment = KEEPALIVE_COMMENT.replace(b"\n", b"\r\n") if reply.crlf else KEEPALIVE_COMMENT
        frames = [comment + frame for frame in frames]
    return frames


async def _abort_connection(request: web.BaseRequest) -> None:
    """Flush what was written, then drop the TCP connection without finishing the body."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(200):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)
    transport.abort()


async def send_wire(request: web.BaseRequest, record: RecordedRequest, wire: Wire) -> web.StreamResponse:
    """Write `wire` on the socket, honouring its delays and cuts, and set `record.outcome`."""
    response = web.StreamResponse(status=wire.status, headers=wire.headers)
    try:
        if wire.delay_headers:
            await asyncio.sleep(wire.delay_headers)
        if wire.frames is None:
            response.content_length = len(wire.body)
        await response.prepare(request)  # a StreamResponse sends the status line and headers right away
        if wire.delay_body:
            await asyncio.sleep(wire.delay_body)
        if wire.frames is None:
            if wire.cut_body_after is not None:
                await response.write(wire.body[: wire.cut_body_after])
                record.outcome = "cut"
                await _abort_connection(request)
                return response
            if wire.body:
                await response.write(wire.body)
        else:
            for index, frame in enumerate(wire.frames):
                if index == wire.cut_after:
                    break
                if index and wire.chunk_delay:
                    await asyncio.sleep(wire.chunk_delay)
                await response.write(frame)
            if wire.cut_after is not None:  # past the last frame: everything is sent but the body never ends
                record.outcome = "cut"
                await _abort_connection(request)
                return response
        await response.write_eof()
    except asyncio.CancelledError:
        record.outcome = "client_disconnected"
        raise
    except ConnectionError:
        record.outcome = "client_disconnected"
        return response
    record.outcome = "completed"
    return response


class FakeServer:
    """Base fake: serves `self.app` on 127.0.0.1:<ephemeral>, records requests, hands out scripted replies.

    Use as `async with Fake() as fake:` (or `await fake.start()` / `await fake.stop()`). `script()` and `requests`
    are safe to use from another thread while the server runs in `FakeServerThread`. `api_key` (None: any key) is
    for the subclass's `reject`; `default_reply` answers when the script is empty.
    """

    api_prefix = "/v1"

    def __init__(
        self,
        *,
        default_reply: ScriptedReply,
        api_key: str | None = None,
        default_headers: Mapping[str, str | None] | None = None,
    ) -> None:
        self.api_key = api_key
        self.default_reply = default_reply
        self.requests: list[RecordedRequest] = []
        self.default_headers: dict[str, str | None] = dict(default_headers or {})  # on top of standard headers
        self._script: deque[ScriptItem] = deque()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.app = web.Application()
        self.add_routes(self.app.router)
        self.app.router.add_route("*", "/{tail:.*}", self._unknown_route)  # after the provider's routes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    # --- handlers ------------------------------------------------------------------------------------------
    async def answer(self, request: web.Request) -> web.StreamResponse:
        """A scripted model endpoint: the request refused by `reject`, else the next scripted reply (the default
        reply when the script is empty; a refused request consumes none)."""
        record = await self.record(request)
        rejection = self.reject(record)
        reply = rejection if rejection is not None else (self.next_reply(record) or self.default_reply)
        return await self.respond(request, record, reply, record.json)

    async def respond(
        self, request: web.Request, record: RecordedRequest, reply: ScriptedReply, request_json: Any = None
    ) -> web.StreamResponse:
        """Send `reply` (rendered for a request whose parsed body is `request_json`) as the answer to `record`."""
        return await send_wire(request, record, self.to_wire(reply, request_json))

    async def _unknown_route(self, request: web.Request) -> web.StreamResponse:
        record = await self.record(request)
        return await self.respond(request, record, self.not_found(request))

    # --- provider hooks ------------------------------------------------------------------------------------
    def reject(self, record: RecordedRequest) -> ErrorReply | None:
        """The error a model request gets before any scripted reply (a missing key, a bad body), or None."""
        return None

    def not_found(self, request: web.Request) -> ErrorReply:
        """What a request to a route the fake does not serve gets (a 404 in the provider's shape)."""
        raise NotImplementedError

    def standard_headers(self) -> dict[str, str | None]:
        """Headers on every response (request id, rate limits), computed per response."""
        return {}

    def error_json(self, error: ErrorReply, headers: Mapping[str, str]) -> Any:
        raise NotImplementedError

    def message_json(self, reply: ModelReply, request_json: dict[str, Any]) -> Any:
        raise NotImplementedError

    def stream_frames(self, reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def render_events(self, reply: ModelReply, request_json: Mapping[str, Any] | None = None) -> list[bytes]:
        """The SSE frames `reply` streams as, faults applied (to see what fault positions count)."""
        return self.stream_frames(reply, {"model": "fake-model", "stream": True, **(request_json or {})})

    def to_wire(self, reply: ScriptedReply, request_json: Any) -> Wire:
        """The bytes this fake sends for `reply` to a request whose parsed body is `request_json`."""
        base = merge_headers(self.standard_headers(), self.default_headers)
        if isinstance(reply, Reply):
            content_type = reply.content_type or (
                JSON_CONTENT_TYPE if reply.body is None else "application/octet-stream"
            )
            return Wire(
                reply.status,
                merge_headers(base, {"content-type": content_type}, reply.headers),
                body=reply.body_bytes(),
                delay_headers=reply.delay_headers,
                delay_body=reply.delay_body,
                cut_body_after=reply.cut_body_after,
            )
        if isinstance(reply, ErrorReply):
            headers = merge_headers(base, {"content-type": JSON_CONTENT_TYPE}, reply.retry_headers())
            body = json.dumps(self.error_json(reply, headers)).encode()
            return Wire(reply.status, headers, body=body, delay_headers=reply.delay_headers)
        request_json = request_json if isinstance(request_json, dict) else {}
        if request_json.get("stream") is True:
            return Wire(
                reply.status,
                merge_headers(base, {"content-type": SSE_CONTENT_TYPE}, reply.headers),
                frames=self.stream_frames(reply, request_json),
                delay_headers=reply.delay_headers,
                delay_body=reply.delay_body,
                chunk_delay=reply.chunk_delay,
                cut_after=reply.cut_after,
            )
        return Wire(
            reply.status,
            merge_headers(base, {"content-type": JSON_CONTENT_TYPE}, reply.headers),
            body=json.dumps(self.message_json(reply, request_json)).encode(),
            delay_headers=reply.delay_headers,
            delay_body=reply.delay_body,
        )

    # --- scripting and recording -----------------------------------------------------------------------------
    def script(self, *items: ScriptItem) -> Self:
        """Queue replies, consumed one per request to the model endpoint; the default reply is used when empty."""
        self._script.extend(items)
        return self

    @property
    def pending_replies(self) -> int:
        return len(self._script)

    def next_reply(self, record: RecordedRequest) -> ScriptedReply | None:
        try:
            item = self._script.popleft()
        except IndexError:
            return None
        return item(record) if callable(item) else item

    async def record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        parsed: Any = None
        if body:
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            json=parsed,
        )
        self.requests.append(recorded)
        return recorded

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake server is not started")
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What SDK clients take as base_url, e.g. http://127.0.0.1:PORT/v1 for the OpenAI fake."""
        return self.origin + self.api_prefix

    async def start(self) -> Self:
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class FakeServerThread:
    """Run a fake in its own thread and event loop, for tests where the test's own loop blocks:

    with FakeServerThread(OpenAIFake()) as server:
        server.script(text_reply("hi"))
        blocking_client(base_url=server.base_url)
        assert server.requests
    """

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests

    def script(self, *items: ScriptItem) -> Self:
        self.fake.script(*items)
        return self

    def _submit(self, coroutine: Any) -> Any:
        if self._loop is None:
            raise RuntimeError("the server thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(loop, started), name="fake-upstream", daemon=True)
        self._thread.start()
        started.wait()
        try:
            self._submit(self.fake.start())
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._submit(self.fake.stop())
        finally:
            self._shutdown()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = None
        self._thread = None
