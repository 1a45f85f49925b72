"""Rate limits on a virtual clock: bucket arithmetic, waiting, refusals, concurrency, leases, chains."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

import pytest

from proxy.config.model import LimitsConfig
from proxy.errors import RateLimited
from proxy.policies.bucket import TokenBucket
from proxy.policies.ratelimit import (
    CONCURRENCY_RETRY_AFTER,
    NO_LEASE,
    Limiter,
    LimiterChain,
    NoLimiter,
)

T0 = 1000.0
SETTLE_ROUNDS = 10


class VirtualClock:
    """A clock plus a `sleep` that never really sleeps: once every task is waiting, time jumps to the next timer."""

    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _drive(self) -> None:
        while True:
            for _ in range(SETTLE_ROUNDS * 10):  # let every runnable task reach its next wait
                await asyncio.sleep(0)
            while self._timers and self._timers[0][2].done():  # cancelled sleeps
                heapq.heappop(self._timers)
            if not self._timers:
                return
            when, _, wake = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            wake.set_result(None)

    async def close(self) -> None:
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)


@pytest.fixture
async def clock():
    virtual = VirtualClock()
    yield virtual
    await virtual.close()


def make(clock: VirtualClock, scope: str = "openai", **limits: object) -> Limiter:
    limiter = Limiter.from_config(LimitsConfig(**limits), scope, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert isinstance(limiter, Limiter)
    return limiter


async def settle() -> None:
    """Let new tasks reach their waits, well before the virtual clock's driver would jump."""
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)


# --- TokenBucket arithmetic -------------------------------------------------------------------------------


def test_bucket_admits_its_capacity_then_one_per_refill_interval():
    bucket = TokenBucket.per_minute(60, T0)
    assert [bucket.try_take(1, T0) for _ in range(60)] == [0.0] * 60
    assert bucket.try_take(1, T0) == pytest.approx(1.0)
    assert bucket.try_take(1, T0 + 0.5) == pytest.approx(0.5)
    assert bucket.try_take(1, T0 + 1.0) == 0.0
    assert bucket.try_take(1, T0 + 1.0) == pytest.approx(1.0)


def test_bucket_refusal_takes_nothing_and_refill_stops_at_capacity():
    bucket = TokenBucket(10, 1.0, T0)
    assert bucket.try_take(8, T0) == 0.0
    assert bucket.try_take(5, T0) == pytest.approx(3.0)
    assert bucket.available(T0) == pytest.approx(2.0)
    assert bucket.available(T0 + 3600) == 10.0
    assert bucket.available(T0 - 5) == 10.0  # a clock going back adds nothing


def test_oversized_request_is_admitted_when_full_and_leaves_bounded_debt():
    bucket = TokenBucket(100, 10.0, T0)
    bucket.take(50, T0)
    assert bucket.try_take(1_000, T0) == pytest.approx(5.0)  # waits until full, not forever
    assert bucket.try_take(1_000, T0 + 5) == 0.0
    assert bucket.available(T0 + 5) == pytest.approx(-100.0)  # charge capped at 2x capacity
    assert bucket.wait_time(1, T0 + 5) == pytest.approx(10.1)


def test_adjust_charges_or_refunds_and_caps_debt_at_one_capacity():
    bucket = TokenBucket(100, 1.0, T0)
    bucket.take(60, T0)
    bucket.adjust(-30, T0)  # overestimated by 30
    assert bucket.available(T0) == pytest.approx(70.0)
    bucket.adjust(50, T0)  # underestimated by 50
    assert bucket.available(T0) == pytest.approx(20.0)
    bucket.adjust(1_000, T0)
    assert bucket.available(T0) == pytest.approx(-100.0)
    bucket.give_back(1_000, T0)
    assert bucket.available(T0) == 100.0


def test_bucket_rejects_non_positive_parameters():
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0, T0)
    with pytest.raises(ValueError):
        TokenBucket(10, 0.0, T0)


# --- requests/min -----------------------------------------------------------------------------------------


async def test_60_rpm_admits_a_burst_of_60_then_one_per_second(clock):
    limiter = make(clock, requests_per_minute=60, max_wait=5)
    started = time.perf_counter()
    admitted = []
    for _ in range(64):
        await limiter.acquire(1)
        admitted.append(clock.now - T0)
    assert admitted[:60] == [0.0] * 60
    assert admitted[60:] == pytest.approx([1.0, 2.0, 3.0, 4.0], abs=1e-6)
    assert time.perf_counter() - started < 1.0  # virtual time only


async def test_concurrent_waiters_are_spaced_and_admitted_in_arrival_order(clock):
    limiter = make(clock, requests_per_minute=60, max_wait=10)
    for _ in range(60):
        await limiter.acquire(1)
    admitted: list[tuple[int, float]] = []

    async def request(index: int) -> None:
        await limiter.acquire(1)
        admitted.append((index, clock.now - T0))

    await asyncio.gather(*(request(i) for i in range(5)))
    assert [index for index, _ in admitted] == [0, 1, 2, 3, 4]
    assert [at for _, at in admitted] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0], abs=1e-6)


async def test_wait_longer_than_max_wait_is_refused_at_once_with_retry_after(clock):
    limiter = make(clock, scope="openai/gpt-4o", requests_per_minute=60, max_wait=0.5)
    for _ in range(60):
        await limiter.acquire(1)
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire(1)
    assert refused.value.retry_after == pytest.approx(1.0)
    assert "openai/gpt-4o" in refused.value.message and "requests/min" in refused.value.message
    assert "tokens/min" not in refused.value.message
    assert clock.now == T0 and clock.sleeps == []  # refused without waiting
    with pytest.raises(RateLimited):
        await limiter.acquire(1, max_wait=-1)  # a negative bound means "do not wait"
    # nothing was reserved by the refusal: the next slot is still 1 s away
    lease = await limiter.acquire(1, max_wait=1.0)
    assert clock.now - T0 == pytest.approx(1.0)
    assert lease.waited == pytest.approx(1.0)


# --- tokens/min -------------------------------------------------------------------------------------------


async def test_token_estimate_is_charged_then_refunded_by_lower_actual_usage(clock):
    limiter = make(clock, tokens_per_minute=1_000)
    lease = await limiter.acquire(600)
    assert (await limiter.headroom())["tokens_available"] == 400
    await lease.release(actual_tokens=100)
    assert (await limiter.headroom())["tokens_available"] == 900
    await lease.release(actual_tokens=0)  # a second release changes nothing
    assert (await limiter.headroom())["tokens_available"] == 900


async def test_token_estimate_is_topped_up_by_higher_actual_usage(clock):
    limiter = make(clock, tokens_per_minute=1_000, max_wait=0)
    lease = await limiter.acquire(600)
    await lease.release(actual_tokens=900)
    assert (await limiter.headroom())["tokens_available"] == 100
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire(400)
    assert "tokens/min" in refused.value.message
    assert refused.value.retry_after == pytest.approx(300 / (1_000 / 60))


async def test_negative_max_wait_still_admits_when_tokens_are_there(clock):
    limiter = make(clock, requests_per_minute=60)
    await limiter.acquire(1, max_wait=-1)
    assert (await limiter.headroom())["requests_available"] == 59


async def test_release_without_usage_keeps_the_estimate(clock):
    limiter = make(clock, tokens_per_minute=1_000)
    lease = await limiter.acquire(600)
    await lease.release()
    assert (await limiter.headroom())["tokens_available"] == 400


async def test_debt_from_real_usage_delays_the_next_request(clock):
    limiter = make(clock, tokens_per_minute=600, max_wait=120)  # 10 tokens/s
    lease = await limiter.acquire(100)
    await lease.release(actual_tokens=5_000)  # far more than estimated: debt capped at one capacity
    await limiter.acquire(100)
    assert clock.now - T0 == pytest.approx((600 + 100) / 10)


async def test_rpm_and_tpm_together_wait_for_the_slower_one(clock):
    limiter = make(clock, requests_per_minute=600, tokens_per_minute=600, max_wait=30)
    await limiter.acquire(600)
    await limiter.acquire(60)  # requests are plentiful; tokens need 60 / 10 per s
    assert clock.now - T0 == pytest.approx(6.0)


# --- concurrency ------------------------------------------------------------------------------------------


async def test_concurrency_wait_times_out_with_retry_after_and_refunds_the_rate_charge(clock):
    limiter = make(clock, requests_per_minute=10, concurrency=1, max_wait=2)
    held = await limiter.acquire(1)
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire(1)
    assert clock.now - T0 == pytest.approx(2.0)  # waited the whole max_wait
    assert refused.value.retry_after == CONCURRENCY_RETRY_AFTER
    assert "concurrency" in refused.value.message and "openai" in refused.value.message
    headroom = await limiter.headroom()
    assert headroom["in_flight"] == 1 and headroom["waiting"] == 0
    assert headroom["requests_available"] == 9  # the refused request's reservation came back
    await held.release()
    assert (await limiter.headroom())["in_flight"] == 0


async def test_concurrency_wait_within_max_wait_succeeds(clock):
    limiter = make(clock, concurrency=1, max_wait=2)
    held = await limiter.acquire(1)

    async def finish_later() -> None:
        await clock.sleep(0.5)
        await held.release()

    finisher = asyncio.create_task(finish_later())
    lease = await limiter.acquire(1)
    await finisher
    assert clock.now - T0 == pytest.approx(0.5)
    assert lease.waited == pytest.approx(0.5)
    assert (await limiter.headroom())["in_flight"] == 1
    await lease.release()
    assert (await limiter.headroom())["in_flight"] == 0


async def test_a_freed_slot_goes_to_the_longest_waiter(clock):
    limiter = make(clock, concurrency=1, max_wait=10)
    held = await limiter.acquire(1)
    order: list[str] = []

    async def request(name: str) -> None:
        lease = await limiter.acquire(1)
        order.append(name)
        await clock.sleep(1)
        await lease.release()

    tasks = [asyncio.create_task(request(name)) for name in ("first", "second", "third")]
    await settle()
    assert (await limiter.headroom())["waiting"] == 3
    await held.release()
    # a newcomer arriving now must not overtake the queue
    late = asyncio.create_task(request("late"))
    await asyncio.gather(*tasks, late)
    assert order == ["first", "second", "third", "late"]


# --- leases: exceptions, cancellation, idempotence ----------------------------------------------------


async def test_lease_is_released_when_the_call_raises(clock):
    limiter = make(clock, concurrency=2, tokens_per_minute=1_000)
    with pytest.raises(ValueError):
        async with await limiter.acquire(300) as lease:
            assert (await limiter.headroom())["in_flight"] == 1
            raise ValueError("upstream broke")
    assert lease.released
    headroom = await limiter.headroom()
    assert headroom["in_flight"] == 0
    assert headroom["tokens_available"] == 700  # the estimate stays charged: usage unknown
    await lease.release(actual_tokens=0)  # after the context exit: ignored
    assert (await limiter.headroom())["tokens_available"] == 700


async def test_lease_is_released_when_the_call_is_cancelled(clock):
    limiter = make(clock, concurrency=1)
    entered = asyncio.Event()

    async def call() -> None:
        async with await limiter.acquire(1):
            entered.set()
            await clock.sleep(60)

    task = asyncio.create_task(call())
    await entered.wait()
    assert (await limiter.headroom())["in_flight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await limiter.headroom())["in_flight"] == 0


async def test_cancelled_while_waiting_for_a_slot_leaves_no_trace(clock):
    limiter = make(clock, requests_per_minute=60, concurrency=1, max_wait=10)
    held = await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert (await limiter.headroom())["waiting"] == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    headroom = await limiter.headroom()
    assert headroom["waiting"] == 0 and headroom["in_flight"] == 1
    assert headroom["requests_available"] == 59  # only the holder's request is charged
    await held.release()
    assert (await limiter.headroom())["in_flight"] == 0


async def test_cancelled_just_after_being_handed_a_slot_passes_it_on(clock):
    limiter = make(clock, concurrency=1, max_wait=10)
    held = await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    await held.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await limiter.headroom())["in_flight"] == 0
    lease = await limiter.acquire(1, max_wait=0)
    await lease.release()


async def test_cancelled_while_waiting_for_the_rate_refunds_the_reservation(clock):
    limiter = make(clock, requests_per_minute=60, max_wait=10)
    for _ in range(60):
        await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert (await limiter.headroom())["waiting"] == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await limiter.headroom())["waiting"] == 0
    await limiter.acquire(1)
    assert clock.now - T0 == pytest.approx(1.0)  # not 2: the cancelled reservation was given back


async def test_abandon_refunds_request_and_tokens_once(clock):
    limiter = make(clock, requests_per_minute=10, tokens_per_minute=1_000, concurrency=3)
    lease = await limiter.acquire(500)
    await lease.abandon()
    await lease.abandon()
    await lease.release(actual_tokens=999)
    headroom = await limiter.headroom()
    assert (headroom["requests_available"], headroom["tokens_available"], headroom["in_flight"]) == (10, 1_000, 0)


# --- no limits, headroom ----------------------------------------------------------------------------------


async def test_config_without_limits_gives_a_stateless_no_op_limiter(clock):
    for config in (LimitsConfig(), LimitsConfig(max_wait=9), None):
        limiter = Limiter.from_config(config, "ollama", clock=clock, sleep=clock.sleep)
        assert isinstance(limiter, NoLimiter)
        assert limiter.scope == "ollama"
    lease = await limiter.acquire(10**9, max_wait=0)
    assert lease is NO_LEASE
    async with lease:
        pass
    await lease.release(5)
    await lease.abandon()
    assert await limiter.headroom() == {"limited": False}
    assert clock.sleeps == []


async def test_headroom_reports_configured_limits_and_usage(clock):
    limiter = make(clock, requests_per_minute=100, tokens_per_minute=10_000, concurrency=4)
    await limiter.acquire(2_500)
    second = await limiter.acquire(500)
    assert await limiter.headroom() == {
        "limited": True,
        "requests_per_minute": 100,
        "requests_available": 98,
        "tokens_per_minute": 10_000,
        "tokens_available": 7_000,
        "concurrency": 4,
        "in_flight": 2,
        "waiting": 0,
    }
    await second.release(actual_tokens=200)
    clock.now += 6  # 10 requests and 1,000 tokens refill
    headroom = await limiter.headroom()
    assert (headroom["requests_available"], headroom["tokens_available"], headroom["in_flight"]) == (100, 8_300, 1)


async def test_headroom_marks_unconfigured_limits_as_none(clock):
    headroom = await make(clock, concurrency=2).headroom()
    assert headroom["requests_available"] is None and headroom["tokens_available"] is None
    assert headroom["in_flight"] == 0


# --- chains -----------------------------------------------------------------------------------------------


async def test_chain_acquires_and_releases_both_scopes(clock):
    provider = make(clock, scope="openai", concurrency=5, tokens_per_minute=10_000)
    target = make(clock, scope="openai/gpt-4o", concurrency=1, tokens_per_minute=2_000)
    chain = LimiterChain([provider, NoLimiter("ignored"), target])
    assert chain.limiters == (provider, target)
    lease = await chain.acquire(1_000)
    assert (await provider.headroom())["in_flight"] == 1 and (await target.headroom())["in_flight"] == 1
    await lease.release(actual_tokens=400)
    await lease.release(actual_tokens=10)
    assert (await provider.headroom())["tokens_available"] == 9_600
    assert (await target.headroom())["tokens_available"] == 1_600
    assert (await provider.headroom())["in_flight"] == 0 and (await target.headroom())["in_flight"] == 0


async def test_chain_refused_by_the_target_gives_back_the_provider_lease(clock):
    provider = make(clock, scope="openai", requests_per_minute=100, max_wait=0)
    target = make(clock, scope="openai/gpt-4o", requests_per_minute=1, max_wait=0)
    chain = LimiterChain([provider, target])
    await chain.acquire(1)
    with pytest.raises(RateLimited) as refused:
        await chain.acquire(1)
    assert "openai/gpt-4o" in refused.value.message
    assert refused.value.retry_after == pytest.approx(60.0)
    assert (await provider.headroom())["requests_available"] == 99


async def test_chain_shares_one_wait_budget(clock):
    provider = make(clock, scope="openai", requests_per_minute=60, max_wait=1.5)
    target = make(clock, scope="openai/gpt-4o", concurrency=1, max_wait=5)
    chain = LimiterChain([provider, target])
    assert chain.max_wait == 1.5
    for _ in range(59):
        await provider.acquire(1)
    held = await chain.acquire(1)  # the provider's last burst token
    with pytest.raises(RateLimited) as refused:
        await chain.acquire(1)  # waits 1 s for the provider, then only 0.5 s for the target's slot
    assert "concurrency" in refused.value.message
    assert clock.now - T0 == pytest.approx(1.5)
    # the refused request's reservation was given back: 1.5 s of refill on an empty bucket leaves 1.5
    assert (await provider.headroom())["requests_available"] == 1
    await held.release()


async def test_chain_of_no_limiters_is_free(clock):
    chain = LimiterChain([NoLimiter("a"), NoLimiter("b")])
    assert await chain.acquire(10) is NO_LEASE
    assert await chain.headroom() == []
