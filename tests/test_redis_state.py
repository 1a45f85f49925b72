"""`RedisState` (proxy/policies/redis_state.py): versioned key names, the timeout bound, the down/probe/up cycle
with its backoff, no secret in any log line or counter, background tasks cancelled on close."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from proxy.config.model import Secret, StateConfig
from proxy.policies.redis_state import RedisState, StateUnavailable
from tests.redis_helpers import REDIS_URL, TcpProxy, needs_redis

PASSWORD = "hunter2-not-a-real-password"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_state(url: str, clock: Clock | None = None, **settings) -> RedisState:
    config = StateConfig(backend="redis", url=Secret(url), key_prefix="llm-proxy-test", **settings)
    return RedisState(config, clock=clock or Clock())


async def test_keys_are_prefixed_and_versioned():
    state = make_state(REDIS_URL)
    assert state.key("rl", "openai", "req") == "llm-proxy-test:v1:rl:openai:req"
    await state.aclose()


async def test_a_dead_redis_is_probed_once_per_interval_with_backoff(caplog):
    clock = Clock()
    state = make_state(f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0", clock, timeout=0.2)
    caplog.set_level(logging.DEBUG, logger="proxy.policies.redis_state")
    assert not await state.ping()  # refused: marked down, next probe in 1 s
    assert state.stats()["failures"] == 1
    assert not await state.ping()  # within the interval: not even tried
    assert state.stats()["failures"] == 1
    clock.now = 1.0
    assert not await state.ping()  # the probe fails: the interval doubles to 2 s
    assert state.stats()["failures"] == 2
    clock.now = 2.5
    assert not await state.ping() and state.stats()["failures"] == 2
    clock.now = 3.0
    assert not await state.ping() and state.stats()["failures"] == 3
    stats = state.stats()
    assert stats["outages"] == 1 and stats["available"] is False and stats["last_error"] == "ConnectionError"
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert logged.count("unavailable") == 1  # one warning per outage
    assert PASSWORD not in logged and PASSWORD not in repr(stats)
    await state.aclose()


async def test_only_one_probe_at_a_time():
    clock = Clock()
    state = make_state(f"redis://127.0.0.1:{closed_port()}/0", clock)
    await state.ping()
    clock.now = 1.0
    assert state.usable() is True  # this caller probes
    assert state.usable() is False  # the others keep to the fallback meanwhile
    await state.aclose()


@needs_redis
async def test_an_unanswered_operation_gives_up_after_the_timeout_then_recovers():
    proxy = TcpProxy()
    await proxy.start()
    clock = Clock()
    state = make_state(proxy.url, clock, timeout=0.05)
    assert await state.ping()
    await proxy.blackhole()
    started = time.perf_counter()
    with pytest.raises(StateUnavailable):
        await state.call(lambda redis: redis.get("x"))
    assert 0.05 <= time.perf_counter() - started < 0.05 + 0.5
    await proxy.stop()
    await proxy.start()
    clock.now = 1.0
    assert await state.ping() and state.up
    await state.aclose()
    await proxy.stop()


@needs_redis
async def test_background_loops_run_until_close():
    state = make_state(REDIS_URL)
    ran = asyncio.Event()

    async def work() -> None:
        ran.set()

    state.every("probe", 0.001, work)
    state.every("probe", 0.001, work)  # once per name
    await ran.wait()
    assert len(state._loops) == 1
    await state.aclose()
    assert not state._loops
    state.every("late", 0.001, work)  # after close: not started
    assert not state._loops
