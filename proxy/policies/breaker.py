"""Circuit breaker for one provider: stop sending to an upstream that keeps failing, probe it after a cooldown.

States: `closed` (calls flow) -> `open` after `failures` consecutive failures, or when the error rate over the
sliding `window` exceeds `error_rate` with at least `min_requests` calls in it -> `half_open` once `cooldown` has
passed, where exactly one probe call is let through at a time -> `closed` when the probe succeeds (counts and
window start afresh), back to `open` with a new cooldown when it fails.

Pure and cheap: every method takes `now` (the injected clock's reading); the window is a ring of 60 buckets of
`window / 60` seconds each, so a call is forgotten between `window - window/60` and `window` after it happened.

Which failures count (`EFFECTS`, applied by `record_error`):
- count: connect, timeout, server, overloaded, malformed, interrupted, and rate_limited (429s that survive the
  retries mean the quota is gone; the half-open probe finds out when it is back);
- trip (open at once): auth, permission: credentials do not heal between requests;
- ignore: bad_request, context_length, content_filter (the request's fault: the upstream is fine) and not_found
  (a per-model answer: one misnamed model must not close a provider whose other models work; the retry decision's
  `mark_unhealthy` flag covers that target). Errors that are not upstream replies are ignored too.
An ignored outcome changes no count; in half-open it gives the probe slot back.

Outcomes reported while the breaker is open (calls let through before it opened) are ignored; in half-open,
any reported outcome is taken as the probe's. A caller that claimed the probe (`allow` returned True in half-open)
and then never made the call must `release_probe()` (in a `finally`), or the slot stays taken.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from proxy.config.model import BreakerConfig
from proxy.errors import ErrorKind, ProxyError, UpstreamError


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Effect(enum.StrEnum):
    """What a failure of some kind does to the breaker."""

    COUNT = "count"
    TRIP = "trip"
    IGNORE = "ignore"


EFFECTS: Mapping[ErrorKind, Effect] = MappingProxyType(
    {
        ErrorKind.CONNECT: Effect.COUNT,
        ErrorKind.TIMEOUT: Effect.COUNT,
        ErrorKind.RATE_LIMITED: Effect.COUNT,
        ErrorKind.OVERLOADED: Effect.COUNT,
        ErrorKind.SERVER: Effect.COUNT,
        ErrorKind.MALFORMED: Effect.COUNT,
        ErrorKind.INTERRUPTED: Effect.COUNT,
        ErrorKind.AUTH: Effect.TRIP,
        ErrorKind.PERMISSION: Effect.TRIP,
        ErrorKind.NOT_FOUND: Effect.IGNORE,
        ErrorKind.BAD_REQUEST: Effect.IGNORE,
        ErrorKind.CONTEXT_LENGTH: Effect.IGNORE,
        ErrorKind.CONTENT_FILTER: Effect.IGNORE,
    }
)


def effect_of(error: ProxyError) -> Effect:
    return EFFECTS[error.kind] if isinstance(error, UpstreamError) else Effect.IGNORE


_BUCKETS = 60
_NEVER = -(2**63)  # the stamp of a slot that holds no bucket


class _Window:
    """Calls and failures over the last `span` seconds, in a ring of `_BUCKETS` time buckets."""

    __slots__ = ("_calls", "_failures", "_stamps", "_width")

    def __init__(self, span: float) -> None:
        self._width = span / _BUCKETS
        self._stamps = [_NEVER] * _BUCKETS  # the absolute bucket number each slot holds
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS

    def add(self, now: float, *, failed: bool) -> None:
        number = math.floor(now / self._width)
        slot = number % _BUCKETS
        if self._stamps[slot] != number:
            self._stamps[slot] = number
            self._calls[slot] = 0
            self._failures[slot] = 0
        self._calls[slot] += 1
        self._failures[slot] += failed

    def totals(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the buckets that still lie inside the window."""
        oldest = math.floor(now / self._width) - _BUCKETS + 1
        calls = failures = 0
        for slot, stamp in enumerate(self._stamps):
            if stamp >= oldest:
                calls += self._calls[slot]
                failures += self._failures[slot]
        return calls, failures

    def clear(self) -> None:
        self._stamps = [_NEVER] * _BUCKETS


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The breaker as `list_providers` shows it. Times are readings of the injected clock."""

    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    next_probe_at: float | None
    probe_in_flight: bool
    window_calls: int
    window_failures: int

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "opened_at": self.opened_at,
            "next_probe_at": self.next_probe_at,
            "probe_in_flight": self.probe_in_flight,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
        }


class CircuitBreaker:
    """One provider's breaker. Single-threaded (one event loop); every method takes the current time."""

    __slots__ = (
        "_consecutive",
        "_opened_at",
        "_probe_in_flight",
        "_window",
        "cooldown",
        "error_rate",
        "failures",
        "min_requests",
    )

    def __init__(
        self,
        *,
        failures: int = 5,
        error_rate: float | None = None,
        window: float = 60.0,
        min_requests: int = 20,
        cooldown: float = 30.0,
    ) -> None:
        self.failures = failures
        self.error_rate = error_rate
        self.min_requests = min_requests
        self.cooldown = cooldown
        self._window = _Window(window) if error_rate is not None else None
        self._consecutive = 0
        self._opened_at: float | None = None  # None while closed
        self._probe_in_flight = False

    @classmethod
    def from_config(cls, config: BreakerConfig) -> CircuitBreaker:
        return cls(
            failures=config.failures,
            error_rate=config.error_rate,
            window=config.window,
            min_requests=config.min_requests,
            cooldown=config.cooldown,
        )

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now < self._opened_at + self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self, now: float) -> bool:
        """May a call go to this provider now? In half-open this claims the single probe slot."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release_probe(self) -> None:
        """Give back a probe slot claimed by `allow` for a call that was never made (or has no verdict)."""
        self._probe_in_flight = False

    def record_success(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.OPEN:
            return
        if state is BreakerState.HALF_OPEN:
            self._close()
            return
        self._consecutive = 0
        if self._window is not None:
            self._window.add(now, failed=False)

    def record_failure(self, now: float, *, trip: bool = False) -> None:
        """A failure that says the upstream is sick; `trip=True` opens the breaker at once."""
        state = self.state(now)
        if state is BreakerState.OPEN:
            return
        self._consecutive += 1
        if state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        if self._window is not None:
            self._window.add(now, failed=True)
        if trip or self._consecutive >= self.failures or self._rate_exceeded(now):
            self._open(now)

    def record_error(self, now: float, error: ProxyError) -> None:
        """Apply `EFFECTS` to a failed call's error."""
        effect = effect_of(error)
        if effect is Effect.IGNORE:
            if self.state(now) is BreakerState.HALF_OPEN:
                self.release_probe()
            return
        self.record_failure(now, trip=effect is Effect.TRIP)

    def snapshot(self, now: float) -> BreakerSnapshot:
        calls, failed = self._window.totals(now) if self._window is not None else (0, 0)
        return BreakerSnapshot(
            state=self.state(now),
            consecutive_failures=self._consecutive,
            opened_at=self._opened_at,
            next_probe_at=None if self._opened_at is None else self._opened_at + self.cooldown,
            probe_in_flight=self._probe_in_flight,
            window_calls=calls,
            window_failures=failed,
        )

    def _rate_exceeded(self, now: float) -> bool:
        if self._window is None or self.error_rate is None:
            return False
        calls, failed = self._window.totals(now)
        return calls >= self.min_requests and failed / calls > self.error_rate

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_in_flight = False

    def _close(self) -> None:
        self._opened_at = None
        self._probe_in_flight = False
        self._consecutive = 0
        if self._window is not None:
            self._window.clear()
