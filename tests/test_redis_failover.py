"""Redis going away under traffic, and coming back: `state.failure_mode` decides (fail_open: local buckets at the
limit / expected_replicas, warned once and counted; fail_closed: a clear 429), no request waits on Redis beyond
`state.timeout`, and the shared state is used again once Redis answers. Redis is reached through a `TcpProxy` the
test cuts, silences and restores. Also: breakers opened by one replica are adopted by the others."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from proxy.config.model import Secret, StateConfig
from proxy.errors import AllTargetsFailed
from proxy.policies.breaker import BreakerState
from proxy.policies.redis_breaker import SharedBreaker, sync_breakers
from proxy.policies.redis_state import RedisState
from proxy.types import ChatRequest
from tests.engine_helpers import FakeClock, make_engine, scripted
from tests.redis_helpers import REDIS_URL, TcpProxy, needs_redis, redis_prefix, state_section

pytestmark = needs_redis
__all__ = ["redis_prefix"]  # the fixture, imported for the tests below


@pytest.fixture
async def clock():
    fake = FakeClock()
    yield fake
    await fake.aclose()


@pytest.fixture
async def redis_proxy():
    proxy = TcpProxy()
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def engine_on(clock, redis_prefix, redis_proxy):
    engines = []

    def make(limits: dict, **state) -> tuple:
        config = {
            "providers": {"lim": scripted(limits=limits)},
            "models": {"default": {"targets": [{"provider": "lim", "model": "lim-1"}]}},
            "retry": {"max_attempts": 1},
            "state": state_section(redis_prefix, url=redis_proxy.url, **state),
        }
        engine, providers = make_engine(config, clock)
        engines.append(engine)
        return engine, providers["lim"]

    yield make
    for engine in engines:
        await engine.aclose()


def ask(text: str) -> ChatRequest:
    return ChatRequest.from_prompt(text)


async def headroom(engine) -> dict:
    return (await engine.list_providers())[0]["limits"]["headroom"]


async def burst(engine, n: int) -> tuple[int, list[BaseException]]:
    results = await asyncio.gather(*(engine.complete(ask(f"q{i}")) for i in range(n)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    return n - len(failures), failures


async def test_fail_open_falls_back_to_a_share_of_the_limit_mid_traffic_then_recovers(
    engine_on, redis_proxy, clock, caplog
):
    engine, provider = engine_on(
        {"requests_per_minute": 60, "max_wait": "0s"}, failure_mode="fail_open", expected_replicas=3, timeout="200ms"
    )
    assert await burst(engine, 10) == (10, [])
    assert (await headroom(engine))["requests_available"] == 50

    # Two calls are in flight when Redis dies: they finish normally (their release cannot reach Redis).
    gate, both_in = asyncio.Event(), asyncio.Event()
    entered = []
    original = provider.complete

    async def held(request, model):
        entered.append(request)
        if len(entered) == 2:
            both_in.set()
        await gate.wait()
        return await original(request, model)

    provider.complete = held
    in_flight = [asyncio.create_task(engine.complete(ask(f"held {i}"))) for i in range(2)]
    await both_in.wait()
    await redis_proxy.stop()
    gate.set()
    assert all(response.text for response in await asyncio.gather(*in_flight))
    provider.complete = original

    caplog.set_level(logging.WARNING, logger="proxy.policies.redis_state")
    started = time.perf_counter()
    admitted, refused = await burst(engine, 30)
    elapsed = time.perf_counter() - started
    assert admitted == 20  # the local bucket: 60 / 3 replicas
    assert all("requests/min (limit 20)" in str(error) for error in refused)
    assert elapsed < 0.2 + 0.5  # at most one operation waited (the one that found Redis gone)
    stats = engine.runtime.state_stats()
    assert stats["available"] is False and stats["outages"] == 1 and stats["fallbacks"]["ratelimit"] >= 30
    assert (await headroom(engine))["shared"] is False
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "fail" not in warnings[0].split(":")[0] and "redis://" not in warnings[0]

    await redis_proxy.start()
    clock.advance(1.0)  # the retry interval: the next operation probes Redis
    assert await burst(engine, 1) == (1, [])
    assert engine.runtime.state_stats()["available"] is True
    shared = await headroom(engine)
    assert shared["shared"] is True
    assert shared["requests_available"] == 60 - 10 - 2 - 1 + 1  # the shared bucket, refilled by 1 s


async def test_fail_closed_refuses_with_a_clear_error_while_redis_is_gone(engine_on, redis_proxy, clock):
    engine, provider = engine_on({"requests_per_minute": 60, "max_wait": "0s"}, failure_mode="fail_closed")
    assert await burst(engine, 2) == (2, [])
    await redis_proxy.stop()
    admitted, refused = await burst(engine, 5)
    assert admitted == 0 and len(provider.calls) == 2
    assert all(isinstance(error, AllTargetsFailed) and error.status_code == 429 for error in refused)
    assert "shared rate-limit state (Redis) is unavailable" in str(refused[0])
    assert "fail_closed" in str(refused[0])
    assert engine.runtime.state_stats()["refusals"] == 5
    await redis_proxy.start()
    clock.advance(1.0)
    assert await burst(engine, 1) == (1, [])


async def test_a_redis_that_stops_answering_costs_one_timeout_then_nothing(engine_on, redis_proxy):
    engine, _ = engine_on({"requests_per_minute": 60, "max_wait": "0s"}, timeout="50ms")
    assert await burst(engine, 1) == (1, [])
    await redis_proxy.blackhole()
    started = time.perf_counter()
    assert await burst(engine, 1) == (1, [])  # waited 50 ms for Redis, then used the local bucket
    first = time.perf_counter() - started
    started = time.perf_counter()
    assert await burst(engine, 20) == (20, [])
    rest = time.perf_counter() - started
    assert 0.05 <= first < 0.05 + 0.5
    assert rest < 0.25  # Redis is marked down: nobody waits for it (20 timeouts would take 1 s)
    assert engine.runtime.state_stats()["last_error"] == "TimeoutError"


# --- breakers ---------------------------------------------------------------------------------------------


async def test_a_breaker_opened_by_one_replica_is_adopted_by_the_others(clock, redis_prefix):
    config = {
        "providers": {"up": scripted(breaker={"failures": 2, "cooldown": "30s"}, script=["503", "503"])},
        "models": {"default": {"targets": [{"provider": "up", "model": "up-1"}]}},
        "retry": {"max_attempts": 1},
        "state": state_section(redis_prefix),
    }
    (first, _), (second, second_providers) = (make_engine(config, clock) for _ in range(2))
    for _ in range(2):
        with pytest.raises(AllTargetsFailed, match="503"):
            await first.complete(ask("fails"))
    assert first.runtime.provider_breaker_state("up")["state"] == "open"
    await first.runtime.state.drain()  # the fire-and-forget publication
    assert second.runtime.provider_breaker_state("up")["state"] == "closed"
    assert await sync_breakers(second.runtime.state) == 1  # what the background loop does every second
    assert second.runtime.provider_breaker_state("up")["state"] == "open"
    with pytest.raises(AllTargetsFailed, match="circuit breaker open"):
        await second.complete(ask("not sent"))
    assert second_providers["up"].calls == []
    # 30 s later: each replica's cooldown ended on its own clock, and the published state expired with it (its TTL
    # runs in Redis's real time, which this test does not wait for).
    clock.advance(30)
    client = aioredis.Redis.from_url(REDIS_URL)
    assert await client.delete(f"{redis_prefix}:v1:breaker:up/up-1") == 1
    await client.aclose()
    second_providers["up"].script = []  # the upstream is well again: the probe succeeds
    assert (await second.complete(ask("probe"))).text
    assert second.runtime.provider_breaker_state("up")["state"] == "closed"
    for engine in (first, second):
        await engine.aclose()


async def test_adopting_a_published_opening_never_cuts_a_probe_in_flight(redis_prefix):
    state = RedisState(StateConfig(backend="redis", url=Secret(REDIS_URL), key_prefix=redis_prefix))
    now = [0.0]
    breaker = SharedBreaker("p/m", state, clock=lambda: now[0], failures=1, cooldown=30.0)
    assert breaker.adopt(remaining=20.0)  # closed: opens, with the publisher's remaining cooldown
    assert breaker.state(0.0) is BreakerState.OPEN and breaker.snapshot(0.0).next_probe_at == 20.0
    assert not breaker.adopt(remaining=30.0)  # already open: unchanged
    now[0] = 20.0
    assert breaker.allow(20.0)  # half-open: this replica's probe goes out
    assert not breaker.adopt(remaining=30.0)  # another replica's verdict does not cancel it
    breaker.record_success(21.0)
    assert breaker.state(21.0) is BreakerState.CLOSED
    await state.drain()
    assert await state.client.exists(breaker.key) == 0  # adopting publishes nothing
    await state.aclose()
