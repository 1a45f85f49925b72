"""`llm-proxy serve` and its transports, end to end with the SDK's clients in both protocol eras.

- streamable HTTP in-process (`proxy.cli_serve.serve` on a free port): tools, progress and prompts over `/mcp`;
  bearer tokens from the config; graceful shutdown (the listener closes, the call in flight finishes);
- streamable HTTP as a subprocess (`run_serve`) stopped with SIGTERM while a call streams: the call completes and
  the process exits 0;
- stdio as a subprocess (`python -m proxy serve --transport stdio`) against the fake OpenAI upstream;
- the command's options and its failures (invalid config, address in use).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.streams.text import TextReceiveStream
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PromptListChangedNotification
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from proxy.cli_serve import ServeOptions, add_serve_parser, run_serve, serve, serve_options
from proxy.config import load_config, load_config_text
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.fronts.serve import serve_http
from proxy.runtime import Runtime
from tests.fakes import ModelReply, OpenAIFake
from tests.http_server import serve_mcp_http

MODES = ["auto", "legacy"]
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-serve-token-0123456789"
KEY = "test-serve-upstream-key-0123456789"
WORDS = "one two three four five six seven eight"

CONFIG = f"""
version: 1
providers:
  words: {{type: mock, mock: {{reply: "{WORDS}", chunk_size: 1, chunk_delay: 50ms, latency: 300ms}}}}
  echo: {{type: mock, mock: {{echo: true}}}}
models:
  default: {{targets: [{{provider: echo, model: echo-1}}]}}
  words: {{targets: [{{provider: words, model: words-1}}]}}
templates:
  greet:
    description: Greet someone
    text: "Hello {{{{ name }}}}"
    arguments: {{name: {{required: true}}}}
server: {{grace_period: 10s}}
"""


async def eventually(condition: Callable[[], object], within: float = 5) -> None:
    """Wait until `condition()` is true (another task or process is making it so); fail after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (state owned by code without an event to wait on)
            await anyio.sleep(0.005)


def wired() -> bool:
    """Whether `serve` is a subcommand of the CLI yet."""
    from proxy.cli import build_parser

    try:
        build_parser().parse_args(["serve", "--transport", "stdio"])
    except SystemExit:
        return False
    return True


@asynccontextmanager
async def http_server(config_text: str, **options: object) -> AsyncIterator[tuple[str, anyio.Event]]:
    """`serve()` over HTTP on a free port in a task; yields (the /mcp URL, the stop event)."""
    async with serve_mcp_http(load_config_text(config_text, env={"PROXY_TOKEN": TOKEN}), **options) as served:
        yield served


# --- HTTP, in-process -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_tools_progress_and_prompts_over_streamable_http(mode):
    deltas: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        deltas.append(message)

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    async with http_server(CONFIG, routes=[Route("/ping", ping)]) as (url, _), Client(url, mode=mode) as client:
        assert url.endswith("/mcp")
        async with httpx2.AsyncClient() as http:  # other routes live next to /mcp (the HTTP fronts' endpoints)
            assert (await http.get(url.replace("/mcp", "/ping"))).text == "pong"
        result = await client.call_tool(
            "complete_text", {"prompt": "x", "model": "words", "stream": True}, progress_callback=on_progress
        )
        echoed = await client.call_tool("complete_text", {"prompt": "over http"})
        bad = await client.call_tool("complete_text", {"prompt": "x", "model": "nope"})
        [prompt] = (await client.list_prompts()).prompts
        rendered = await client.get_prompt("greet", {"name": "Ada"})
    assert result.structured_content["text"] == WORDS
    assert "".join(d for d in deltas if d) == WORDS  # over HTTP progress may race the result, but all arrive first
    assert echoed.content[0].text == "over http"
    assert bad.is_error and "unknown model `nope`" in bad.content[0].text
    assert prompt.name == "greet" and rendered.messages[0].content.text == "Hello Ada"


@pytest.mark.parametrize("mode", MODES)
async def test_bearer_tokens_guard_the_mcp_endpoint(mode):
    config = CONFIG + 'server: {auth: {bearer_tokens: ["${PROXY_TOKEN}"]}}\n'
    config = config.replace("server: {grace_period: 10s}\n", "")
    async with http_server(config) as (url, _):
        async with httpx2.AsyncClient() as http:
            denied = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            wrong = await http.post(url, json={}, headers={"authorization": "Bearer not-it"})
            probe = await http.get(url.replace("/mcp", "/healthz"))
        assert denied.status_code == wrong.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer" and "Authorization" in denied.text
        assert probe.status_code != 401  # probes never need a token
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}) as http,
            Client(streamable_http_client(url, http_client=http), mode=mode) as client,
        ):
            result = await client.call_tool("complete_text", {"prompt": "let me in"})
        assert result.content[0].text == "let me in"


@pytest.mark.parametrize("mode", MODES)
async def test_shutdown_closes_the_listener_and_lets_the_call_in_flight_finish(mode):
    engine = Engine(Runtime.build(load_config_text(CONFIG, env={})))
    front = McpFront(engine)
    stop, ready = anyio.Event(), anyio.Event()
    urls: list[str] = []
    results = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                lambda: serve_http(
                    front,
                    host="127.0.0.1",
                    port=0,
                    grace_period=10,
                    stop=stop,
                    handle_signals=False,
                    on_ready=on_ready,
                )
            )
            with anyio.fail_after(10):
                await ready.wait()
            port = int(urls[0].rsplit(":", 1)[1].split("/")[0])
            async with Client(urls[0], mode=mode) as client:
                await client.list_tools()  # as hosts do; else the client lists them after the call, on a new connection

                async def call() -> None:
                    results.append(await client.call_tool("complete_text", {"prompt": "x", "model": "words"}))

                tasks.start_soon(call)
                await eventually(lambda: front.in_flight)
                stop.set()
                await eventually(lambda: front.closing)
                with pytest.raises(ConnectionRefusedError):  # no new connections
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                assert front.in_flight == 1  # the call is still running, and gets its answer
                await eventually(lambda: results, within=10)
    finally:
        await engine.aclose()
    [result] = results
    assert not result.is_error and result.structured_content["text"] == WORDS


RELOADED = CONFIG.replace(
    "templates:\n", 'templates:\n  farewell: {text: "Bye {{ name }}", arguments: {name: {required: true}}}\n'
)


@asynccontextmanager
async def prompt_changes(client: Client, mode: str, legacy: anyio.Event) -> AsyncIterator[anyio.Event]:
    """An event set when `client` hears that the prompt list changed: through `subscriptions/listen` on 2026-07-28,
    through the notification (`legacy`, set by the handler of `changes_handler`) on the handshake era."""
    if mode == "legacy":
        yield legacy
        return
    changed = anyio.Event()
    async with client.listen(prompts_list_changed=True) as subscription, anyio.create_task_group() as tasks:

        async def wait_for_event() -> None:
            async for _ in subscription:
                changed.set()
                return

        tasks.start_soon(wait_for_event)
        yield changed
        tasks.cancel_scope.cancel()


def changes_handler() -> tuple[anyio.Event, Callable[..., Awaitable[None]]]:
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, PromptListChangedNotification):
            changed.set()

    return changed, on_message


async def until_changed(changed: anyio.Event, change: Callable[[], object], within: float = 15) -> None:
    """Make `change` until `changed` is set: the file watcher starts a moment after the server listens, so a first
    write can go unseen; writing the same content again is harmless (an unchanged file is not reloaded)."""
    with anyio.fail_after(within):
        while not changed.is_set():
            change()
            with anyio.move_on_after(0.5):
                await changed.wait()


@pytest.mark.parametrize("mode", MODES)
async def test_editing_the_config_file_reloads_and_announces_the_new_prompts(tmp_path, mode):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    stop, ready = anyio.Event(), anyio.Event()
    urls: list[str] = []
    legacy_changed, on_message = changes_handler()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    options = ServeOptions("http", "127.0.0.1", 0, watch=True)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve(load_config(path), options, stop=stop, handle_signals=False, on_ready=on_ready))
        with anyio.fail_after(10):
            await ready.wait()
        async with Client(urls[0], mode=mode, message_handler=on_message) as client:
            assert [p.name for p in (await client.list_prompts()).prompts] == ["greet"]
            async with prompt_changes(client, mode, legacy_changed) as changed:
                await until_changed(changed, lambda: path.write_text(RELOADED, encoding="utf-8"))
            prompts = (await client.list_prompts(cache_mode="refresh")).prompts
            assert [p.name for p in prompts] == ["farewell", "greet"]
        stop.set()


# --- HTTP, a real process stopped with SIGTERM ------------------------------------------------------------------

SERVE_SCRIPT = textwrap.dedent(
    """
    import argparse, sys
    from proxy.cli_serve import add_serve_parser, run_serve
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_serve_parser(parser.add_subparsers(dest="command"))
    sys.exit(run_serve(parser.parse_args(sys.argv[1:])))
    """
)


@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_lets_the_streaming_call_finish_then_exits_0(tmp_path, mode):
    config = tmp_path / "proxy.yaml"
    slow = CONFIG.replace("latency: 300ms", "latency: 0s").replace("chunk_delay: 50ms", "chunk_delay: 250ms")
    config.write_text(slow, encoding="utf-8")  # about 2 s of streaming after the SIGTERM
    command = [sys.executable, "-c", SERVE_SCRIPT, "--config", str(config), "serve", "--transport", "http"]
    stderr: list[str] = []
    listening = anyio.Event()
    urls: list[str] = []
    async with await anyio.open_process([*command, "--port", "0"]) as process:

        async def read_stderr() -> None:
            async for text in TextReceiveStream(process.stderr):
                stderr.append(text)
                if not urls and "MCP over streamable HTTP at " in "".join(stderr):
                    urls.append("".join(stderr).split("MCP over streamable HTTP at ")[1].split()[0])
                    listening.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_stderr)
            with anyio.fail_after(20):
                await listening.wait()
            deltas: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if not deltas:
                    process.send_signal(signal.SIGTERM)  # mid-stream
                deltas.append(message)

            async with Client(urls[0], mode=mode) as client:
                await client.list_tools()  # so the client needs no new connection after the call
                result = await client.call_tool(
                    "complete_text", {"prompt": "x", "model": "words", "stream": True}, progress_callback=on_progress
                )
            with anyio.fail_after(20):
                code = await process.wait()
    log = "".join(stderr)
    assert not result.is_error, result
    assert result.structured_content["text"] == WORDS
    assert code == 0, log
    assert "SIGTERM: shutting down" in log and "Traceback" not in log


@pytest.mark.parametrize("mode", MODES)
async def test_sighup_reloads_the_config_even_without_watching(tmp_path, mode):
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    command = [sys.executable, "-c", SERVE_SCRIPT, "--config", str(config), "serve", "--transport", "http"]
    stderr: list[str] = []
    legacy_changed, on_message = changes_handler()
    async with await anyio.open_process([*command, "--port", "0", "--no-watch"]) as process:

        async def read_stderr() -> None:
            async for text in TextReceiveStream(process.stderr):
                stderr.append(text)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_stderr)
            marker = "MCP over streamable HTTP at "
            await eventually(lambda: marker in "".join(stderr), within=20)
            url = "".join(stderr).split(marker)[1].split()[0]
            async with Client(url, mode=mode, message_handler=on_message) as client:
                assert [p.name for p in (await client.list_prompts()).prompts] == ["greet"]
                async with prompt_changes(client, mode, legacy_changed) as changed:
                    config.write_text(RELOADED, encoding="utf-8")
                    process.send_signal(signal.SIGHUP)
                    with anyio.fail_after(10):
                        await changed.wait()
                prompts = (await client.list_prompts(cache_mode="refresh")).prompts
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await process.wait()
    log = "".join(stderr)
    assert [p.name for p in prompts] == ["farewell", "greet"]
    assert code == 0, log
    assert "config reloaded (SIGHUP)" in log and "watching" not in log


# --- stdio, a real process --------------------------------------------------------------------------------------


async def test_sigterm_stops_an_idle_stdio_server_whose_host_keeps_stdin_open(tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    command = [sys.executable, "-c", SERVE_SCRIPT, "--config", str(config), "serve", "--transport", "stdio"]
    stderr: list[str] = []
    async with await anyio.open_process(command) as process:  # stdin: a pipe nobody writes to or closes

        async def read_stderr() -> None:
            async for text in TextReceiveStream(process.stderr):
                stderr.append(text)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_stderr)
            await eventually(lambda: "MCP over stdio" in "".join(stderr), within=20)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):  # no waiting for stdin to be written or closed
                code = await process.wait()
    assert code == 0, "".join(stderr)
    assert "SIGTERM: shutting down" in "".join(stderr)


@pytest.mark.skipif(not wired(), reason="needs cli wiring")
@pytest.mark.parametrize("mode", MODES)
async def test_stdio_subprocess_against_the_fake_openai_upstream(tmp_path, start_fake, mode):
    fake = await start_fake(OpenAIFake(api_key=KEY))
    fake.script(ModelReply(text=("Over", " stdio", " it came.")))
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"""
version: 1
providers:
  openai: {{type: openai, base_url: "{fake.base_url}", api_key: "${{STDIO_TEST_KEY}}"}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
templates:
  greet: {{text: "Hello {{{{ name }}}}", arguments: {{name: {{required: true}}}}}}
""",
        encoding="utf-8",
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "proxy", "serve", "--transport", "stdio", "--config", str(config)],
        env={"STDIO_TEST_KEY": KEY, "PATH": "/usr/bin:/bin"},
        cwd=str(ROOT),
    )
    deltas: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        deltas.append(message)

    async with Client(params, mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        arguments = {"prompt": "hi", "stream": True}
        result = await client.call_tool("complete_text", arguments, progress_callback=on_progress)
        [prompt] = (await client.list_prompts()).prompts
    assert "complete_template" in tools
    assert result.structured_content["text"] == "Over stdio it came."
    assert result.structured_content["provider"] == "openai"
    assert "".join(d for d in deltas if d) == "Over stdio it came."
    assert fake.requests[0].json["messages"] == [{"role": "user", "content": "hi"}]
    assert prompt.name == "greet"


# --- the command ------------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_options_come_from_the_command_line_then_the_config():
    config = load_config_text(CONFIG + "", env={})
    defaults = serve_options(parse(), config, stdin_is_tty=True)
    assert defaults == ServeOptions(transport="http", host="127.0.0.1", port=8085, watch=True)
    assert serve_options(parse(), config, stdin_is_tty=False).transport == "stdio"  # an MCP host started us
    given = serve_options(parse("--transport", "http", "--host", "0.0.0.0", "--port", "0", "--no-watch"), config)
    assert given == ServeOptions(transport="http", host="0.0.0.0", port=0, watch=False)


def test_an_invalid_config_exits_1_with_the_problems(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nprovders: {}\nmodels: {}\n", encoding="utf-8")
    assert run_serve(parse("--transport", "http"), str(broken)) == 1
    err = capsys.readouterr().err
    assert "unknown key `provders`" in err


def test_an_address_in_use_exits_1_saying_so(tmp_path, capsys):
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = run_serve(parse("--transport", "http", "--port", str(port)), str(config))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
