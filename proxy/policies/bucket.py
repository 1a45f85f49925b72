"""Token-bucket arithmetic: pure, synchronous, clock injected as a `now` argument on every call.

A bucket holds up to `capacity` tokens and refills continuously at `rate` tokens per second. For a limit of N per
minute the bucket is `TokenBucket.per_minute(N, now)`: capacity N (a full bucket admits a burst of N at once), refill
N/60 per second (then one request every 60/N seconds). This is aiolimiter's model with the waiting taken out: the
async side (`proxy.policies.ratelimit`) decides when to sleep; this module only answers "how long until".

The level may go below zero:
- Reservations. `take` charges unconditionally, so a caller that was told "wait 1.5 s" can take now and sleep;
  later callers then see the debt and queue behind it (first come, first served, no lock needed).
- Requests larger than the bucket. An `amount` above `capacity` is admitted as soon as the bucket is full, and the
  excess becomes debt, so a huge prompt waits at most one refill instead of starving forever. Its charge is capped
  at `2 * capacity`: one such request silences the bucket for at most one more full refill.
- Corrections. `adjust` charges the difference between an estimate and the real usage afterwards; it never pushes
  the level below `-capacity` (one full refill of debt) on its own account.
The level never exceeds `capacity`.
"""

from __future__ import annotations

# Float slack so that waiting exactly the advertised time always admits (refill arithmetic rounds).
_EPSILON = 1e-9


class TokenBucket:
    """A continuously refilled token bucket. Every method takes `now` (seconds, any monotonic origin)."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: float, refill_per_second: float, now: float, *, level: float | None = None) -> None:
        if capacity <= 0 or refill_per_second <= 0:
            raise ValueError("a token bucket needs a positive capacity and refill rate")
        self.capacity = float(capacity)
        self.rate = float(refill_per_second)
        self.level = self.capacity if level is None else min(float(level), self.capacity)
        self.updated = now

    @classmethod
    def per_minute(cls, limit: float, now: float) -> TokenBucket:
        """A bucket for `limit` per minute: a burst of `limit`, then `limit / 60` per second."""
        return cls(limit, limit / 60.0, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at `now` (negative while in debt)."""
        self._refill(now)
        return self.level

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds from `now` until `amount` could be taken (0.0 if it can be taken now). Takes nothing."""
        self._refill(now)
        needed = min(amount, self.capacity)  # larger than the bucket: admitted when full
        missing = needed - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def take(self, amount: float, now: float) -> None:
        """Charge `amount` unconditionally (a reservation after `wait_time`). Oversized charges are capped."""
        self._refill(now)
        self.level -= min(amount, 2 * self.capacity)

    def try_take(self, amount: float, now: float) -> float:
        """Take `amount` if it is available now and return 0.0; else take nothing and return seconds to wait."""
        wait = self.wait_time(amount, now)
        if wait == 0.0:
            self.take(amount, now)
        return wait

    def give_back(self, amount: float, now: float) -> None:
        """Return tokens that were charged but not used (a cancelled reservation, an overestimate)."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def adjust(self, delta: float, now: float) -> None:
        """Correct an earlier charge: `delta > 0` charges more, `delta < 0` refunds. Debt stays above -capacity."""
        if delta <= 0:
            self.give_back(-delta, now)
            return
        self._refill(now)
        self.level = max(self.level - delta, min(self.level, -self.capacity))
