"""Routing strategies: for one model, the order in which to try its targets. Pure: no I/O, rng and clock injected.

A router is built once per model (`build_router(model, ...)` or `strategy_for(name, weights, ...)`) and keeps its
own small mutable state. `order(available)` returns target indices, first = chosen, the rest = fallback order;
targets marked unavailable (disabled provider, open breaker) are left out and do not use up rotation or weight.

- `fallback`: the declared order.
- `round_robin`: the start rotates by one target per call; the rest follow in rotated order. A skipped target is
  passed over (the next available one takes the turn, and the rotation continues after it), so the available
  targets share the traffic evenly and a target that comes back resumes its place.
- `weighted`: nginx's smooth weighted round robin. Per pick, every available target's `current += weight`, the
  largest `current` is chosen (ties: declared order) and pays back the total. Deterministic: weights are reduced to
  the smallest integers with the same ratios (0.5:1.5 -> 1:3), and with W their sum, every window of W consecutive
  picks holds each target exactly its weight (3:1 gives 0,0,1,0 repeated); after n picks each target's count is
  within one of n*w/W. Unavailable targets neither gain nor lose credit while skipped, so they do not burst when
  they return; a window that spans an availability change is off by at most one. The fallback order after the
  chosen target is the others by descending weight (stable).
- `least_latency`: ascending EWMA (`alpha`) of observed latencies. An unmeasured target, or one whose last sample
  is older than `stale_after` seconds (injected clock), is tried first so it gets (re)measured; its next sample
  replaces the old average, so a recovered target gets its traffic back. One probe per target at a time: the
  probed target is "claimed" until it records a result or `stale_after` passes. With probability `epsilon`
  (injected rng) a random other target goes first (exploration). A failure counts as a slow sample:
  `max(failure_penalty, 2 x the slowest current average)`.

Concurrency: `order()` and `record_*()` are synchronous and never await, so within one event loop each call is
atomic and interleaved asyncio tasks see one consistent sequence; no lock is needed. Routers are not thread-safe
(one event loop per worker process; each process has its own state).

Imports only `proxy.config.model`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from proxy.config.model import ModelConfig

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySettings:
    """Tuning of `least_latency`: EWMA weight of a new sample, exploration rate, staleness horizon (s), failure cost."""

    alpha: float = 0.3
    epsilon: float = 0.05
    stale_after: float = 30.0
    failure_penalty: float = 10.0


class Router:
    """What every strategy offers; the base behaviour is the declared order with no state (see `FallbackRouter`)."""

    __slots__ = ("_size", "_weights")
    strategy = "fallback"

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = tuple(float(w) for w in weights)
        self._size = len(self._weights)

    def order(self, available: Sequence[bool] | None = None) -> list[int]:
        """Target indices in the order to try them: first = chosen, rest = fallback order; unavailable ones left out."""
        if available is None:
            return list(range(self._size))
        return [i for i in range(self._size) if available[i]]

    def record_latency(self, index: int, seconds: float) -> None:
        """A successful call to target `index` took `seconds` (only `least_latency` uses it)."""

    def record_failure(self, index: int) -> None:
        """A call to target `index` failed (only `least_latency` uses it)."""

    def state_snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of the router's state, for status and introspection."""
        return {"strategy": self.strategy, "weights": list(self._weights)}

    def adopt_state(self, old: Router) -> bool:
        """Carry `old`'s state over a config reload when the strategy and weights are unchanged; True if adopted.

        The caller decides that the targets themselves (provider, model) are the same.
        """
        if type(old) is not type(self) or old._weights != self._weights:
            return False
        self._copy_state(old)
        return True

    def _copy_state(self, old: Router) -> None:
        pass


class FallbackRouter(Router):
    """`fallback`: the declared order, every time."""

    __slots__ = ()


class RoundRobinRouter(Router):
    """`round_robin`: rotate the start by one per call among the available targets."""

    __slots__ = ("_next",)
    strategy = "round_robin"

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__(weights)
        self._next = 0

    def order(self, available: Sequence[bool] | None = None) -> list[int]:
        size, start = self._size, self._next
        rotated = [(start + step) % size for step in range(size)]
        if available is not None:
            rotated = [i for i in rotated if available[i]]
            if not rotated:
                return rotated
        self._next = (rotated[0] + 1) % size
        return rotated

    def state_snapshot(self) -> dict[str, Any]:
        return {**super().state_snapshot(), "next": self._next}

    def _copy_state(self, old: Router) -> None:
        assert isinstance(old, RoundRobinRouter)
        self._next = old._next


def _integer_weights(weights: Sequence[float]) -> list[int]:
    """The smallest integers with the same ratios as `weights` (decimals read as written: 0.1 is 1/10)."""
    fractions = [Fraction(w).limit_denominator(1_000_000) for w in weights]
    if any(f <= 0 for f in fractions):  # tiny weights: keep their exact binary values instead
        fractions = [Fraction(w) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    return [i // divisor for i in integers]


class WeightedRouter(Router):
    """`weighted`: smooth weighted round robin (nginx) in exact integer arithmetic."""

    __slots__ = ("_by_weight", "_current", "_units")
    strategy = "weighted"

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__(weights)
        self._units = _integer_weights(self._weights)
        self._current = [0] * self._size
        self._by_weight = sorted(range(self._size), key=lambda i: -self._weights[i])

    def order(self, available: Sequence[bool] | None = None) -> list[int]:
        current, best, total = self._current, -1, 0
        for i, units in enumerate(self._units):
            if available is not None and not available[i]:
                continue
            current[i] += units
            total += units
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return []
        current[best] -= total
        if available is None:
            return [best, *(i for i in self._by_weight if i != best)]
        return [best, *(i for i in self._by_weight if i != best and available[i])]

    def state_snapshot(self) -> dict[str, Any]:
        return {**super().state_snapshot(), "units": list(self._units), "current": list(self._current)}

    def _copy_state(self, old: Router) -> None:
        assert isinstance(old, WeightedRouter)
        self._current = list(old._current)


class LeastLatencyRouter(Router):
    """`least_latency`: ascending EWMA, probing unmeasured and stale targets, with epsilon exploration."""

    __slots__ = ("_claimed_at", "_clock", "_ewma", "_rng", "_sampled_at", "settings")
    strategy = "least_latency"

    def __init__(
        self, weights: Sequence[float], *, rng: random.Random, clock: Clock, settings: LatencySettings
    ) -> None:
        super().__init__(weights)
        self._rng, self._clock, self.settings = rng, clock, settings
        self._ewma: list[float | None] = [None] * self._size
        self._sampled_at: list[float | None] = [None] * self._size
        self._claimed_at: list[float | None] = [None] * self._size

    def _is_stale(self, index: int, now: float) -> bool:
        sampled_at = self._sampled_at[index]
        return sampled_at is None or now - sampled_at >= self.settings.stale_after

    def _is_claimed(self, index: int, now: float) -> bool:
        claimed_at = self._claimed_at[index]
        return claimed_at is not None and now - claimed_at < self.settings.stale_after

    def order(self, available: Sequence[bool] | None = None) -> list[int]:
        now = self._clock()
        candidates = range(self._size) if available is None else [i for i in range(self._size) if available[i]]

        def rank(i: int) -> tuple[int, float, int]:
            ewma = self._ewma[i]
            if self._is_stale(i, now) and not self._is_claimed(i, now):
                return (0, 0.0, i)  # to be (re)measured
            if ewma is None:
                return (2, 0.0, i)  # never measured, probe in flight: last
            return (1, ewma, i)

        ranked = sorted(rank(i) for i in candidates)
        ordered = [i for _, _, i in ranked]
        if not ordered:
            return ordered
        if ranked[0][0] == 0:
            self._claimed_at[ordered[0]] = now
        elif len(ordered) > 1 and self._rng.random() < self.settings.epsilon:
            ordered.insert(0, ordered.pop(self._rng.randrange(1, len(ordered))))
        return ordered

    def record_latency(self, index: int, seconds: float) -> None:
        now = self._clock()
        ewma = self._ewma[index]
        if ewma is None or self._is_stale(index, now):
            self._ewma[index] = seconds  # a fresh measurement replaces a stale average
        else:
            self._ewma[index] = ewma + self.settings.alpha * (seconds - ewma)
        self._sampled_at[index] = now
        self._claimed_at[index] = None

    def record_failure(self, index: int) -> None:
        slowest = max((e for e in self._ewma if e is not None), default=0.0)
        self.record_latency(index, max(self.settings.failure_penalty, 2 * slowest))

    def state_snapshot(self) -> dict[str, Any]:
        now = self._clock()
        targets = [
            {
                "ewma_seconds": self._ewma[i],
                "age_seconds": None if self._sampled_at[i] is None else now - self._sampled_at[i],
                "stale": self._is_stale(i, now),
                "probing": self._is_claimed(i, now),
            }
            for i in range(self._size)
        ]
        return {**super().state_snapshot(), "targets": targets}

    def _copy_state(self, old: Router) -> None:
        assert isinstance(old, LeastLatencyRouter)
        self._ewma = list(old._ewma)
        self._sampled_at = list(old._sampled_at)
        self._claimed_at = list(old._claimed_at)


STRATEGIES = ("fallback", "round_robin", "weighted", "least_latency")


def strategy_for(
    name: str,
    weights: Sequence[float],
    *,
    rng: random.Random,
    clock: Clock,
    latency: LatencySettings | None = None,
) -> Router:
    """A fresh router for strategy `name` over targets with these `weights` (one per target, all > 0).

    Raises ValueError for an unknown strategy, no targets, or a weight that is not a finite positive number.
    Example: `strategy_for("weighted", [3, 1], rng=random.Random(0), clock=time.monotonic).order()` -> `[0, 1]`.
    """
    if not weights:
        raise ValueError("a router needs at least one target")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"target weights must be finite and > 0, got {list(weights)}")
    if name == "fallback":
        return FallbackRouter(weights)
    if name == "round_robin":
        return RoundRobinRouter(weights)
    if name == "weighted":
        return WeightedRouter(weights)
    if name == "least_latency":
        return LeastLatencyRouter(weights, rng=rng, clock=clock, settings=latency or LatencySettings())
    raise ValueError(f"unknown routing strategy `{name}`; expected one of {', '.join(STRATEGIES)}")


def build_router(
    model: ModelConfig, *, rng: random.Random, clock: Clock, latency: LatencySettings | None = None
) -> Router:
    """The router for a configured model (its `strategy` over its targets' weights)."""
    weights = [target.weight for target in model.targets]
    return strategy_for(model.strategy, weights, rng=rng, clock=clock, latency=latency)
