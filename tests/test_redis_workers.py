"""`llm-proxy serve --workers N` (proxy/cli_workers.py): several processes on one listening socket.

With Redis state, two worker processes together keep one global limit (a real multi-process run over HTTP); with
memory state the proxy refuses to start unless every limit is marked `per_worker: true`, and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.cli_serve import ServeOptions
from proxy.cli_workers import WorkersError, check_worker_state, run_workers
from proxy.config import load_config_text
from tests.redis_helpers import REDIS_URL, keys_under, needs_redis, redis_prefix

__all__ = ["redis_prefix"]  # the fixture, imported for the tests below

ROOT = Path(__file__).resolve().parent.parent

MEMORY = """
version: 1
providers:
  a: {type: mock, limits: {requests_per_minute: 10}}
  b: {type: mock, limits: {concurrency: 2, per_worker: true}}
  c: {type: mock}
models:
  default:
    targets:
      - {provider: a, model: m}
      - {provider: c, model: m, limits: {requests_per_minute: 5}}
      - {provider: c, model: n, limits: {requests_per_minute: 5, per_worker: true}}
"""


def test_memory_state_with_several_workers_refuses_unmarked_limits_and_says_why():
    config = load_config_text(MEMORY)
    with pytest.raises(WorkersError) as refused:
        check_worker_state(config, 4)
    message = str(refused.value)
    assert "would allow 4 times each limit" in message
    assert "providers.a.limits, models.default.targets[1].limits." in message  # b and targets[2] are marked
    assert "state.backend: redis" in message and "per_worker: true" in message
    check_worker_state(config, 1)  # one process: nothing is multiplied


def test_marked_limits_or_redis_state_may_run_several_workers():
    marked = MEMORY.replace("requests_per_minute: 10}", "requests_per_minute: 10, per_worker: true}")
    marked = marked.replace("requests_per_minute: 5}", "requests_per_minute: 5, per_worker: true}")
    check_worker_state(load_config_text(marked), 4)
    shared = MEMORY + "state: {backend: redis, url: 'redis://127.0.0.1:6379/0'}\n"
    check_worker_state(load_config_text(shared), 4)


def test_run_workers_exits_1_for_memory_state_or_stdio(capsys):
    options = ServeOptions(transport="http", host="127.0.0.1", port=0, watch=False)
    assert run_workers(load_config_text(MEMORY), options, 2, config_path=None) == 1
    assert "per_worker: true" in capsys.readouterr().err
    stdio = ServeOptions(transport="stdio", host="127.0.0.1", port=0, watch=False)
    assert run_workers(load_config_text(MEMORY), stdio, 2, config_path=None) == 1
    assert "needs the http transport" in capsys.readouterr().err


# --- two real worker processes ----------------------------------------------------------------------------

LIMIT = 6  # requests per minute, shared by both workers

WORKERS_CONFIG = """
version: 1
providers:
  limited:
    type: python
    class: tests.redis_helpers:PidProvider
    limits: {{requests_per_minute: {limit}, max_wait: 0s}}
  free: {{type: python, class: tests.redis_helpers:PidProvider}}
models:
  default:
    targets: [{{provider: limited, model: m}}]
  free:
    targets: [{{provider: free, model: m}}]
state: {{backend: redis, url: "{url}", key_prefix: {prefix}, timeout: 1s}}
"""


@contextlib.asynccontextmanager
async def workers(config_file: Path, count: int):
    """`python -m proxy.cli_workers --workers COUNT` until the block ends (then SIGTERM); yields (url, process)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli_workers",
        "--workers",
        str(count),
        "--config",
        str(config_file),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-watch",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []
    rest: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(60):
            while not (ready := re.search(rf"ready: {count} workers serving (http://[0-9.:]+)", "".join(log))):
                line = await process.stderr.readline()
                if not line:
                    raise AssertionError("the workers stopped before serving:\n" + "".join(log))
                log.append(line.decode())
        rest = asyncio.create_task(process.stderr.read())  # keep reading, so the pipe never fills
        yield ready.group(1), process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
        if rest is not None:
            await rest


async def ask(session: aiohttp.ClientSession, url: str, model: str) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        payload = await response.json()
        text = payload["choices"][0]["message"]["content"] if response.status == 200 else ""
        return response.status, text


@needs_redis
async def test_two_worker_processes_keep_one_global_limit_through_redis(tmp_path, redis_prefix):
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(textwrap.dedent(WORKERS_CONFIG.format(limit=LIMIT, url=REDIS_URL, prefix=redis_prefix)))
    async with workers(config_file, 2) as (url, process):
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request: any worker may take it
        async with aiohttp.ClientSession(connector=connector) as session:
            pids: set[str] = set()
            for _ in range(400):  # the kernel spreads connections over the workers; see both answer
                status, text = await ask(session, url, "free")
                assert status == 200
                pids.add(text)
                if len(pids) == 2:
                    break
            assert len(pids) == 2, "only one worker ever answered"
            started = time.monotonic()
            results = await asyncio.gather(*(ask(session, url, "default") for _ in range(40)))
            elapsed = time.monotonic() - started
        admitted = [text for status, text in results if status == 200]
        assert {status for status, _ in results} <= {200, 429}
        # The burst of 6, plus what refills while the 40 requests run (6/min: 0.1 per second).
        assert LIMIT <= len(admitted) <= LIMIT + int(elapsed * LIMIT / 60)
        assert f"{redis_prefix}:v1:rl:limited:req" in await keys_under(redis_prefix)
    assert process.returncode == 0  # SIGTERM: both workers drained and stopped
