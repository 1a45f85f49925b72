"""The in-process metrics store behind `get_metrics` (and, later, the Prometheus exposition).

Counting rule (DESIGN.md "Telemetry"):
- `total_requests` counts client completion requests:
  `total_requests == success_requests + failed_requests + cancelled_requests`. A request is recorded once, when it
  ends, with `record_request()`. `cancelled` is a request its client gave up on (it disconnected or cancelled the
  call) before the answer was complete: neither a success nor a failure, and never in the error counts.
- The per-provider counts (`provider_usage`, `provider_errors`, `request_count`, `error_count`, `stream_count`,
  `token_count`) count ATTEMPTS sent to that provider, recorded with `record_attempt()`; with retries and fallbacks
  they can sum to more than `total_requests`.
- A cache hit is a successful request and no attempt: the engine calls `record_request(cached=True)` (plus
  `record_cache(hit=True)`) and no `record_attempt()`.

The recording methods run on the hot path: they only add to plain ints, floats and small dicts. The proxy runs
on one asyncio event loop and none of them awaits, so each runs to completion without interleaving: no locks.
Memory is bounded: latencies live in fixed-size windows of the most recent samples (so percentiles describe
recent traffic), and label dicts are keyed by config names (providers, models, error kinds), with client-supplied
model names capped at `MAX_MODEL_LABELS`.

GenAI client metrics (OTel semantic conventions, PROTOCOLS.md section 6), recorded per attempt with
`record_operation()`: `gen_ai.client.operation.duration` (seconds, `DURATION_BUCKETS`, `error.type` on failures)
and `gen_ai.client.token.usage` (`TOKEN_BUCKETS`, input and output, only when the upstream reported usage), keyed
by provider, GenAI provider name, request model and response model. `record_request(overhead_s=)` feeds the
proxy-overhead histogram: the request's time minus the time spent waiting on upstreams, backoffs and rate limits.

Config reloads: the `Metrics` object belongs to the engine, not to a runtime, so it simply survives a swap.
Counts of a provider whose settings changed can be dropped with `reset_provider()`; `reset()` clears everything
(tests).
Imports only `proxy.types` and `proxy.config.model`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import Any

from proxy.config.model import PriceConfig
from proxy.types import Usage

DEFAULT_LATENCY_WINDOW = 2048
MAX_MODEL_LABELS = 256  # distinct model names kept; further names count under OTHER_LABEL
OTHER_LABEL = "(other)"
# A request for a model the config does not have: counted under this label, not under the name a client made up
# (which would use up the MAX_MODEL_LABELS budget, and fold later real models into OTHER_LABEL).
UNKNOWN_LABEL = "(unknown)"
_PERCENTILES = ((50, "p50"), (90, "p90"), (99, "p99"))


def cost_of(usage: Usage | None, price: PriceConfig | None) -> float:
    """The cost in currency units of `usage` at `price` (prices are per million tokens); 0.0 without a price.

    Cached input tokens (a subset of `input_tokens`) are priced at `cached_input_per_mtok` when it is set, else at
    the input price. Cache-creation tokens are priced as ordinary input.
    """
    if usage is None or price is None:
        return 0.0
    cached_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    return (
        (usage.input_tokens - cached) * price.input_per_mtok
        + cached * cached_price
        + usage.output_tokens * price.output_per_mtok
    ) / 1_000_000


# Upper bounds (seconds) of the all-time latency histogram buckets (Prometheus `le`), LLM-call shaped.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


# GenAI semantic-convention buckets: tokens in powers of 4 up to 4**13, durations doubling from 10 ms to 81.92 s.
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# The proxy's own time per request: from 50 us (the engine alone) up.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MAX_OPERATION_SERIES = 1024  # distinct (provider, models, error) series kept; further response models count as OTHER
# `gen_ai.provider.name` by provider type: the wire flavour spoken (an `openai_compatible` server speaks OpenAI's).
GENAI_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "openai_compatible": "openai"}


def genai_provider_name(provider_type: str) -> str:
    """The `gen_ai.provider.name` for a provider type (custom values for `mock` and `python` providers)."""
    return GENAI_PROVIDER_NAMES.get(provider_type, provider_type)


class Histogram:
    """An all-time histogram over fixed `bounds`: `buckets[i]` counts values in `(bounds[i-1], bounds[i]]`, the
    last one above every bound; plus the count and the sum."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.buckets[bisect_left(self.bounds, value)] += 1


class OperationStats:
    """One GenAI series: upstream call durations and, for answers whose usage the upstream reported, the tokens."""

    __slots__ = ("duration", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.duration = Histogram(DURATION_BUCKETS)
        self.input_tokens = Histogram(TOKEN_BUCKETS)
        self.output_tokens = Histogram(TOKEN_BUCKETS)


# (provider, provider type, request model, response model or "" when it failed, error type or "")
OperationKey = tuple[str, str, str, str, str]


class LatencyWindow:
    """The last `size` latency samples (seconds) for percentiles (nearest rank), plus all-time count, sum, max and
    a histogram over `LATENCY_BUCKETS` (`buckets[i]` counts samples in `(bound[i-1], bound[i]]`, the last +Inf)."""

    __slots__ = ("buckets", "count", "max", "samples", "total")

    def __init__(self, size: int = DEFAULT_LATENCY_WINDOW) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def percentile(self, p: float) -> float | None:
        """The nearest-rank `p`th percentile of the window in seconds (None when empty)."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def summary_ms(self) -> dict[str, Any]:
        """`{count, mean, max, p50, p90, p99}` in milliseconds (percentiles over the window, None when empty)."""
        ordered = sorted(self.samples)
        summary: dict[str, Any] = {
            "count": self.count,
            "mean": _ms(self.total / self.count) if self.count else None,
            "max": _ms(self.max) if self.count else None,
        }
        for p, name in _PERCENTILES:
            summary[name] = _ms(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]) if ordered else None
        return summary


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class ProviderStats:
    """Per-provider counters. Everything but the rate-limit fields counts attempts."""

    __slots__ = (
        "cost",
        "error_count",
        "errors_by_kind",
        "input_tokens",
        "latency",
        "output_tokens",
        "ratelimit_rejections",
        "ratelimit_wait_seconds",
        "ratelimit_waits",
        "request_count",
        "stream_count",
    )

    def __init__(self, window: int) -> None:
        self.request_count = self.error_count = self.stream_count = 0
        self.input_tokens = self.output_tokens = 0
        self.cost = 0.0
        self.errors_by_kind: dict[str, int] = {}
        self.latency = LatencyWindow(window)
        self.ratelimit_waits = self.ratelimit_rejections = 0
        self.ratelimit_wait_seconds = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "request_count": self.request_count,
            "error_count": self.error_count,
            "stream_count": self.stream_count,
            "token_count": self.input_tokens + self.output_tokens,
            "success_count": self.request_count - self.error_count,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": round(self.cost, 8),
            "errors_by_kind": dict(self.errors_by_kind),
            "latency_ms": self.latency.summary_ms(),
            "rate_limit_waits": self.ratelimit_waits,
            "rate_limit_wait_seconds": round(self.ratelimit_wait_seconds, 6),
            "rate_limit_rejections": self.ratelimit_rejections,
        }


class Metrics:
    """Counters for client requests, provider attempts, the cache, rate limits and reloads.

    Call `record_request()` once per client completion request, `record_attempt()` once per upstream call,
    `record_cache()` once per cache lookup, `record_ratelimit_wait()` once per limiter decision that waited or
    refused, `record_reload()` once per reload. `snapshot()` gives the `get_metrics` JSON.
    """

    def __init__(self, *, latency_window: int = DEFAULT_LATENCY_WINDOW) -> None:
        self._window = latency_window
        self.reset()

    def reset(self) -> None:
        """Forget everything (tests; never called on a reload)."""
        self.total_requests = self.success_requests = self.failed_requests = self.cancelled_requests = 0
        self.cached_requests = self.stream_requests = self.streams_truncated = 0
        self.fallbacks = self.retries = 0
        self.cache_hits = self.cache_misses = self.cache_tokens_saved = 0
        self.reloads_ok = self.reloads_rejected = 0
        self.last_reload: dict[str, Any] | None = None
        self.latency = LatencyWindow(self._window)
        self.providers: dict[str, ProviderStats] = {}
        self.models: dict[str, list[int]] = {}  # name -> [requests, successes, failures, cached]
        self.cancelled_models: dict[str, int] = {}  # name (a key of `models`) -> cancelled requests
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        self.operations: dict[OperationKey, OperationStats] = {}

    def reset_provider(self, provider: str) -> None:
        """Drop one provider's counts (e.g. after a reload changed its settings or removed it)."""
        self.providers.pop(provider, None)
        for key in [key for key in self.operations if key[0] == provider]:
            del self.operations[key]

    def _provider(self, name: str) -> ProviderStats:
        stats = self.providers.get(name)
        if stats is None:
            stats = self.providers[name] = ProviderStats(self._window)
        return stats

    # --- recording (hot path) -------------------------------------------------------------------------

    def record_request(
        self,
        model: str | None,
        *,
        success: bool,
        cached: bool = False,
        latency_s: float = 0.0,
        stream: bool = False,
        truncated: bool = False,
        fallbacks: int = 0,
        retries: int = 0,
        overhead_s: float | None = None,
        cancelled: bool = False,
    ) -> None:
        """One client request ended. `cached` means served from the cache (always a success, no attempt);
        `cancelled` that its client went away before the answer was complete (neither a success nor a failure,
        whatever `success` says); `truncated` a stream that failed after its first content chunk; `fallbacks` the
        targets moved to after a failure,
        `retries` the extra attempts on a target; `overhead_s` the proxy's own part of `latency_s` (default: all
        of it, for a request that never waited on an upstream)."""
        success = success or cached
        cancelled = cancelled and not success
        self.total_requests += 1
        if success:
            self.success_requests += 1
        elif cancelled:
            self.cancelled_requests += 1
        else:
            self.failed_requests += 1
        if cached:
            self.cached_requests += 1
        if stream:
            self.stream_requests += 1
        if truncated:
            self.streams_truncated += 1
        self.fallbacks += fallbacks
        self.retries += retries
        self.latency.add(latency_s)
        overhead = self.overhead  # Histogram.add, inlined (hot path)
        overhead_s = latency_s if overhead_s is None else overhead_s
        overhead.count += 1
        overhead.total += overhead_s
        overhead.buckets[bisect_left(OVERHEAD_BUCKETS, overhead_s)] += 1
        name = model or "(default)"
        row = self.models.get(name)
        if row is None:
            if len(self.models) >= MAX_MODEL_LABELS:
                name = OTHER_LABEL
            row = self.models.setdefault(name, [0, 0, 0, 0])
        row[0] += 1
        if cancelled:
            self.cancelled_models[name] = self.cancelled_models.get(name, 0) + 1
        else:
            row[1 if success else 2] += 1
        if cached:
            row[3] += 1

    def record_attempt(
        self,
        provider: str,
        *,
        success: bool,
        error_kind: str | None = None,
        stream: bool = False,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        latency_s: float = 0.0,
    ) -> None:
        """One call sent to `provider` ended; `error_kind` is the failure's `ErrorKind` (a str) when it failed."""
        stats = self._provider(provider)
        stats.request_count += 1
        if not success:
            stats.error_count += 1
            kind = str(error_kind) if error_kind else "unknown"
            stats.errors_by_kind[kind] = stats.errors_by_kind.get(kind, 0) + 1
        if stream:
            stats.stream_count += 1
        stats.input_tokens += input_tokens
        stats.output_tokens += output_tokens
        stats.cost += cost
        stats.latency.add(latency_s)

    def record_operation(
        self,
        provider: str,
        provider_type: str,
        request_model: str,
        response_model: str,
        duration_s: float,
        *,
        error_type: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """One upstream call ended (the GenAI client metrics): its duration, and its token usage when the upstream
        reported it (None: unknown, not recorded). `response_model` is "" for a failed call."""
        key = (provider, provider_type, request_model, response_model, error_type or "")
        stats = self.operations.get(key)
        if stats is None:
            stats = self._operation(key)
        histogram = stats.duration  # Histogram.add, inlined (hot path)
        histogram.count += 1
        histogram.total += duration_s
        histogram.buckets[bisect_left(DURATION_BUCKETS, duration_s)] += 1
        if input_tokens is not None:
            histogram = stats.input_tokens
            histogram.count += 1
            histogram.total += input_tokens
            histogram.buckets[bisect_left(TOKEN_BUCKETS, input_tokens)] += 1
        if output_tokens is not None:
            histogram = stats.output_tokens
            histogram.count += 1
            histogram.total += output_tokens
            histogram.buckets[bisect_left(TOKEN_BUCKETS, output_tokens)] += 1

    def _operation(self, key: OperationKey) -> OperationStats:
        if len(self.operations) >= MAX_OPERATION_SERIES:  # bounded: further response models share one series
            key = (key[0], key[1], key[2], OTHER_LABEL, key[4])
        stats = self.operations.get(key)
        if stats is None:
            stats = self.operations[key] = OperationStats()
        return stats

    def record_cache(self, hit: bool, tokens_saved: int = 0) -> None:
        """One cache lookup; a hit saved `tokens_saved` tokens (the cached answer's input + output)."""
        if hit:
            self.cache_hits += 1
            self.cache_tokens_saved += tokens_saved
        else:
            self.cache_misses += 1

    def record_ratelimit_wait(self, provider: str, seconds: float, admitted: bool) -> None:
        """A rate limiter held a request for `seconds`; `admitted` False means it gave up (moved to the next target)."""
        stats = self._provider(provider)
        stats.ratelimit_waits += 1
        stats.ratelimit_wait_seconds += seconds
        if not admitted:
            stats.ratelimit_rejections += 1

    def record_reload(self, ok: bool, *, version: str | None = None, detail: str | None = None) -> None:
        """A config reload was applied (`ok`) or rejected. `detail` must be secret-free (e.g. issue count)."""
        if ok:
            self.reloads_ok += 1
        else:
            self.reloads_rejected += 1
        self.last_reload = {"ok": ok, "version": version, "detail": detail}

    # --- reading ----------------------------------------------------------------------------------------

    def snapshot(self, provider: str | None = None, *, providers: Iterable[str] = ()) -> dict[str, Any]:
        """The `get_metrics` JSON: DESIGN.md's keys first, then extras.

        `provider` limits the per-provider parts to that one provider (zeros when it saw no traffic); the request
        totals stay global, since a client request is not one provider's. `providers` names providers to list
        with zeros even when they saw no traffic (the configured ones).
        """
        if provider is not None:
            names = [provider]
        else:
            names = list(self.providers)
            names.extend(name for name in providers if name not in self.providers)
        empty = ProviderStats(1)
        rows = {name: self.providers.get(name, empty).snapshot() for name in names}
        errors_by_kind: dict[str, int] = {}
        for name in names:
            for kind, count in rows[name]["errors_by_kind"].items():
                errors_by_kind[kind] = errors_by_kind.get(kind, 0) + count
        lookups = self.cache_hits + self.cache_misses
        return {
            "total_requests": self.total_requests,
            "success_requests": self.success_requests,
            "failed_requests": self.failed_requests,
            "provider_usage": {name: row["request_count"] for name, row in rows.items()},
            "provider_errors": {name: row["error_count"] for name, row in rows.items()},
            "provider_metrics": rows,
            "cancelled_requests": self.cancelled_requests,
            "cached_requests": self.cached_requests,
            "stream_requests": self.stream_requests,
            "streams_truncated": self.streams_truncated,
            "fallbacks": self.fallbacks,
            "retries": self.retries,
            "latency_ms": self.latency.summary_ms(),
            "overhead_ms": {
                "count": self.overhead.count,
                "mean": _ms(self.overhead.total / self.overhead.count) if self.overhead.count else None,
            },
            "errors_by_kind": errors_by_kind,
            "tokens": {
                "input": sum(row["input_tokens"] for row in rows.values()),
                "output": sum(row["output_tokens"] for row in rows.values()),
            },
            "cost": round(sum(row["cost"] for row in rows.values()), 8),
            "cache": {
                "hits": self.cache_hits,
                "misses": self.cache_misses,
                "hit_rate": round(self.cache_hits / lookups, 4) if lookups else None,
                "tokens_saved": self.cache_tokens_saved,
            },
            "rate_limit": {
                "waits": sum(row["rate_limit_waits"] for row in rows.values()),
                "wait_seconds": round(sum(row["rate_limit_wait_seconds"] for row in rows.values()), 6),
                "rejections": sum(row["rate_limit_rejections"] for row in rows.values()),
            },
            "reloads": {"ok": self.reloads_ok, "rejected": self.reloads_rejected, "last": self.last_reload},
            "models": {
                name: {
                    "requests": row[0],
                    "successes": row[1],
                    "failures": row[2],
                    "cancelled": self.cancelled_models.get(name, 0),
                    "cached": row[3],
                }
                for name, row in self.models.items()
            },
        }
