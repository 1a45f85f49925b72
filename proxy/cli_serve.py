"""`llm-proxy serve`: run the proxy as an MCP server, over stdio (for MCP hosts) or streamable HTTP (`/mcp`).

    llm-proxy serve [--transport stdio|http] [--host H] [--port P] [--no-watch]

The transport defaults to stdio when standard input is not a terminal (an MCP host started us), else http.
`--host`/`--port` default to the config's `server.http`; `--port 0` takes any free port (the log line says which).
The config file is watched and reloaded when it or its templates change (not with `--no-watch`), and on SIGHUP;
MCP clients are told when the prompts changed. Logs go to stderr, never stdout (stdout is the protocol on stdio),
at the config's `telemetry.logs.level`. SIGTERM/SIGINT: stop accepting, let the calls in flight finish within
`server.grace_period`, close the engine, exit 0. Exit 1 when the config is invalid or the server cannot start.

Everything MCP-, Starlette- or uvicorn-specific lives in `proxy.fronts`; this module only wires the command.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from proxy.config.load import load_config
from proxy.config.model import Config
from proxy.errors import ConfigError, ProxyError

if TYPE_CHECKING:
    from proxy.reload import Reloader

log = logging.getLogger("proxy.serve")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_serve_parser(
    subparsers: argparse._SubParsersAction, config_option: Callable[..., None] | None = None
) -> argparse.ArgumentParser:
    """Add the `serve` subcommand; `config_option(parser, top=False)` adds `--config` like the other commands."""
    serve = subparsers.add_parser(
        "serve",
        help="serve the proxy over MCP (stdio or streamable HTTP)",
        description="Serve the proxy's MCP tools and prompts over stdio (for MCP hosts) or streamable HTTP (/mcp).",
    )
    if config_option is not None:
        config_option(serve, top=False)
    serve.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default=None,
        help="stdio (default when standard input is not a terminal) or http",
    )
    serve.add_argument("--host", default=None, help="HTTP bind address (default: the config's server.http.host)")
    serve.add_argument(
        "--port", type=int, default=None, help="HTTP port (default: the config's server.http.port; 0: any free port)"
    )
    serve.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload the config when it or its templates change (SIGHUP still reloads)",
    )
    return serve


@dataclass(frozen=True, slots=True)
class ServeOptions:
    transport: str  # stdio | http
    host: str
    port: int
    watch: bool


def serve_options(args: argparse.Namespace, config: Config, *, stdin_is_tty: bool | None = None) -> ServeOptions:
    """The effective options: the command line over the config, the transport from stdin when not given."""
    if stdin_is_tty is None:
        stdin_is_tty = sys.stdin is not None and sys.stdin.isatty()
    transport = args.transport or ("http" if stdin_is_tty else "stdio")
    http = config.server.http
    return ServeOptions(
        transport=transport,
        host=args.host if args.host is not None else http.host,
        port=args.port if args.port is not None else http.port,
        watch=not args.no_watch,
    )


_handler: logging.Handler | None = None


def configure_logging(level: str) -> None:
    """Everything to stderr at `level` (before the MCP SDK would install its own handler); the SDK's per-request
    chatter only at debug. Calling it again replaces the handler it added."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_handler)
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("mcp", "httpx2", "httpcore2", "uvicorn.error", "sse_starlette"):
        logging.getLogger(name).setLevel(max(quiet, root.level))


async def _reload_on_sighup(
    reloader: Reloader, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            await reloader.reload("SIGHUP")


async def serve(config: Config, options: ServeOptions, **transport_options: Any) -> None:
    """Build the engine and the MCP front from `config` and serve until shutdown; the engine is closed after.

    With a config file, a `Reloader` keeps it current: on every change of the file or its templates (unless
    `options.watch` is false) and on SIGHUP; the front re-announces its prompts after each reload.
    `transport_options` go to `serve_stdio`/`serve_http` (tests pass `stop=`, `handle_signals=`, `on_ready=`).
    """
    from proxy.engine import Engine
    from proxy.fronts.mcp_server import McpFront
    from proxy.fronts.serve import serve_http, serve_stdio
    from proxy.reload import Reloader
    from proxy.runtime import Runtime

    engine = Engine(Runtime.build(config))
    reloader = Reloader(engine, config.path) if config.path is not None else None
    stop_watching = asyncio.Event()
    try:
        front = McpFront(engine)
        grace = config.server.grace_period
        async with anyio.create_task_group() as tasks:
            if reloader is not None:
                reloader.listeners.append(front.on_reload)
                if options.watch:  # stopped by its event: the watcher's thread only checks that (within 20 ms)
                    tasks.start_soon(functools.partial(reloader.watch, stop_event=stop_watching))
                if transport_options.get("handle_signals", True):
                    await tasks.start(_reload_on_sighup, reloader)
            try:
                if options.transport == "http":
                    await serve_http(
                        front, host=options.host, port=options.port, grace_period=grace, **transport_options
                    )
                else:
                    await serve_stdio(front, grace_period=grace, **transport_options)
            finally:
                stop_watching.set()
                tasks.cancel_scope.cancel()
    finally:
        if reloader is not None:
            await reloader.aclose()
        await engine.aclose()
    log.info("stopped")


def run_serve(args: argparse.Namespace, config_path: str | None = None) -> int:
    """`llm-proxy serve`: exit 0 after a clean shutdown, 1 when the config is invalid or serving cannot start.

    `config_path` as the CLI resolves it; when None, `args.config`, then `$LLM_PROXY_CONFIG`, then the default.
    """
    path = config_path or getattr(args, "config", None) or os.environ.get("LLM_PROXY_CONFIG") or None
    configure_logging("info")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    configure_logging(config.telemetry.logs.level)
    options = serve_options(args, config)
    code = 0
    try:
        asyncio.run(serve(config, options))
    except* ProxyError as group:  # ConfigError from building the runtime, ServeError from listening
        for error in group.exceptions:
            print(f"error: {error}", file=sys.stderr)
        code = 1
    except* KeyboardInterrupt:  # a signal before the server installed its handlers
        code = 130
    return code
