"""The listening sockets `llm-proxy serve` accepts on: connections get TCP_NODELAY (else Nagle stalls every
keep-alive response ~40 ms), whether `serve_http` binds host:port itself or is handed a bound socket (`sock=`, as
the `--workers` children are)."""

from __future__ import annotations

import socket

import anyio
import httpx2
import pytest

from proxy.cli_workers import bind
from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.fronts.serve import ServeError, _listen, serve_http
from proxy.runtime import Runtime

CONFIG = """
version: 1
providers:
  echo: {type: mock, mock: {echo: true}}
models:
  default: {targets: [{provider: echo, model: echo-1}]}
"""


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback"))]
)
def test_listening_sockets_hand_nodelay_to_accepted_connections(host):
    # `_listen`: `serve_http` binding host:port itself; `bind`: the `--workers` parent's socket that its children share
    for listener in (_listen(host, 0), bind(host, 0)):
        with listener, socket.create_connection(listener.getsockname()[:2]):
            assert listener.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_serve_http_serves_on_a_socket_it_is_given():
    listener = socket.create_server(("127.0.0.1", 0))  # no TCP_NODELAY: serve_http must set it
    port = listener.getsockname()[1]
    assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    engine = Engine(Runtime.build(load_config_text(CONFIG, env={})))
    stop, ready = anyio.Event(), anyio.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                lambda: serve_http(
                    McpFront(engine),
                    host="127.0.0.1",
                    port=1,  # unused: the socket given decides
                    sock=listener,
                    grace_period=5,
                    stop=stop,
                    handle_signals=False,
                    on_ready=on_ready,
                )
            )
            with anyio.fail_after(10):
                await ready.wait()
            assert urls == [f"http://127.0.0.1:{port}/mcp"]
            assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # accepted connections inherit it
            async with httpx2.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert answer.status_code == 200
            stop.set()
    finally:
        await engine.aclose()
    assert listener.fileno() == -1  # closed when serving ended, like a socket serve_http binds itself


async def test_serve_http_refuses_a_socket_that_is_not_listening():
    engine = Engine(Runtime.build(load_config_text(CONFIG, env={})))
    unbound = socket.socket()
    try:
        with pytest.raises(ServeError, match="not a listening stream socket"):
            await serve_http(McpFront(engine), host="127.0.0.1", port=0, sock=unbound, grace_period=1)
        unbound.close()
        with pytest.raises(ServeError, match="cannot serve on the socket given"):
            await serve_http(McpFront(engine), host="127.0.0.1", port=0, sock=unbound, grace_period=1)
    finally:
        unbound.close()
        await engine.aclose()
