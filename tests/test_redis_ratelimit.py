"""Rate limits shared through a real Redis (`state.backend: redis`): several engine instances (replicas) on one fake
clock, hammered concurrently, together stay within one limit; tokens/min reservations are corrected across
replicas; concurrency leases are released on success, failure and cancellation, and expire after a crash.

Each test uses its own key prefix (`redis_prefix`), deleted afterwards. The fake clock is the shared time base of
the Lua scripts (the runtime passes an injected clock through); in production they read Redis's TIME.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import load_config_text
from proxy.config.model import LimitsConfig, Secret, StateConfig
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed, RateLimited
from proxy.policies.ratelimit import Limiter, LimiterChain
from proxy.policies.redis_ratelimit import RedisLimiter, renew_leases
from proxy.policies.redis_state import RedisState
from proxy.runtime import Runtime
from proxy.types import ChatRequest
from tests.engine_helpers import T0, FakeClock, make_engine, scripted
from tests.redis_helpers import REDIS_URL, keys_under, needs_redis, redis_prefix, state_section

pytestmark = needs_redis
__all__ = ["redis_prefix"]  # the fixture, imported for the tests below


@pytest.fixture
async def clock():
    fake = FakeClock()
    yield fake
    await fake.aclose()


@pytest.fixture
async def replicas(clock, redis_prefix):
    """`make(config, n)`: n engines on one Redis prefix and one fake clock; closed afterwards."""
    engines: list[Engine] = []

    def make(config: dict, n: int = 3) -> list[tuple[Engine, dict]]:
        built = []
        for _ in range(n):
            # A generous timeout: these tests are about the scripts; a loaded machine must not make them fall back.
            engine, providers = make_engine({**config, "state": state_section(redis_prefix, timeout="2s")}, clock)
            engines.append(engine)
            built.append((engine, providers))
        return built

    yield make
    for engine in engines:
        await engine.aclose()


def one_model(provider: str = "lim") -> dict:
    return {"default": {"targets": [{"provider": provider, "model": f"{provider}-1"}]}}


def ask(text: str, **kwargs) -> ChatRequest:
    return ChatRequest.from_prompt(text, **kwargs)


async def hammer(engines: list[Engine], per_engine: int) -> list:
    calls = [engine.complete(ask(f"{index}-{n}")) for n in range(per_engine) for index, engine in enumerate(engines)]
    return await asyncio.gather(*calls, return_exceptions=True)


def admitted_times(built) -> list[float]:
    return sorted(t - T0 for _, providers in built for t in providers["lim"].times)


def assert_within_bucket_plus_rate(times: list[float], bucket: int, per_second: float) -> None:
    """Every prefix of the admissions fits the limit: by time t at most `bucket + per_second * t` calls."""
    for count, at in enumerate(times, start=1):
        assert count <= bucket + per_second * at + 1e-6, f"{count} calls admitted by t={at:.3f}s"


async def test_three_replicas_hammered_together_admit_at_most_the_bucket_plus_60_per_minute(replicas):
    config = {"providers": {"lim": scripted(limits={"requests_per_minute": 60, "max_wait": "30s"})}}
    built = replicas({**config, "models": one_model()})
    results = await hammer([engine for engine, _ in built], per_engine=70)
    times = admitted_times(built)
    assert_within_bucket_plus_rate(times, bucket=60, per_second=1.0)
    # Not vacuous: the burst and then about one a second for the 30 s of max_wait were used, by all three.
    assert times[:60] == [0.0] * 60
    assert len(times) >= 90 and times[-1] <= 31.0
    assert all(providers["lim"].calls for _, providers in built)
    assert all(engine.runtime.state_stats()["failures"] == 0 for engine, _ in built)  # no local fallback
    refused = [r for r in results if isinstance(r, AllTargetsFailed)]
    assert len(refused) == 210 - len(times)
    assert all("across replicas" in str(r) and r.status_code == 429 for r in refused)


async def test_the_same_hammer_on_memory_state_lets_each_replica_send_the_full_rate(clock):
    # The bug this feature fixes: three processes with their own buckets send three times the limit.
    config = {"providers": {"lim": scripted(limits={"requests_per_minute": 60, "max_wait": "0s"})}}
    built = [make_engine({**config, "models": one_model()}, clock) for _ in range(3)]
    await hammer([engine for engine, _ in built], per_engine=70)
    assert len(admitted_times(built)) == 180
    for engine, _ in built:
        await engine.aclose()


async def test_a_tokens_per_minute_reservation_is_corrected_by_usage_for_every_replica(replicas, redis_prefix):
    limits = {"tokens_per_minute": 6000, "max_wait": "0s"}
    (first, _), (second, _) = replicas({"providers": {"lim": scripted(limits=limits, usage=[10, 5])}, **models()}, 2)
    await first.complete(ask("a first large request", max_tokens=4000))
    entry = next(p for p in await second.list_providers() if p["name"] == "lim")
    assert entry["limits"]["headroom"]["tokens_available"] == 6000 - 15
    assert entry["limits"]["headroom"]["shared"] is True
    # The shared bucket is charged by the estimate up front: a second replica cannot slip past it.
    with pytest.raises(AllTargetsFailed, match="tokens/min"):
        await second.complete(ask("too big for what is left", max_tokens=6000 - 15))
    assert await keys_under(redis_prefix) == [f"{redis_prefix}:v1:rl:lim:tok"]


def models() -> dict:
    return {"models": one_model()}


# --- concurrency leases ---------------------------------------------------------------------------------


async def in_flight(engine: Engine) -> int:
    entry = next(p for p in await engine.list_providers() if p["name"] == "lim")
    return entry["limits"]["headroom"]["in_flight"]


async def test_leases_are_released_on_success_and_on_failure(replicas):
    limits = {"concurrency": 1, "max_wait": "0s"}
    config = {"providers": {"lim": scripted(limits=limits, script=["ok", "503"])}, **models()}
    (first, providers), (second, _) = replicas({**config, "retry": {"max_attempts": 1}}, 2)
    await first.complete(ask("succeeds"))
    assert await in_flight(second) == 0
    with pytest.raises(AllTargetsFailed, match="503"):
        await first.complete(ask("fails"))
    assert await in_flight(second) == 0
    await second.complete(ask("a slot is free"))
    assert len(providers["lim"].calls) == 2


class _Gate:
    """A provider method that blocks until the test opens it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()


async def test_a_cancelled_request_gives_its_slot_back_and_a_full_slot_set_refuses(replicas):
    limits = {"concurrency": 1, "max_wait": "0s"}
    (first, providers), (second, _) = replicas({"providers": {"lim": scripted(limits=limits)}, **models()}, 2)
    gate = _Gate()
    original = providers["lim"].complete

    async def blocked(request, model):
        gate.entered.set()
        await gate.open.wait()
        return await original(request, model)

    providers["lim"].complete = blocked
    task = asyncio.create_task(first.complete(ask("held")))
    await gate.entered.wait()
    assert await in_flight(second) == 1
    with pytest.raises(AllTargetsFailed, match="concurrency exhausted"):
        await second.complete(ask("no slot left across replicas"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.runtime.state.drain()
    assert await in_flight(second) == 0
    providers["lim"].complete = original
    await second.complete(ask("the slot came back"))


async def test_a_crashed_replicas_slots_expire_after_the_lease_ttl_unless_renewed(clock, redis_prefix):
    config = StateConfig(backend="redis", url=Secret(REDIS_URL), key_prefix=redis_prefix)
    limits = LimitsConfig(concurrency=1, max_wait=0.0)
    crashed, survivor = RedisState(config), RedisState(config)
    holder = RedisLimiter("p", limits, crashed, clock=clock.now, lease_ttl=10.0)
    other = RedisLimiter("p", limits, survivor, clock=clock.now, lease_ttl=10.0)
    await holder.acquire(0)
    clock.advance(8)
    await renew_leases(crashed)  # the keep-alive of a live replica: 10 s more from t=8
    clock.advance(8)
    with pytest.raises(RateLimited, match="concurrency exhausted"):
        await other.acquire(0)
    await crashed.aclose()  # the replica dies holding its slot: no release, no more renewals
    clock.advance(2.5)
    lease = await other.acquire(0)  # t=18.5, past the renewed expiry at 18
    await lease.release()
    await survivor.aclose()


async def test_a_slot_freed_by_another_replica_is_found_by_polling_within_max_wait(clock, redis_prefix):
    config = StateConfig(backend="redis", url=Secret(REDIS_URL), key_prefix=redis_prefix)
    limits = LimitsConfig(concurrency=1, max_wait=5.0)
    here, there = RedisState(config), RedisState(config)
    holder = RedisLimiter("p", limits, there, clock=clock.now, sleep=clock.sleep)
    waiter = RedisLimiter("p", limits, here, clock=clock.now, sleep=clock.sleep)
    held = await holder.acquire(0)

    async def release_later() -> None:
        await clock.sleep(0.3)
        await held.release()

    releasing = asyncio.create_task(release_later())
    lease = await waiter.acquire(0)
    await releasing
    assert 0.3 - 1e-9 <= lease.waited <= 0.4 + 1e-9  # found by the next poll (they back off to 100 ms at most)
    await lease.release()
    await here.aclose()
    await there.aclose()


# --- wiring -------------------------------------------------------------------------------------------------

CONFIG = """
version: 1
providers:
  shared: {type: mock, limits: {requests_per_minute: 10}}
  local: {type: mock, limits: {requests_per_minute: 10, per_worker: true}}
  free: {type: mock}
models:
  default:
    targets:
      - {provider: shared, model: m, limits: {concurrency: 2}}
      - {provider: local, model: m}
      - {provider: free, model: m}
state: {backend: redis, url: URL, key_prefix: PREFIX}
"""


def config(prefix: str, free: str = "free: {type: mock}"):
    text = CONFIG.replace("URL", REDIS_URL).replace("PREFIX", prefix).replace("free: {type: mock}", free)
    return load_config_text(text)


async def test_redis_limiters_for_shared_limits_memory_for_per_worker_ones(redis_prefix):
    runtime = Runtime.build(config(redis_prefix))
    assert isinstance(runtime.limiters["shared"], RedisLimiter)
    assert isinstance(runtime.limiters["local"], Limiter)
    chain: LimiterChain = runtime.plans["default"].targets[0].limiter
    assert [type(limiter) for limiter in chain.limiters] == [RedisLimiter, RedisLimiter]
    assert chain.limiters[1].scope == "default:shared/m"
    assert runtime.limiters["shared"]._shared_clock is None  # production: Redis's TIME is the time base
    assert runtime.limiters["shared"].fallback.config.requests_per_minute == 10  # expected_replicas 1
    await runtime.aclose()


async def test_a_reload_with_the_same_state_keeps_the_connection_and_the_limiters(redis_prefix):
    first = Runtime.build(config(redis_prefix))
    second = Runtime.build(config(redis_prefix, free="free: {type: mock, description: x}"), previous=first)
    assert second.state is first.state
    assert second.limiters["shared"] is first.limiters["shared"]
    assert second.breakers["shared/m"] is first.breakers["shared/m"]
    await first.aclose()  # it handed the state on: the state must stay open
    assert await second.state.ping()
    third = Runtime.build(config(f"{redis_prefix}-2"), previous=second)
    assert third.state is not second.state
    assert third.limiters["shared"] is not second.limiters["shared"]
    assert third.limiters["shared"]._keys[0] == f"{redis_prefix}-2:v1:rl:shared:req"
    await second.aclose()
    await third.aclose()
