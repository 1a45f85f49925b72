"""Circuit breakers whose `open` state is shared by every replica through Redis.

    breaker = SharedBreaker.from_config(provider.breaker, "openai/gpt-4o-mini", state, clock=runtime.clock)

A `SharedBreaker` is a `CircuitBreaker` (same synchronous interface, same counting) with two additions:
- when it opens, it publishes `{key_prefix}:v1:breaker:<provider/model>` with a TTL of its cooldown
  (fire-and-forget, bounded by `state.timeout`);
- a background loop of the state's (`sync_breakers`, every `SYNC_INTERVAL` seconds, one pipelined round trip for
  all breakers) adopts a published open state: a closed breaker (or a half-open one with no probe in flight) opens
  with the remaining cooldown, so one replica's verdict stops all of them within about a second.

What stays per replica, on purpose: failure counts and the error-rate window (each replica judges from its own
calls; the first to trip opens it for everyone), and the half-open probe (each replica probes once after the
cooldown: at most one call per replica reaches a sick upstream, and no lock is held across a slow call).
The breaker is consulted synchronously on the hot path, so it never waits on Redis: a dead Redis just leaves each
replica with its own breakers, which is the memory backend's behaviour.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from proxy.config.model import BreakerConfig
from proxy.policies.breaker import BreakerState, CircuitBreaker
from proxy.policies.ratelimit import Clock
from proxy.policies.redis_state import RedisState, StateUnavailable

SYNC_INTERVAL = 1.0  # seconds between two reads of the published breaker states


class SharedBreaker(CircuitBreaker):
    """A breaker whose openings are published to, and adopted from, the other replicas; see the module docstring."""

    __slots__ = ("__weakref__", "_adopting", "_clock", "_shared", "_syncing", "key", "label")

    def __init__(self, label: str, state: RedisState, *, clock: Clock, **settings: Any) -> None:
        super().__init__(**settings)
        self.label = label
        self.key = state.key("breaker", label)
        self._shared = state
        self._clock = clock
        self._adopting = False
        self._syncing = False
        state.register("breakers", self)

    @classmethod
    def from_config(  # type: ignore[override]
        cls, config: BreakerConfig, label: str, state: RedisState, *, clock: Clock
    ) -> SharedBreaker:
        return cls(
            label,
            state,
            clock=clock,
            failures=config.failures,
            error_rate=config.error_rate,
            window=config.window,
            min_requests=config.min_requests,
            cooldown=config.cooldown,
        )

    def allow(self, now: float) -> bool:
        if not self._syncing:  # the loop needs a running event loop: started by the first call in one
            state = self._shared
            self._syncing = state.every("breakers", SYNC_INTERVAL, lambda: sync_breakers(state))
        return super().allow(now)

    def _open(self, now: float) -> None:
        super()._open(now)
        if not self._adopting:
            self._shared.spawn(self._publish())

    async def _publish(self) -> None:
        milliseconds = max(1, math.ceil(self.cooldown * 1000))
        with contextlib.suppress(StateUnavailable):
            await self._shared.call(lambda redis: redis.set(self.key, b"1", px=milliseconds))

    def adopt(self, remaining: float) -> bool:
        """Another replica opened this breaker `remaining` seconds before its cooldown ends: open here too, unless
        already open or probing. True when it changed this breaker."""
        now = self._clock()
        state = self.state(now)
        if state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and self._probe_in_flight):
            return False
        self._adopting = True
        try:
            self._open(now - self.cooldown + min(remaining, self.cooldown))
        finally:
            self._adopting = False
        return True


async def sync_breakers(state: RedisState) -> int:
    """Adopt the open states other replicas published (one pipelined round trip); returns how many changed."""
    breakers: list[SharedBreaker] = state.members("breakers")
    if not breakers:
        return 0

    async def read(redis: Any) -> list[int]:
        async with redis.pipeline(transaction=False) as pipe:
            for breaker in breakers:
                pipe.pttl(breaker.key)
            return await pipe.execute()

    remaining = await state.call(read)
    return sum(breaker.adopt(ms / 1000) for breaker, ms in zip(breakers, remaining, strict=True) if ms > 0)
