"""Rate limits shared by every replica through Redis: the `RateLimiter` of `proxy.policies.ratelimit`, with the
same semantics, its state kept in atomic Lua scripts so N replicas together never exceed a configured rate.

    limiter = RedisLimiter("openai", provider.limits, state)        # state: proxy.policies.redis_state.RedisState
    lease = await limiter.acquire(estimated_tokens)                  # as Limiter.acquire
    await lease.release(actual_tokens)

Keys (`{key_prefix}:v1:rl:<scope>:...`): `req` and `tok` are token buckets (a hash of level `l` and update time
`t`, the arithmetic of `proxy.policies.bucket` written in Lua), `slots` is a sorted set of concurrency leases
scored by their expiry. Idle bucket keys expire once they would be full again (a missing bucket is a full one).

One admission is one script (`ACQUIRE`): refill both buckets, compute the wait; refuse without charging if it is
longer than the budget, else reserve now (debt makes later callers queue behind, first come first served) and,
when there is no wait, take a concurrency slot in the same round trip. The caller then sleeps the wait locally.
A slot not free at once is polled for (`SLOT`, backing off from 5 ms to 100 ms; a release in this process wakes
its waiters at once) until the budget is spent. `SETTLE` (release) corrects the tokens/min charge by the real
usage, refunds an abandoned request and frees the slot. A plain requests/min lease releases without a round trip;
one without a slot settles in the background (the caller does not wait for the correction); freeing a slot is
awaited, so a retry right after its release finds the slot free.

Crashes: a slot is a lease with a TTL (`LEASE_TTL`). This process renews the leases it holds (one pipeline every
`LEASE_TTL / 3`), so a live call never loses its slot, and a crashed replica's slots come back within the TTL.
Cancellation: a script already sent finishes in a shielded task; if it admitted a call whose caller went away, the
admission is undone, and releases are shielded too. Nothing waits on Redis longer than `state.timeout`.

Time: with `clock=None` the scripts read Redis's `TIME`, so replicas on different hosts share one time base; a
clock passed in (tests: a fake clock) is used as the shared time instead.

Redis unavailable (`StateUnavailable`): `state.failure_mode: fail_open` admits through a local `Limiter` holding
this limit divided by `state.expected_replicas` (counted in `state.fallbacks["ratelimit"]`, warned once per outage);
`fail_closed` refuses with `RateLimited`. A lease granted by Redis whose release fails is dropped: its tokens
refill and its slot expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from proxy.config.model import LimitsConfig
from proxy.errors import RateLimited
from proxy.policies.ratelimit import CONCURRENCY_RETRY_AFTER, Clock, Lease, Limiter, NoLimiter, Sleep
from proxy.policies.redis_state import RedisState, StateUnavailable

LEASE_TTL = 60.0  # seconds a concurrency slot outlives its holder's last renewal
SLOT_POLL_MIN = 0.005
SLOT_POLL_MAX = 0.1
UNAVAILABLE_RETRY_AFTER = 1.0  # `retry_after` of a fail_closed refusal

_LUA_COMMON = """
local EPS = 1e-9
local function fmt(x) return string.format('%.17g', x) end
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function load(key, limit, now)
  local b = {capacity = limit, rate = limit / 60}
  local v = redis.call('HMGET', key, 'l', 't')
  b.level, b.updated = tonumber(v[1]), tonumber(v[2])
  if b.level == nil or b.updated == nil then b.level, b.updated = limit, now end
  if b.level > limit then b.level = limit end
  if now > b.updated then
    b.level = math.min(limit, b.level + (now - b.updated) * b.rate)
    b.updated = now
  end
  return b
end
local function save(key, b)
  redis.call('HSET', key, 'l', fmt(b.level), 't', fmt(b.updated))
  redis.call('PEXPIRE', key, math.ceil(((b.capacity - b.level) / b.rate + 60) * 1000))
end
local function wait_for(b, amount)
  local missing = math.min(amount, b.capacity) - b.level
  if missing <= EPS then return 0 end
  return missing / b.rate
end
local function take_slot(key, limit, id, ttl, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  if redis.call('ZCARD', key) >= limit then return 0 end
  redis.call('ZADD', key, fmt(now + ttl), id)
  redis.call('PEXPIRE', key, math.ceil(ttl * 2000))
  return 1
end
"""

# KEYS: req, tok, slots. ARGV: now, rpm, tpm, tokens, budget, concurrency, lease id, lease ttl.
# -> {1, wait, slot taken (0|1), now} or {0, requests wait, tokens wait, now} (refused, nothing charged).
ACQUIRE = (
    _LUA_COMMON
    + """
local now = clock(ARGV[1])
local rpm, tpm, tokens, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rb, tb
local rw, tw = 0, 0
if rpm > 0 then rb = load(KEYS[1], rpm, now); rw = wait_for(rb, 1) end
if tpm > 0 then tb = load(KEYS[2], tpm, now); tw = wait_for(tb, tokens) end
local wait = math.max(rw, tw)
if wait > budget then return {0, fmt(rw), fmt(tw), fmt(now)} end
if rb then rb.level = rb.level - math.min(1, 2 * rb.capacity); save(KEYS[1], rb) end
if tb then tb.level = tb.level - math.min(tokens, 2 * tb.capacity); save(KEYS[2], tb) end
local slot = 0
local concurrency = tonumber(ARGV[6])
if concurrency > 0 and wait == 0 then slot = take_slot(KEYS[3], concurrency, ARGV[7], tonumber(ARGV[8]), now) end
return {1, fmt(wait), slot, fmt(now)}
"""
)

# KEYS: slots. ARGV: now, concurrency, lease id, lease ttl. -> 1 taken | 0 full
SLOT = _LUA_COMMON + "return take_slot(KEYS[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), clock(ARGV[1]))"

# KEYS: req, tok, slots. ARGV: now, rpm, tpm, requests to refund, token delta (+ charge, - refund), lease id | ''.
SETTLE = (
    _LUA_COMMON
    + """
local now = clock(ARGV[1])
local rpm, tpm, refund, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm > 0 and refund > 0 then
  local b = load(KEYS[1], rpm, now)
  b.level = math.min(b.capacity, b.level + refund)
  save(KEYS[1], b)
end
if tpm > 0 and delta ~= 0 then
  local b = load(KEYS[2], tpm, now)
  if delta < 0 then b.level = math.min(b.capacity, b.level - delta)
  else b.level = math.max(b.level - delta, math.min(b.level, -b.capacity)) end
  save(KEYS[2], b)
end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
return 1
"""
)

# KEYS: req, tok, slots. ARGV: now, rpm, tpm. -> {requests level | '', tokens level | '', leases in force}
HEADROOM = (
    _LUA_COMMON
    + """
local now = clock(ARGV[1])
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local r, t = '', ''
if rpm > 0 then r = fmt(load(KEYS[1], rpm, now).level) end
if tpm > 0 then t = fmt(load(KEYS[2], tpm, now).level) end
return {r, t, redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf')}
"""
)

# KEYS: slots. ARGV: now, lease ttl, lease ids... -> leases still held (an expired one is not revived)
RENEW = (
    _LUA_COMMON
    + """
local now = clock(ARGV[1])
local ttl = tonumber(ARGV[2])
local kept = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', fmt(now + ttl), ARGV[i])
    kept = kept + 1
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 2000))
return kept
"""
)


def local_share(config: LimitsConfig, replicas: int) -> LimitsConfig:
    """`config` with every limit divided among `replicas` (concurrency rounded down, at least 1)."""
    if replicas <= 1:
        return config

    def share(value: float | None) -> float | None:
        return None if value is None else value / replicas

    return dataclasses.replace(
        config,
        requests_per_minute=share(config.requests_per_minute),
        tokens_per_minute=share(config.tokens_per_minute),
        concurrency=None if config.concurrency is None else max(1, config.concurrency // replicas),
    )


class _RedisLease(Lease):
    __slots__ = ("_limiter", "_slot")

    def __init__(self, limiter: RedisLimiter, estimated_tokens: int, waited: float, slot: str) -> None:
        super().__init__(estimated_tokens, waited)
        self._limiter = limiter
        self._slot = slot  # the lease id holding a concurrency slot, or ''

    async def _settle(self, actual_tokens: int | None, *, abandoned: bool) -> None:
        estimate = self.estimated_tokens
        if abandoned:
            await self._limiter._settle(self._slot, refund=1, token_delta=-estimate)
        else:
            delta = 0 if actual_tokens is None else actual_tokens - estimate
            await self._limiter._settle(self._slot, refund=0, token_delta=delta)


class RedisLimiter:
    """Shared limits for one scope; see the module docstring. Build with `RedisLimiter.from_config`."""

    def __init__(
        self,
        scope: str,
        config: LimitsConfig,
        state: RedisState,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.scope = scope
        self.config = config
        self.max_wait = config.max_wait
        self.state = state
        self.lease_ttl = lease_ttl
        self._shared_clock = clock
        self._clock = clock or time.monotonic
        self._sleep = sleep
        self._keys = [state.key("rl", scope, part) for part in ("req", "tok", "slots")]
        self._rpm = config.requests_per_minute or 0
        self._tpm = config.tokens_per_minute or 0
        self._concurrency = config.concurrency or 0
        self.fallback = Limiter(
            scope, local_share(config, state.config.expected_replicas), clock=self._clock, sleep=sleep
        )
        self._live: set[str] = set()  # lease ids holding a slot here: renewed until released
        self._waiters: list[asyncio.Future[None]] = []  # callers polling for a slot, woken by local releases
        self._rate_waiting = 0
        if self._concurrency:
            state.register("leases", self)

    @classmethod
    def from_config(
        cls,
        config: LimitsConfig | None,
        scope: str,
        state: RedisState,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> RedisLimiter | NoLimiter:
        if config is None or not config.any:
            return NoLimiter(scope, config)
        return cls(scope, config, state, clock=clock, sleep=sleep)

    def _now(self) -> str:
        return "" if self._shared_clock is None else repr(self._shared_clock())

    async def _run(
        self, source: str, keys: list[str], args: list[Any], undo: Callable[[Any], None] | None = None
    ) -> Any:
        """Run a script in a task of the state's: a caller cancelled meanwhile does not cut it short, and `undo`
        gets its reply (to give back what it granted)."""
        script = self.state.script(source)
        task = self.state.spawn(self.state.call(lambda redis: script(keys=keys, args=args, client=redis)))
        assert task is not None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if undo is not None:
                task.add_done_callback(lambda t: None if t.cancelled() or t.exception() else undo(t.result()))
            raise

    # --- admission ----------------------------------------------------------------------------------------

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> Lease:
        """Admit one call charging `tokens`, waiting up to `max_wait` (default: the config's)."""
        budget = max(0.0, self.max_wait if max_wait is None else max_wait)
        tokens = max(0, tokens)
        start = self._clock()
        lease_id = secrets.token_hex(8) if self._concurrency else ""
        args = [self._now(), self._rpm, self._tpm, tokens, repr(budget), self._concurrency, lease_id, self.lease_ttl]

        def undo(reply: Any) -> None:
            if int(reply[0]) == 1:
                self._give_back(lease_id if int(reply[2]) else "", 1, -tokens)

        try:
            reply = await self._run(ACQUIRE, self._keys, args, undo)
        except StateUnavailable:
            return await self._degraded(tokens, budget)
        if int(reply[0]) == 0:
            raise self._refusal(float(reply[1]), float(reply[2]), tokens, budget)
        wait, slot = float(reply[1]), lease_id if int(reply[2]) else ""
        if slot:
            self._live.add(slot)
            self._keep_alive()
        admitted = False
        try:
            if wait > 0:
                self._rate_waiting += 1
                try:
                    await self._sleep(wait)
                finally:
                    self._rate_waiting -= 1
            if self._concurrency and not slot:
                try:
                    slot = await self._wait_for_slot(lease_id, start + budget)
                except StateUnavailable:  # the reservation cannot be refunded: Redis is gone
                    admitted = True
                    return await self._degraded(tokens, max(0.0, start + budget - self._clock()))
                if not slot:
                    raise RateLimited(
                        f"rate limit of `{self.scope}`: concurrency exhausted (limit {self._concurrency} in flight "
                        f"across replicas); no slot freed within max_wait {budget:g}s",
                        retry_after=CONCURRENCY_RETRY_AFTER,
                    )
            admitted = True
        finally:
            if not admitted:
                self._give_back(slot, 1, -tokens)
        return _RedisLease(self, tokens, self._clock() - start, slot)

    def _refusal(self, request_wait: float, token_wait: float, tokens: int, budget: float) -> RateLimited:
        exhausted = []
        if request_wait > budget:
            exhausted.append(f"requests/min (limit {self._rpm:g})")
        if token_wait > budget:
            exhausted.append(f"tokens/min (limit {self._tpm:g}, this request ~{tokens})")
        wait = max(request_wait, token_wait)
        return RateLimited(
            f"rate limit of `{self.scope}`: {' and '.join(exhausted)} exhausted across replicas; "
            f"admission possible in {wait:.2f}s, more than max_wait {budget:g}s",
            retry_after=wait,
        )

    async def _wait_for_slot(self, lease_id: str, deadline: float) -> str:
        """Poll for a concurrency slot until `deadline` (local clock); the lease id once taken, '' if not."""
        delay = SLOT_POLL_MIN
        loop = asyncio.get_running_loop()
        while True:
            reply = await self._run(
                SLOT,
                self._keys[2:],
                [self._now(), self._concurrency, lease_id, self.lease_ttl],
                lambda taken: self._give_back(lease_id, 0, 0) if int(taken) else None,
            )
            if int(reply):
                self._live.add(lease_id)
                self._keep_alive()
                return lease_id
            remaining = deadline - self._clock()
            if remaining <= 0:
                return ""
            woken: asyncio.Future[None] = loop.create_future()
            self._waiters.append(woken)
            timer = asyncio.ensure_future(self._sleep(min(delay, remaining)))
            try:
                await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                woken.cancel()
                if woken in self._waiters:
                    self._waiters.remove(woken)
            delay = min(delay * 2, SLOT_POLL_MAX)

    async def _degraded(self, tokens: int, budget: float) -> Lease:
        if self.state.fail_open:
            self.state.count_fallback("ratelimit")
            return await self.fallback.acquire(tokens, max_wait=budget)
        self.state.refusals += 1
        raise RateLimited(
            f"rate limit of `{self.scope}`: the shared rate-limit state (Redis) is unavailable and "
            "`state.failure_mode` is fail_closed, so no call is admitted until it answers again",
            retry_after=UNAVAILABLE_RETRY_AFTER,
        )

    # --- release ------------------------------------------------------------------------------------------

    def _give_back(self, slot: str, refund: int, token_delta: float) -> asyncio.Task[None] | None:
        """Start the `SETTLE` that frees `slot`, refunds `refund` requests and charges `token_delta` tokens (a
        refund when negative), in a task of the state's; None when there is nothing to tell Redis."""
        token_delta = token_delta if self._tpm else 0
        refund = refund if self._rpm else 0
        self._live.discard(slot)
        if not slot and not refund and not token_delta:
            return None
        return self.state.spawn(self._settle_call(slot, refund, token_delta))

    async def _settle(self, slot: str, *, refund: int, token_delta: float) -> None:
        """A lease ended: settle it in Redis. Freeing a slot is awaited (shielded: a cancelled caller does not stop
        it), so a retry right after finds it free; a mere token correction or refund goes on in the background."""
        task = self._give_back(slot, refund, token_delta)
        if task is not None and slot:
            await asyncio.shield(task)
        if slot:
            self._wake()

    async def _settle_call(self, slot: str, refund: int, token_delta: float) -> None:
        args = [self._now(), self._rpm, self._tpm, refund, repr(float(token_delta)), slot]
        script = self.state.script(SETTLE)
        with contextlib.suppress(StateUnavailable):  # else tokens refill on their own, the slot expires unrenewed
            await self.state.call(lambda redis: script(keys=self._keys, args=args, client=redis))

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- leases kept alive --------------------------------------------------------------------------------

    def _keep_alive(self) -> None:
        state = self.state
        state.every("leases", self.lease_ttl / 3, lambda: renew_leases(state))

    async def _renew(self, pipe: Any) -> bool:
        if not self._live:
            return False
        script = self.state.script(RENEW)
        await script(keys=self._keys[2:], args=[self._now(), self.lease_ttl, *sorted(self._live)], client=pipe)
        return True

    # --- status -------------------------------------------------------------------------------------------

    async def headroom(self) -> dict[str, Any]:
        """As `Limiter.headroom`, read from Redis (`shared: true`); the local fallback's while Redis is down."""
        args = [self._now(), self._rpm, self._tpm]
        try:
            reply = await self._run(HEADROOM, self._keys, args)
        except StateUnavailable:
            return {**await self.fallback.headroom(), "backend": "redis", "shared": False}

        def available(level: bytes | str) -> int | None:
            return None if level in (b"", "") else max(0, math.floor(float(level)))

        return {
            "limited": True,
            "requests_per_minute": self.config.requests_per_minute,
            "requests_available": available(reply[0]),
            "tokens_per_minute": self.config.tokens_per_minute,
            "tokens_available": available(reply[1]),
            "concurrency": self.config.concurrency,
            "in_flight": int(reply[2]) if self._concurrency else None,
            "waiting": self._rate_waiting + len(self._waiters),
            "backend": "redis",
            "shared": True,
        }


async def renew_leases(state: RedisState) -> None:
    """Extend every concurrency lease this process holds on `state`, in one pipeline (the keep-alive loop)."""
    holders = [limiter for limiter in state.members("leases") if limiter._live]
    if not holders:
        return

    async def run(redis: Any) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for limiter in holders:
                await limiter._renew(pipe)
            await pipe.execute()

    await state.call(run)
