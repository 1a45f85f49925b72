"""Rate limits for one scope (a provider, or a provider + model target): requests/min, tokens/min, concurrency.

    limiter = Limiter.from_config(provider.limits, scope="openai")     # NoLimiter if nothing is limited
    lease = await limiter.acquire(estimated_tokens)                    # waits up to max_wait, else RateLimited
    async with lease:                                                  # released on success, error, cancellation
        response = await provider.complete(request)
        await lease.release(response.usage.total_tokens if response.usage else None)

How a request is admitted (`Limiter.acquire`):
1. Rate buckets (`proxy.policies.bucket`): one request from the requests/min bucket and the token estimate (prompt
   + max_tokens, see `proxy.tokens`) from the tokens/min bucket. The wait is computed at once; if it is longer
   than `max_wait` the request is refused straight away (`RateLimited`, `retry_after` = that wait). Otherwise the
   tokens are reserved now (the buckets may go into debt) and the request sleeps the computed time. Reserving at
   arrival makes waiting first come, first served without a lock: later requests see the debt and queue behind,
   so a large request is not starved by a stream of small ones.
2. Concurrency: a FIFO semaphore; a freed slot is handed to the longest waiter. Waiting is bounded by what is
   left of `max_wait`. A timeout refunds the reservation and raises `RateLimited` with a nominal `retry_after`
   (`CONCURRENCY_RETRY_AFTER`), since nobody knows when an in-flight call will finish.
Cancellation while waiting refunds the reservation and frees any slot, then re-raises.

A `Lease` is released exactly once (later calls do nothing): `release(actual_tokens)` frees the concurrency slot
and corrects the tokens/min charge by `actual - estimate` (both directions; `None` keeps the estimate);
`abandon()` refunds everything, for a request that was never sent (e.g. a later limiter in a chain refused).

The interface is async so that a shared backend (Redis, atomic Lua scripts) can implement `RateLimiter` and
`Lease` with the same semantics; this module is the in-memory backend. `LimitsConfig.per_worker` does not change
the in-memory behaviour (each process has its own buckets anyway); it is a config-level acknowledgement.
Time comes from an injected `clock` and waiting from an injected `sleep`, so tests run on a virtual clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from proxy.config.model import LimitsConfig
from proxy.errors import RateLimited
from proxy.policies.bucket import TokenBucket

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# `retry_after` (seconds) reported when the concurrency limit, not a rate, refused the request.
CONCURRENCY_RETRY_AFTER = 1.0


class Lease:
    """Admission to make one call. Release it exactly once; extra calls are ignored. An async context manager
    whose exit calls `release()` (keeping the estimate) unless the block already released or abandoned it."""

    __slots__ = ("_done", "estimated_tokens", "waited")

    def __init__(self, estimated_tokens: int, waited: float) -> None:
        self.estimated_tokens = estimated_tokens
        self.waited = waited  # seconds spent waiting for admission
        self._done = False

    @property
    def released(self) -> bool:
        return self._done

    async def release(self, actual_tokens: int | None = None) -> None:
        """Free the slot; correct the token charge to `actual_tokens` (prompt + completion) when known."""
        if not self._done:
            self._done = True
            await self._settle(actual_tokens, abandoned=False)

    async def abandon(self) -> None:
        """Free the slot and refund the request and its tokens: the call was never made."""
        if not self._done:
            self._done = True
            await self._settle(None, abandoned=True)

    async def _settle(self, actual_tokens: int | None, *, abandoned: bool) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class _NoLease(Lease):
    """The lease of a scope without limits: stateless, so one instance serves every request."""

    __slots__ = ()

    async def release(self, actual_tokens: int | None = None) -> None:
        return None

    async def abandon(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


NO_LEASE: Lease = _NoLease(0, 0.0)


class RateLimiter(Protocol):
    """What the engine needs from a limiter, whatever stores its state (memory here, Redis later)."""

    scope: str
    config: LimitsConfig
    max_wait: float

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> Lease: ...

    async def headroom(self) -> dict[str, Any]: ...


class NoLimiter:
    """A scope without limits: admits at once and keeps no state."""

    __slots__ = ("config", "max_wait", "scope")

    def __init__(self, scope: str, config: LimitsConfig | None = None) -> None:
        self.scope = scope
        self.config = config or LimitsConfig()
        self.max_wait = 0.0

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> Lease:
        return NO_LEASE

    async def headroom(self) -> dict[str, Any]:
        return {"limited": False}


class _Slots:
    """A FIFO semaphore whose waits are timed by an injected `sleep`."""

    __slots__ = ("_sleep", "_waiters", "in_use", "limit")

    def __init__(self, limit: int, sleep: Sleep) -> None:
        self.limit = limit
        self._sleep = sleep
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, within: float) -> bool:
        """Take a slot within `within` seconds; False if none freed. Cancellation leaves no slot taken."""
        if self.try_acquire():
            return True
        if within <= 0:
            return False
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        timer = asyncio.ensure_future(self._sleep(within))
        try:
            await asyncio.wait((granted, timer), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            timer.cancel()
            if granted.done():
                self.release()  # handed a slot just as we were cancelled: pass it on
            else:
                self._forget(granted)
            raise
        timer.cancel()
        if granted.done():
            return True
        self._forget(granted)
        return False

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        self._waiters.remove(waiter)

    def release(self) -> None:
        """Free a slot, handing it straight to the longest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_use -= 1


class _MemoryLease(Lease):
    __slots__ = ("_limiter", "_slot")

    def __init__(self, limiter: Limiter, estimated_tokens: int, waited: float, slot: bool) -> None:
        super().__init__(estimated_tokens, waited)
        self._limiter = limiter
        self._slot = slot

    async def _settle(self, actual_tokens: int | None, *, abandoned: bool) -> None:
        self._limiter._settle(self.estimated_tokens, actual_tokens, abandoned=abandoned, slot=self._slot)


class Limiter:
    """In-memory limits for one scope. Build with `Limiter.from_config`; see the module docstring."""

    def __init__(
        self,
        scope: str,
        config: LimitsConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.scope = scope
        self.config = config
        self.max_wait = config.max_wait
        self._clock = clock
        self._sleep = sleep
        now = clock()
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self._requests = TokenBucket.per_minute(rpm, now) if rpm else None
        self._tokens = TokenBucket.per_minute(tpm, now) if tpm else None
        self._slots = _Slots(config.concurrency, sleep) if config.concurrency else None
        self._rate_waiting = 0

    @classmethod
    def from_config(
        cls,
        config: LimitsConfig | None,
        scope: str,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> Limiter | NoLimiter:
        """The limiter for `scope`; a `NoLimiter` (nearly free) when `config` limits nothing."""
        if config is None or not config.any:
            return NoLimiter(scope, config)
        return cls(scope, config, clock=clock, sleep=sleep)

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> Lease:
        """Admit one call charging `tokens` (the estimate), waiting up to `max_wait` (default: the config's)."""
        budget = max(0.0, self.max_wait if max_wait is None else max_wait)
        tokens = max(0, tokens)
        start = self._clock()
        wait = self._reserve(tokens, start, budget)
        admitted = False
        try:
            if wait > 0:
                self._rate_waiting += 1
                try:
                    await self._sleep(wait)
                finally:
                    self._rate_waiting -= 1
            slot = False
            if self._slots is not None:
                remaining = start + budget - self._clock()
                if not await self._slots.acquire(remaining):
                    raise RateLimited(
                        f"rate limit of `{self.scope}`: concurrency exhausted (limit {self._slots.limit} in flight); "
                        f"no slot freed within max_wait {budget:g}s",
                        retry_after=CONCURRENCY_RETRY_AFTER,
                    )
                slot = True
            admitted = True
        finally:
            if not admitted:
                self._refund(tokens)
        return _MemoryLease(self, tokens, self._clock() - start, slot)

    def _reserve(self, tokens: int, now: float, budget: float) -> float:
        """Charge both rate buckets and return the seconds to wait, or raise if that exceeds `budget`."""
        request_wait = self._requests.wait_time(1, now) if self._requests is not None else 0.0
        token_wait = self._tokens.wait_time(tokens, now) if self._tokens is not None else 0.0
        wait = max(request_wait, token_wait)
        if wait > budget:
            exhausted = []
            if request_wait > budget:
                exhausted.append(f"requests/min (limit {self.config.requests_per_minute:g})")
            if token_wait > budget:
                exhausted.append(f"tokens/min (limit {self.config.tokens_per_minute:g}, this request ~{tokens})")
            raise RateLimited(
                f"rate limit of `{self.scope}`: {' and '.join(exhausted)} exhausted; "
                f"admission possible in {wait:.2f}s, more than max_wait {budget:g}s",
                retry_after=wait,
            )
        if self._requests is not None:
            self._requests.take(1, now)
        if self._tokens is not None:
            self._tokens.take(tokens, now)
        return wait

    def _refund(self, tokens: int) -> None:
        now = self._clock()
        if self._requests is not None:
            self._requests.give_back(1, now)
        if self._tokens is not None:
            self._tokens.give_back(tokens, now)

    def _settle(self, estimated: int, actual: int | None, *, abandoned: bool, slot: bool) -> None:
        if abandoned:
            self._refund(estimated)
        elif actual is not None and self._tokens is not None:
            self._tokens.adjust(actual - estimated, self._clock())
        if slot and self._slots is not None:
            self._slots.release()

    async def headroom(self) -> dict[str, Any]:
        """What is available now, for `list_providers`. `None` marks a limit that is not configured."""
        now = self._clock()

        def available(bucket: TokenBucket | None) -> int | None:
            return None if bucket is None else max(0, math.floor(bucket.available(now)))

        slots = self._slots
        return {
            "limited": True,
            "requests_per_minute": self.config.requests_per_minute,
            "requests_available": available(self._requests),
            "tokens_per_minute": self.config.tokens_per_minute,
            "tokens_available": available(self._tokens),
            "concurrency": self.config.concurrency,
            "in_flight": None if slots is None else slots.in_use,
            "waiting": self._rate_waiting + (slots.waiting if slots else 0),
        }


class _ChainLease(Lease):
    __slots__ = ("_leases",)

    def __init__(self, leases: Sequence[Lease], estimated_tokens: int, waited: float) -> None:
        super().__init__(estimated_tokens, waited)
        self._leases = tuple(leases)

    async def _settle(self, actual_tokens: int | None, *, abandoned: bool) -> None:
        for lease in reversed(self._leases):
            if abandoned:
                await lease.abandon()
            else:
                await lease.release(actual_tokens)


class LimiterChain:
    """Several limiters that must all admit a call (a provider's and its target's), in a fixed order.

    The wait budget is shared: each limiter gets what the earlier ones left of it (default: the smallest
    `max_wait` of the limiters). If one refuses, the leases
    already taken are abandoned (refunded) before `RateLimited` propagates. Scopes without limits are skipped.
    """

    __slots__ = ("limiters", "max_wait")

    def __init__(self, limiters: Sequence[RateLimiter]) -> None:
        self.limiters = tuple(limiter for limiter in limiters if not isinstance(limiter, NoLimiter))
        self.max_wait = min((limiter.max_wait for limiter in self.limiters), default=0.0)

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> Lease:
        """One lease over every limiter; its release releases them all (in reverse order)."""
        if not self.limiters:
            return NO_LEASE
        if len(self.limiters) == 1:
            return await self.limiters[0].acquire(tokens, max_wait=max_wait)
        remaining = self.max_wait if max_wait is None else max_wait
        leases: list[Lease] = []
        admitted = False
        try:
            for limiter in self.limiters:
                lease = await limiter.acquire(tokens, max_wait=max(0.0, remaining))
                leases.append(lease)
                remaining -= lease.waited
            admitted = True
        finally:
            if not admitted:
                for lease in reversed(leases):
                    await lease.abandon()
        return _ChainLease(leases, tokens, sum(lease.waited for lease in leases))

    async def headroom(self) -> list[dict[str, Any]]:
        return [{"scope": limiter.scope, **await limiter.headroom()} for limiter in self.limiters]
