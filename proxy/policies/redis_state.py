"""The connection to Redis that shared state (rate limits, breakers, the response cache) goes through.

    state = RedisState(config.state)                     # `state:` from the config; the URL is a Secret
    result = await state.call(lambda redis: redis.get(state.key("cache", "e", digest)))   # StateUnavailable if not
    state.stats()                                        # for /metrics and get_metrics
    await state.aclose()

Rules kept here, so every user of Redis gets them:
- Keys are namespaced and versioned: `{key_prefix}:v1:<kind>:...` (`key()`); a change of layout bumps `v1`.
- No request waits on Redis longer than `state.timeout`: every operation runs under `asyncio.timeout`, and the
  client has the same socket timeouts. It retries a failed command once, at once, on a new connection (a pooled
  connection that Redis or a firewall closed while idle), still within that one timeout. A failure or timeout
  raises `StateUnavailable`; the caller applies `state.failure_mode` (its own fallback), so this module never
  decides what a request gets.
- At most `MAX_CONNECTIONS` connections per process: a burst of requests queues for one (within the timeout)
  rather than opening hundreds of sockets at once.
- Health: the first failure marks Redis down (one warning per outage, not one per request). While down, calls
  fail at once without touching the network, so a dead Redis costs nothing per request; after `retry_interval`
  (doubling per failed probe up to `max_retry_interval`) exactly one call probes it, and its success marks Redis up
  again (logged). Reconnecting is the client's job; this only decides when to try.
- Background work (lease keep-alives, breaker sync, fire-and-forget writes) runs in tasks this object owns and
  cancels on `aclose()`.

`clock` (the runtime's) only times the retry backoff, so tests move it by hand; `timeout` is real time.
Nothing here logs the URL or an exception's text (a URL may hold a password): only exception type names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config.model import StateConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

KEY_VERSION = "v1"
RETRY_INTERVAL = 1.0  # seconds before the first probe of a Redis that went down
MAX_RETRY_INTERVAL = 10.0
MAX_CONNECTIONS = 16  # Redis runs one command at a time: more connections per process buy nothing


class StateUnavailable(Exception):
    """Redis could not serve this operation (down, slow, or refusing). Never reaches a client."""


class RedisState:
    """One Redis client plus its health bookkeeping and background tasks; see the module docstring."""

    def __init__(
        self,
        config: StateConfig,
        *,
        clock: Clock = time.monotonic,
        retry_interval: float = RETRY_INTERVAL,
        max_retry_interval: float = MAX_RETRY_INTERVAL,
    ) -> None:
        if config.url is None:
            raise ValueError("Redis state needs `state.url`")
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url.reveal(),
            max_connections=MAX_CONNECTIONS,
            timeout=config.timeout,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self.client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))
        self.config = config
        self.timeout = config.timeout
        self.prefix = f"{config.key_prefix}:{KEY_VERSION}"
        self._clock = clock
        self._base_interval = retry_interval
        self._max_interval = max_retry_interval
        self._interval = retry_interval
        self.up = True
        self._retry_at = 0.0
        self._probing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._scripts: dict[str, Any] = {}
        self._members: dict[str, weakref.WeakSet[Any]] = {}
        # counters (exposed by `stats()`)
        self.operations = 0
        self.failures = 0
        self.outages = 0
        self.last_error: str | None = None
        self.fallbacks: dict[str, int] = {}  # what degraded, e.g. {"ratelimit": 3, "cache": 1}
        self.refusals = 0  # requests refused by fail_closed

    def key(self, *parts: str) -> str:
        """`{key_prefix}:v1:part:part...`."""
        return ":".join((self.prefix, *parts))

    def script(self, source: str) -> Any:
        """The registered Lua script for `source` (EVALSHA, loaded again after a Redis restart)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def register(self, kind: str, member: object) -> None:
        """Remember `member` (weakly) under `kind`, for a background loop that serves all of them."""
        self._members.setdefault(kind, weakref.WeakSet()).add(member)

    def members(self, kind: str) -> list[Any]:
        return list(self._members.get(kind, ()))

    @property
    def fail_open(self) -> bool:
        return self.config.failure_mode == "fail_open"

    # --- health -----------------------------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether an operation may go to Redis now: it is up, or it is down and this call is its probe."""
        if self.up:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def _failed(self, exc: BaseException, *, probe: bool) -> None:
        self.failures += 1
        self.last_error = type(exc).__name__
        if self.up:
            self.up = False
            self.outages += 1
            self._interval = self._base_interval
            self._retry_at = self._clock() + self._interval
            mode = self.config.failure_mode
            log.warning(
                "shared state (Redis) unavailable (%s): %s until it answers again",
                self.last_error,
                "local fallback (limits / expected_replicas)" if mode == "fail_open" else "rate-limited calls refused",
            )
        elif probe:  # calls already in flight when it went down do not push the next probe back
            self._interval = min(self._interval * 2, self._max_interval)
            self._retry_at = self._clock() + self._interval

    def _succeeded(self) -> None:
        if not self.up:
            self.up = True
            log.warning("shared state (Redis) reachable again after %d failed operations", self.failures)

    def count_fallback(self, what: str) -> None:
        self.fallbacks[what] = self.fallbacks.get(what, 0) + 1

    # --- operations -------------------------------------------------------------------------------------

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `operation(client)` within `timeout`; `StateUnavailable` when Redis is down or it fails."""
        if not self.usable():
            raise StateUnavailable("Redis is marked down")
        probe = not self.up
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, probe=probe)
            raise StateUnavailable(type(exc).__name__) from None
        finally:
            if probe:
                self._probing = False
        self.operations += 1
        self._succeeded()
        return result

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coroutine` in a task owned by this state (kept referenced, cancelled on `aclose`). Errors are
        swallowed: background work is best effort. None (and the coroutine closed) when no loop runs."""
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:
            coroutine.close()
            return None
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved, so asyncio does not complain
            log.debug("background state task failed: %s", type(task.exception()).__name__)

    def every(self, name: str, interval: float, work: Callable[[], Awaitable[None]]) -> bool:
        """Start (once per `name`) a task running `work()` every `interval` real seconds until `aclose`. False when
        it cannot run (no event loop yet, or closed)."""
        if name in self._loops:
            return True
        if self._closed:
            return False

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(StateUnavailable):
                    await work()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: started by a later call
            return False
        self._loops[name] = running.create_task(loop())
        return True

    async def drain(self) -> None:
        """Wait for the fire-and-forget tasks started so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def ping(self) -> bool:
        try:
            await self.call(lambda redis: redis.ping())
        except StateUnavailable:
            return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "available": self.up,
            "failure_mode": self.config.failure_mode,
            "operations": self.operations,
            "failures": self.failures,
            "outages": self.outages,
            "last_error": self.last_error,
            "fallbacks": dict(self.fallbacks),
            "refusals": self.refusals,
        }

    async def aclose(self) -> None:
        """Cancel the background loops, let the pending writes finish (each bounded by `timeout`), close."""
        self._closed = True
        loops = list(self._loops.values())
        self._loops.clear()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.drain()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose(close_connection_pool=True)
