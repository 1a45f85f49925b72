"""Running the MCP front: over stdio, or over streamable HTTP in a Starlette app served by uvicorn.

    await serve_http(front, host="127.0.0.1", port=8085, grace_period=10)   # `/mcp` (+ `routes`, or your `app`)
    await serve_http(front, host="127.0.0.1", port=0, sock=listening, grace_period=10)   # a socket bound already
    await serve_stdio(front, grace_period=10)

`mcp_http_app(front)` gives the SDK's streamable HTTP app and the lifespan that runs its session manager, for an
app that mounts `/mcp` next to other routes (the OpenAI/Anthropic fronts); `build_http_app` is the minimal one.

Shutdown (SIGTERM, SIGINT, or the `stop` event tests pass): stop accepting (HTTP: the listening socket closes; both:
new tool calls are refused with a clear error), let the calls in flight finish within `grace_period` (HTTP: and
their responses be written, `RequestCounter`), then stop. A second signal skips the rest of the wait. This
replaces uvicorn's own signal handling, and sse-starlette's automatic drain (which would cut handshake-era calls in
flight the moment SIGTERM arrives, MCP_SDK.md §8b) is turned off: SSE streams are ended only after the drain.

`build_http_app` is the proxy's whole HTTP app; its `ProxyMiddleware` guards every route but `/healthz` and `/readyz`
with the config's `server.auth.bearer_tokens`.
Closing the engine is the caller's job (it opened it). Logs go to the `logging` module, never to stdout; the
drain is traced (`proxy.drain`: the calls in flight when it began, and whether they all finished in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import telemetry
from proxy.errors import ProxyError
from proxy.fronts.mcp_server import McpFront
from proxy.sockets import set_nodelay

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # Kubernetes probes never need a token
FLUSH_TIMEOUT = 3.0  # after the drain: how long uvicorn waits for responses to finish writing


class ServeError(ProxyError):
    """The server cannot start (e.g. the address is in use)."""


LOCAL_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
LOCAL_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def transport_security(
    host: str, allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = ()
) -> TransportSecuritySettings | None:
    """DNS-rebinding protection for `/mcp`. None (the SDK's default) when nothing is configured: on a loopback
    bind only local `Host`/`Origin` values pass, on any other bind every value passes. With `allowed_hosts` or
    `allowed_origins` (`server.http` in the config), exactly those pass, plus the local ones on a loopback bind."""
    if not allowed_hosts and not allowed_origins:
        return None
    loopback = host in ("127.0.0.1", "localhost", "::1")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*allowed_hosts, *(LOCAL_HOSTS if loopback else ())],
        allowed_origins=[*allowed_origins, *(LOCAL_ORIGINS if loopback else ())],
    )


def mcp_http_app(
    front: McpFront, *, host: str = "127.0.0.1", allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = ()
) -> tuple[ASGIApp, Callable[[Starlette], AbstractAsyncContextManager[None]]]:
    """The SDK's streamable HTTP app for `front` (it serves `/mcp`) and the lifespan the enclosing Starlette app
    must run (a mounted app's own lifespan never runs, and its session manager must).

    `host` is the bind address; `allowed_hosts`/`allowed_origins` configure the DNS-rebinding protection
    (`transport_security`). They are read once at start: changing them needs a restart.
    """
    security = transport_security(host, allowed_hosts, allowed_origins)
    app = front.server.streamable_http_app(streamable_http_path=MCP_PATH, host=host, transport_security=security)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with front.server.session_manager.run():
            yield

    return app, lifespan


def build_http_app(front: McpFront, *, host: str = "127.0.0.1", routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The proxy's whole HTTP app (proxy/fronts/http_app.py): the OpenAI and Anthropic APIs, probes, `/v1/models`,
    `/metrics`, any extra `routes`, and the MCP endpoint at `/mcp` (mounted last: it matches everything); auth and
    request ids come from `ProxyMiddleware`, which reads the bearer tokens from the current config."""
    from proxy.fronts import anthropic_api, openai_api, status
    from proxy.fronts.http_app import build_app

    http = front.engine.runtime.config.server.http
    mcp_app, lifespan = mcp_http_app(
        front, host=host, allowed_hosts=http.allowed_hosts, allowed_origins=http.allowed_origins
    )
    api_routes = [*openai_api.routes, *anthropic_api.routes, *status.routes, *routes]
    return build_app(front.engine, api_routes=api_routes, mcp_app=mcp_app, lifespan=lifespan)


class RequestCounter:
    """ASGI middleware counting HTTP requests in progress, but GETs (the standalone SSE streams stay open for the
    whole session): after the tool calls drained, the shutdown waits for their responses to be written."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.active = 0
        self._idle: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "GET":
            await self.app(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active == 0 and self._idle is not None:
                self._idle.set()

    async def wait_idle(self) -> None:
        if self.active:
            self._idle = anyio.Event()
            await self._idle.wait()


class _Shutdown:
    """The shutdown sequence's state: `stop` starts it; a second signal cancels the rest of the drain."""

    def __init__(self, stop: anyio.Event | None) -> None:
        self.stop = stop or anyio.Event()
        self.drain_scope = anyio.CancelScope()

    async def watch_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()  # handlers installed: from now on a signal drains instead of killing
            async for signum in signals:
                if self.stop.is_set():
                    log.warning("second %s: not waiting for the calls in flight", signal.Signals(signum).name)
                    self.drain_scope.cancel()
                else:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    self.stop.set()

    async def drain(self, front: McpFront, grace_period: float, requests: RequestCounter | None = None) -> None:
        """Wait (at most `grace_period`) for the tool calls in flight, then for their HTTP responses."""
        front.closing = True
        attributes = {"proxy.drain.in_flight": front.in_flight, "proxy.drain.grace_period_s": grace_period}
        with telemetry.span("proxy.drain", attributes) as span:
            with self.drain_scope, anyio.move_on_after(grace_period):
                await front.drain(grace_period)
                if requests is not None:
                    await requests.wait_idle()
            if span is not None:
                span.set_attribute("proxy.drain.left", front.in_flight)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers (the proxy drains first, then sets `should_exit`), with a hook for
    when it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); ServeError when that is impossible."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    set_nodelay(sock)
    return sock


def _adopt(sock: socket.socket) -> socket.socket:
    """A listening TCP socket bound elsewhere (`llm-proxy serve --workers` children inherit one), with TCP_NODELAY
    as `_listen` sets it; ServeError when it is not a listening stream socket."""
    try:
        listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:  # closed, or not a socket
        raise ServeError(f"cannot serve on the socket given: {exc.strerror or exc}") from None
    if not listening:
        raise ServeError(
            "cannot serve on the socket given: it is not a listening stream socket (bind and listen first)"
        )
    set_nodelay(sock)
    return sock


async def serve_http(
    front: McpFront,
    *,
    host: str,
    port: int,
    grace_period: float,
    sock: socket.socket | None = None,
    app: ASGIApp | None = None,
    routes: Sequence[BaseRoute] = (),
    stop: anyio.Event | None = None,
    handle_signals: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `app` (default: `build_http_app(front, routes=...)`) on host:port until a signal
    (or `stop`), then shut down gracefully. An `app` of your own must mount `mcp_http_app(front)` and run its
    lifespan.

    `sock`: an already-bound listening socket to serve on instead of binding host:port (`port` is then unused;
    `host` still names the bind address in the URL and the DNS-rebinding protection). Either way the socket
    gets TCP_NODELAY for the connections it accepts, and is closed when serving ends.

    `on_ready(url)` is called once listening, with the MCP endpoint's URL (the real port when `port` is 0).
    """
    sock = _listen(host, port) if sock is None else _adopt(sock)
    bound_port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}{MCP_PATH}"
    if app is None:
        app = build_http_app(front, host=host, routes=routes)
    requests = RequestCounter(app)
    config = uvicorn.Config(
        requests, log_config=None, lifespan="on", timeout_graceful_shutdown=FLUSH_TIMEOUT, access_log=False
    )

    def started() -> None:
        log.info("MCP over streamable HTTP at %s (listening on %s:%d)", url, host, bound_port, extra={"url": url})
        if on_ready is not None:
            on_ready(url)

    server = _Uvicorn(config, started)
    shutdown = _Shutdown(stop)
    AppStatus.disable_automatic_graceful_drain()

    async def stop_when_asked() -> None:
        await shutdown.stop.wait()
        for listener in getattr(server, "servers", ()):
            listener.close()  # stop accepting connections; the open ones keep going
        await shutdown.drain(front, grace_period, requests)
        AppStatus.should_exit = True  # now end the SSE streams (process-global; reset below)
        server.should_exit = True

    try:
        async with anyio.create_task_group() as tasks:
            if handle_signals:
                await tasks.start(shutdown.watch_signals)
            tasks.start_soon(stop_when_asked)
            await server.serve(sockets=[sock])
            tasks.cancel_scope.cancel()
    finally:
        AppStatus.should_exit = False
        sock.close()


STDIN_LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; the HTTP transport caps bodies at 4 MiB


class _StdinLines:
    """Standard input as an async iterator of text lines, read on the event loop. The SDK's default reads it in a
    worker thread, which a shutdown cannot interrupt: the process would hang until the host writes or closes."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def _stdin_lines() -> _StdinLines | None:
    """Lines of fd 0 when it is a pipe, socket or terminal; None (the SDK's default reader) for a regular file."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LINE_LIMIT)
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except (ValueError, OSError):  # a regular file: reads never block, so the thread reader is fine
        pipe.close()
        return None
    return _StdinLines(reader)


async def _run_stdio(front: McpFront) -> None:
    """`MCPServer.run_stdio_async`, with a stdin reader that cancellation can stop."""
    stdin = await _stdin_lines()
    lowlevel = front.server._lowlevel_server
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


async def serve_stdio(
    front: McpFront, *, grace_period: float, stop: anyio.Event | None = None, handle_signals: bool = True
) -> None:
    """Serve MCP on stdin/stdout until stdin closes or a signal (or `stop`) arrives, then shut down gracefully."""
    shutdown = _Shutdown(stop)
    server_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tasks:

        async def run() -> None:
            with server_scope:
                await _run_stdio(front)
            tasks.cancel_scope.cancel()  # stdin closed (or the drain ended): stop waiting for a signal

        if handle_signals:
            await tasks.start(shutdown.watch_signals)
        tasks.start_soon(run)
        log.info("MCP over stdio")
        await shutdown.stop.wait()
        await shutdown.drain(front, grace_period)
        server_scope.cancel()
