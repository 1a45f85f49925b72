"""Serve an ASGI app with uvicorn on a free 127.0.0.1 port inside the test's event loop.

    async with serve_app(app) as base_url:           # e.g. "http://127.0.0.1:41234"
        ...  # talk to it with the official SDKs (async clients), aiohttp, or the MCP client

`engine_app(yaml_text, api_routes=..., env=...)` builds an Engine from YAML and the proxy's Starlette app over it.
`serve_mcp_http(config, **options)` runs `llm-proxy serve --transport http` (`proxy.cli_serve.serve`) on a free port
in a task: yields the `/mcp` URL and the stop event.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.routing import BaseRoute

from proxy.cli_serve import ServeOptions, serve
from proxy.config import Config, load_config_text
from proxy.engine import Engine
from proxy.fronts.http_app import build_app
from proxy.runtime import Runtime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def serve_app(app) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not in a test's loop
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def engine_from_yaml(text: str, env: Mapping[str, str] | None = None) -> Engine:
    return Engine(Runtime.build(load_config_text(text, env=env or {})))


@asynccontextmanager
async def engine_app(
    text: str, *, api_routes: Sequence[BaseRoute] = (), env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, Engine]]:
    """An engine from YAML served over HTTP: yields `(base_url, engine)`; closes both afterwards."""
    engine = engine_from_yaml(text, env)
    try:
        async with serve_app(build_app(engine, api_routes=api_routes)) as base_url:
            yield base_url, engine
    finally:
        await engine.aclose()


@asynccontextmanager
async def serve_mcp_http(config: Config, **options: object) -> AsyncIterator[tuple[str, anyio.Event]]:
    """`serve()` over HTTP on a free port in a task; yields (the /mcp URL, the stop event), stops it afterwards."""
    stop, ready = anyio.Event(), anyio.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as tasks:
        transport = {"stop": stop, "handle_signals": False, "on_ready": on_ready, **options}
        tasks.start_soon(lambda: serve(config, ServeOptions("http", "127.0.0.1", 0, False), **transport))
        try:
            with anyio.fail_after(10):
                await ready.wait()
            yield urls[0], stop
        finally:
            stop.set()
