"""The processes a benchmark run starts: the fake upstream, the forwarder, the proxy and LiteLLM's proxy.

    with Server.start("proxy", [python, "-m", "proxy", "serve", ...], port=port, core="0", cwd=repo) as server:
        server.cpu_seconds(), server.rss_mib(), server.peak_rss_mib()

Each runs pinned to a core with `taskset` (when given one), logs to a file in the run's work directory, and is
stopped (SIGTERM, then SIGKILL) on leaving the block. CPU and memory are read from /proc, summed over the process
and its children (LiteLLM's CLI may run its server in a child).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TICKS = os.sysconf("SC_CLK_TCK")
PROXY_TOKEN = "bench-proxy-token"  # the proxy's bearer token in the benchmark config (nothing real)
UPSTREAM_KEY = "bench-upstream-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in task.read_text().split()]
        i += 1
    return pids


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """A started process listening on `port`."""

    def __init__(self, name: str, process: subprocess.Popen, port: int, log: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log = log

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        *,
        port: int,
        core: str | None,
        workdir: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> Server:
        log = workdir / f"{name}.log"
        if core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", core, *argv]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
            )
        server = cls(name, process, port, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log}:\n{server.tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return server
            except OSError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError(f"{name} did not listen on port {port} within {timeout:g}s; see {log}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        total = 0
        for pid in _tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError):
                pass
        return total / TICKS

    def rss_mib(self) -> float:
        return sum(_status_kib(pid, "VmRSS") for pid in _tree(self.process.pid)) / 1024

    def peak_rss_mib(self) -> float:
        return sum(_status_kib(pid, "VmHWM") for pid in _tree(self.process.pid)) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def upstream_argv(python: str, port: int, ttft_ms: float, chunk_delay_ms: float, chunks: int) -> list[str]:
    return [
        python, str(BENCH / "upstream.py"), "--port", str(port), "--ttft-ms", str(ttft_ms),
        "--chunk-delay-ms", str(chunk_delay_ms), "--chunks", str(chunks),
    ]  # fmt: skip


def forwarder_argv(python: str, port: int, upstream_port: int) -> list[str]:
    return [python, str(BENCH / "forwarder.py"), "--upstream", f"http://127.0.0.1:{upstream_port}", "--port", str(port)]


def proxy_config(workdir: Path, upstream_port: int, *, telemetry: bool = False) -> Path:
    """The proxy's benchmark config: one OpenAI provider at the fake upstream, one model, the memory cache (for
    deterministic requests only, the default), a bearer token, logs at warning; tracing off, or with `telemetry`
    every trace exported over OTLP/HTTP to the fake upstream (which counts the exports)."""
    path = workdir / ("proxy-otel.yaml" if telemetry else "proxy.yaml")
    traces = (
        f"{{exporter: otlp, endpoint: 'http://127.0.0.1:{upstream_port}', sample_ratio: 1.0}}"
        if telemetry
        else "{exporter: none}"
    )
    path.write_text(
        f"""version: 1
providers:
  upstream:
    type: openai
    api_key: {UPSTREAM_KEY}
    base_url: http://127.0.0.1:{upstream_port}/v1
    max_connections: 1000
models:
  bench:
    targets:
      - {{provider: upstream, model: gpt-4o-mini}}
defaults: {{model: bench}}
cache: {{backend: memory, when: deterministic}}
server:
  auth: {{bearer_tokens: [{PROXY_TOKEN}]}}
telemetry:
  traces: {traces}
  logs: {{level: warning}}
"""
    )
    return path


def proxy_argv(python: str, port: int, config: Path) -> list[str]:
    serve = ["serve", "--transport", "http", "--config", str(config), "--port", str(port), "--no-watch"]
    return [python, "-m", "proxy", *serve]


LITELLM_VENV = BENCH / ".venv-litellm"


def ensure_litellm(spec: str = "litellm[proxy]") -> Path:
    """LiteLLM's CLI in its own virtualenv (bench/.venv-litellm), installed from PyPI on first use."""
    cli = LITELLM_VENV / "bin" / "litellm"
    if not cli.exists():
        print(f"installing {spec} into {LITELLM_VENV} (once) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", spec], check=True)
    return cli


def litellm_setup(workdir: Path, upstream_port: int) -> tuple[Path, dict[str, str], str]:
    """LiteLLM's production settings for one worker, pointed at the fake upstream: (config, environment, key).

    LiteLLM refuses to start without a master key, which must start with `sk-`; this one is random, made per run."""
    path = workdir / "litellm.yaml"
    path.write_text(
        f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: {UPSTREAM_KEY}
litellm_settings:
  request_timeout: 600
  set_verbose: false
  json_logs: true
"""
    )
    key = "sk-" + secrets.token_hex(16)
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION"}
    return path, env, key


def litellm_argv(cli: Path, port: int, config: Path) -> list[str]:
    return [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
