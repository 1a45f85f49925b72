"""The overhead benchmark: one table of throughput, latency, streaming and memory, direct and through each front.

    python bench/run.py [--vs] [--quick] [--client wrk|python] [--json out.json] [--leak-requests N]

Columns: `upstream` (the fake upstream directly: the floor), `forwarder` (bench/forwarder.py: the least a Python
proxy can do), `proxy openai` (POST /v1/chat/completions), `proxy mcp` (`complete_chat` over streamable HTTP at
/mcp, as raw JSON-RPC POSTs in the 2026-07-28 era: no session, each request carries its `_meta`), `proxy cache`
(a deterministic request answered from the response cache), `proxy otel` (the OpenAI front with every trace
exported over OTLP/HTTP to the fake upstream; not with `--quick`), and with `--vs` `litellm` (LiteLLM's proxy, one
worker, production settings, installed into bench/.venv-litellm on first use). Every server runs alone on core 0
(`taskset`); the load generator, the stream client and the fake upstream share core 1.

Per column: requests/s at concurrency 16 and 64 and the server's CPU per request; latency p50/p90/p99 at
concurrency 1 and 8; a stream's time to its first event (c1), and its whole duration; RSS while 64 streams are
open, and the peak; with `--leak-requests N`, the RSS growth between N/2 and N requests (proxy openai only).
Every server is started first; the measurements then run in `--rounds` interleaved rounds (3) and the best of
each is kept, so a burst of other work on a shared machine spoils one round, not one column. Ratios: throughput
against the forwarder, latencies as added to the upstream's own. `--quick` is the smoke mode the tests run (one
round, a fraction of a second per measurement, one proxy process for the three proxy columns).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import client
import report
import servers
from servers import PROXY_TOKEN, UPSTREAM_KEY, Server

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello to the benchmark in one short sentence."},
]
EXPECTED = b"fake upstream"


def openai_body(*, stream: bool = False, cached: bool = False) -> bytes:
    body: dict[str, Any] = {"model": "bench", "messages": MESSAGES, "max_tokens": 64}
    if cached:
        body["temperature"] = 0
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def mcp_body(*, stream: bool = False) -> bytes:
    """A `tools/call` of `complete_chat` as the MCP SDK's client sends it in the 2026-07-28 era."""
    arguments: dict[str, Any] = {"messages": MESSAGES[1:], "model": "bench", "max_tokens": 64}
    meta: dict[str, Any] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    if stream:
        arguments["stream"] = True
        meta["progressToken"] = 1
    call = {"name": "complete_chat", "arguments": arguments, "_meta": meta}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}).encode()


MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "complete_chat",
}


@dataclass
class Column:
    name: str
    server: str  # key of the server process it measures
    path: str
    headers: dict[str, str]
    body: bytes
    stream_body: bytes
    marker: bytes = b"data:"  # what a stream's first event contains
    results: dict[str, float] = field(default_factory=dict)


def columns(options: argparse.Namespace, litellm_key: str) -> list[Column]:
    chat = "/v1/chat/completions"
    bearer = {"authorization": f"Bearer {PROXY_TOKEN}", "content-type": "application/json"}
    shared = "proxy" if options.quick else None
    cols = [
        Column("upstream", "upstream", chat, {"authorization": f"Bearer {UPSTREAM_KEY}"}, openai_body(),
               openai_body(stream=True)),
        Column("forwarder", "forwarder", chat, {}, openai_body(), openai_body(stream=True)),
        Column("proxy openai", shared or "proxy-openai", chat, bearer, openai_body(), openai_body(stream=True)),
        Column("proxy mcp", shared or "proxy-mcp", "/mcp", {**bearer, **MCP_HEADERS}, mcp_body(),
               mcp_body(stream=True), marker=b"notifications/progress"),
        Column("proxy cache", shared or "proxy-cache", chat, bearer, openai_body(cached=True),
               openai_body(stream=True, cached=True)),
    ]  # fmt: skip
    if not options.quick:  # the OpenAI front again, every trace exported over OTLP to the fake upstream
        cols.append(Column("proxy otel", "proxy-otel", chat, bearer, openai_body(), openai_body(stream=True)))
    if options.vs:
        key = {"authorization": f"Bearer {litellm_key}", "content-type": "application/json"}
        cols.append(Column("litellm", "litellm", chat, key, openai_body(), openai_body(stream=True)))
    if options.columns:
        wanted = {name.strip() for name in options.columns.split(",")}
        cols = [c for c in cols if c.name in wanted or c.name.split()[-1] in wanted]
    return cols


class Load:
    """Closed-loop load at a concurrency: wrk with bench/post.lua, or the Python client."""

    def __init__(self, kind: str, core: str | None, workdir: Path) -> None:
        self.kind = kind
        self.core = core
        self.workdir = workdir

    def run(self, port: int, col: Column, concurrency: int, seconds: float) -> dict[str, float]:
        if self.kind == "python":
            return asyncio.run(
                client.closed_loop(
                    "127.0.0.1", port, col.path, col.body, col.headers, concurrency=concurrency, duration=seconds
                )
            )
        body = self.workdir / "body.json"
        body.write_bytes(col.body)
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(round(seconds), 1)}s", "--timeout", "10s"]
        argv += ["-s", str(Path(__file__).with_name("post.lua")), f"http://127.0.0.1:{port}{col.path}", "--"]
        argv += [str(body), *(f"{k}: {v}" for k, v in col.headers.items() if k != "content-type")]
        if self.core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", self.core, *argv]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        match = re.search(r"^BENCH (\{.*\})$", out, re.M)
        if match is None:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        return json.loads(match.group(1))


def _check(col: Column, port: int) -> None:
    """One plain and one streamed request answer as they should (the cache column's fill the cache)."""

    async def check() -> None:
        async with client.Connection("127.0.0.1", port) as conn:
            plain = await conn.request(col.path, col.body, col.headers)
            stream = await conn.request(col.path, col.stream_body, col.headers, marker=col.marker)
        if plain.status != 200 or EXPECTED not in plain.body or b'"isError":true' in plain.body:
            raise RuntimeError(f"{col.name}: unexpected answer {plain.status}: {plain.body[:400]!r}")
        complete = b"data: [DONE]" in stream.body or b'"isError":false' in stream.body
        if stream.status != 200 or col.marker not in stream.body or not complete:
            raise RuntimeError(f"{col.name}: unexpected stream {stream.status}: {stream.body[-400:]!r}")

    asyncio.run(check())


class RssSampler:
    """The largest RSS of a server seen while the block runs (sampled every 20 ms)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self.server.rss_mib())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss_mib())


def measure(col: Column, server: Server, load: Load, options: argparse.Namespace) -> dict[str, float]:
    """One round of every measurement of one column."""
    r: dict[str, float] = {}
    port = server.port
    _check(col, port)
    load.run(port, col, 16, options.warmup)
    for c in (1, 8):
        res = load.run(port, col, c, options.duration)
        for q in (50, 90, 99):
            r[f"c{c}_p{q}"] = res[f"p{q}"] / 1000
        r[f"c{c}_errors"] = res["errors"] + res["status_errors"]
    cpu0, done = server.cpu_seconds(), 0
    for c in (16, 64):
        res = load.run(port, col, c, options.duration)
        r[f"rps{c}"] = res["requests"] / res["seconds"]
        r[f"rps{c}_errors"] = res["errors"] + res["status_errors"]
        done += res["requests"]
    r["cpu_ms"] = (server.cpu_seconds() - cpu0) * 1000 / max(done, 1)

    def streams(count: int, concurrency: int) -> list[client.Result]:
        return asyncio.run(
            client.streams(
                "127.0.0.1", port, col.path, col.stream_body, col.headers,
                count=count, concurrency=concurrency, marker=col.marker,
            )
        )  # fmt: skip

    results = streams(options.streams, 1)
    ttfb = [x.first_event * 1000 for x in results]
    r["ttfb_p50"], r["ttfb_p99"] = client.percentile(ttfb, 50), client.percentile(ttfb, 99)
    r["stream_p50"] = client.percentile([x.total * 1000 for x in results], 50)
    r["stream_errors"] = sum(x.status != 200 or col.marker not in x.body for x in results)
    with RssSampler(server) as rss:
        many = streams(options.open_streams * 3, options.open_streams)
    r["rss_streams"] = rss.peak
    r["stream_errors"] += sum(x.status != 200 for x in many)
    r["rss_peak"] = server.peak_rss_mib()
    return r


def leak_check(col: Column, server: Server, load: Load, requests: int) -> None:
    """RSS growth over the second half of `requests` requests at c16 (the first half settles caches and pools)."""
    half = requests / 2 / max(col.results["rps16"], 1.0)
    load.run(server.port, col, 16, half)
    before = server.rss_mib()
    load.run(server.port, col, 16, half)
    col.results["rss_growth"] = server.rss_mib() - before
    col.results["leak_requests"] = requests


def best(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The rounds of one column combined: the most throughput, the least CPU and latency (noise on a shared
    machine only adds), the largest RSS, every error."""
    combined: dict[str, float] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        if key.startswith("rps") and not key.endswith("errors"):
            combined[key] = max(values)
        elif key.startswith("rss") or key.endswith("errors"):
            combined[key] = max(values) if key.startswith("rss") else sum(values)
        else:
            combined[key] = min(values)
    return combined


def _otlp_posts(port: int) -> float:
    """How many OTLP exports the fake upstream received so far."""

    async def stats() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /stats HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = await reader.read(4096)
        writer.close()
        return data

    return float(json.loads(asyncio.run(stats()).split(b"\r\n\r\n", 1)[1])["otlp_posts"])


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def interpreter_info(python: str) -> str:
    probe = "import importlib.util as u; print('uvloop' if u.find_spec('uvloop') else 'asyncio', "
    probe += "'httptools' if u.find_spec('httptools') else 'h11')"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return "+".join(out)


def proxy_loop(options: argparse.Namespace) -> str:
    """The proxy starts its own event loop (uvicorn's `loop` setting does not apply): uvloop only if its source
    asks for it; the HTTP parser is uvicorn's choice (httptools when installed)."""
    serve = options.proxy_src / "proxy" / "cli_serve.py"
    uses_uvloop = serve.exists() and "uvloop" in serve.read_text()
    loop, parser = interpreter_info(options.proxy_python).partition("+")[::2]
    return f"{loop if uses_uvloop else 'asyncio'}+{parser}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vs", action="store_true", help="also measure LiteLLM's proxy (installed on first use)")
    parser.add_argument("--quick", action="store_true", help="the smoke mode: tiny durations, one proxy process")
    parser.add_argument("--client", choices=("wrk", "python"), default=None, help="default: wrk if found")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 3)")
    parser.add_argument("--streams", type=int, default=None, help="streams timed one at a time (default 200)")
    parser.add_argument("--open-streams", type=int, default=None, help="streams open at once for RSS (64)")
    parser.add_argument("--leak-requests", type=int, default=None, help="requests of the leak check (100000)")
    parser.add_argument("--columns", default="", help="comma-separated subset, e.g. upstream,forwarder,openai")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the upstream and the forwarder")
    parser.add_argument("--proxy-python", default=None, help="interpreter of the proxy (default: --python)")
    parser.add_argument("--proxy-src", type=Path, default=servers.REPO, help="checkout whose `proxy` to run")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="the upstream's time to first streamed event")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0, help="the upstream's delay between events")
    parser.add_argument("--chunks", type=int, default=10, help="content events per streamed answer")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    options = parser.parse_args(argv)
    quick = options.quick
    defaults = {"rounds": 1 if quick else 3, "duration": 0.2 if quick else 3.0, "streams": 5 if quick else 100,
                "open_streams": 8 if quick else 64, "leak_requests": 0 if quick else 100_000}  # fmt: skip
    for name, value in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    options.warmup = 0.1 if quick else 2.0
    options.proxy_python = options.proxy_python or options.python
    if options.client is None:  # wrk measures in whole seconds: the smoke mode uses the Python client
        options.client = "wrk" if shutil.which("wrk") and not quick else "python"
    if quick:
        options.ttft_ms, options.chunk_delay_ms, options.chunks = 5.0, 1.0, 3
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (str(cores[0]), str(cores[1])) if len(cores) >= 2 else (None, None)
    if client_core is not None:
        os.sched_setaffinity(0, {int(client_core)})  # this process is the stream client
    litellm_cli = servers.ensure_litellm() if options.vs else None
    with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-") as tmp:
        workdir = Path(tmp)
        upstream_port = servers.free_port()
        litellm_config, litellm_env, litellm_key = servers.litellm_setup(workdir, upstream_port)
        cols = columns(options, litellm_key)
        proxy_config = servers.proxy_config(workdir, upstream_port)
        otel_config = servers.proxy_config(workdir, upstream_port, telemetry=True)
        proxy_env = {**os.environ, "PYTHONPATH": str(options.proxy_src)}

        def argv_of(key: str, port: int) -> tuple[list[str], dict[str, Any]]:
            if key == "forwarder":
                return servers.forwarder_argv(options.python, port, upstream_port), {}
            if key == "litellm":
                assert litellm_cli is not None
                return servers.litellm_argv(litellm_cli, port, litellm_config), {"env": litellm_env, "cwd": workdir}
            config = otel_config if key == "proxy-otel" else proxy_config
            argv = servers.proxy_argv(options.proxy_python, port, config)
            return argv, {"env": proxy_env, "cwd": options.proxy_src}

        load = Load(options.client, client_core, workdir)
        started, load_before = time.time(), _loadavg()
        upstream_argv = servers.upstream_argv(
            options.python, upstream_port, options.ttft_ms, options.chunk_delay_ms, options.chunks
        )
        with Server.start("upstream", upstream_argv, port=upstream_port, core=client_core, workdir=workdir) as up:
            running: dict[str, Server] = {"upstream": up}
            try:
                for col in cols:  # every server at once, each idle while another is measured
                    if col.server not in running:
                        port = servers.free_port()
                        argv, extra = argv_of(col.server, port)
                        running[col.server] = Server.start(
                            col.server, argv, port=port, core=server_core, workdir=workdir, **extra
                        )
                rounds: dict[str, list[dict[str, float]]] = {col.name: [] for col in cols}
                for i in range(options.rounds):  # interleaved, so a burst of other work hits one round only
                    for col in cols:
                        print(f"round {i + 1}/{options.rounds}: {col.name} ...", file=sys.stderr, flush=True)
                        rounds[col.name].append(measure(col, running[col.server], load, options))
                for col in cols:
                    col.results = best(rounds[col.name])
                    if col.server == "proxy-otel":
                        col.results["otlp_posts"] = _otlp_posts(upstream_port)
                    if col.name == "proxy openai" and options.leak_requests:
                        print(f"leak check: {options.leak_requests:,} requests ...", file=sys.stderr, flush=True)
                        leak_check(col, running[col.server], load, options.leak_requests)
            finally:
                for key, server in running.items():
                    if key != "upstream":
                        with contextlib.suppress(Exception):
                            server.stop()
        meta = {
            "load average": f"{load_before} before, {_loadavg()} after (other work on the machine skews results)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {report.cpu_model()}",
            "python": platform.python_version(),
            "loop": f"forwarder/upstream {interpreter_info(options.python)}, proxy {proxy_loop(options)}",
            "client": options.client,
            "pinning": f"servers on core {server_core}, client+upstream on core {client_core}"
            if server_core is not None
            else "none (fewer than 2 cores)",
            "measurements": f"{options.duration:g} s each, best of {options.rounds} interleaved rounds",
            "upstream": f"ttft {options.ttft_ms:g} ms, {options.chunks} chunks {options.chunk_delay_ms:g} ms apart",
        }
        print(report.table(cols, meta))
        if options.json is not None:
            data = {"meta": meta, "columns": {c.name: c.results for c in cols}}
            options.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
