"""The metrics store (proxy/metrics.py) as OTLP metrics data, for the push in proxy/telemetry.py.

Read at export time, like `/metrics` (proxy/fronts/prometheus.py), so the hot path pays nothing and the three views
(`/metrics`, `get_metrics`, OTLP) agree. All cumulative since `start_ns`:
- `gen_ai.client.operation.duration` (s) and `gen_ai.client.token.usage` ({token}): the GenAI semantic
  conventions' histograms with their buckets and attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
  `gen_ai.request.model`, `gen_ai.response.model`, `error.type`, `gen_ai.token.type`) plus `proxy.provider`;
- `llm_proxy.overhead` and `llm_proxy.request.duration` (s) histograms;
- the counters, named as at `/metrics` without the Prometheus suffixes: `llm_proxy.requests{model,result}`
  (`result`: success, failure, cancelled),
  `llm_proxy.upstream.requests{provider}`, `llm_proxy.upstream.errors{provider,kind}`,
  `llm_proxy.tokens{provider,direction}`, `llm_proxy.cost{provider}`, `llm_proxy.ratelimit.waits{provider}`,
  `llm_proxy.cache.lookups{result}`, `llm_proxy.fallbacks`, `llm_proxy.retries`, `llm_proxy.streams.truncated`,
  `llm_proxy.reloads{result}`.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from proxy import __version__
from proxy.metrics import (
    DURATION_BUCKETS,
    LATENCY_BUCKETS,
    TOKEN_BUCKETS,
    LatencyWindow,
    Metrics,
    OperationKey,
    genai_provider_name,
)
from proxy.metrics import Histogram as StoreHistogram

__all__ = ["metrics_data"]

SCOPE = "llm-proxy"

_CUMULATIVE = AggregationTemporality.CUMULATIVE


def _histogram_point(
    attributes: dict[str, Any], hist: StoreHistogram | LatencyWindow, bounds: tuple[float, ...], start: int, now: int
) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=hist.count,
        sum=hist.total,
        bucket_counts=list(hist.buckets),
        explicit_bounds=list(bounds),
        min=None,  # type: ignore[arg-type]  # not kept (optional in OTLP)
        max=hist.max if isinstance(hist, LatencyWindow) and hist.count else None,  # type: ignore[arg-type]
    )


def _sum(name: str, description: str, unit: str, points: list[tuple[dict[str, Any], float]], start: int, now: int):
    data = [NumberDataPoint(attributes=a, start_time_unix_nano=start, time_unix_nano=now, value=v) for a, v in points]
    return Metric(name, description, unit, Sum(data, _CUMULATIVE, is_monotonic=True))


def _genai_attributes(key: OperationKey) -> dict[str, Any]:
    provider, provider_type, request_model, response_model, error = key
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": genai_provider_name(provider_type),
        "gen_ai.request.model": request_model,
        "proxy.provider": provider,
    }
    if response_model:
        attributes["gen_ai.response.model"] = response_model
    if error:
        attributes["error.type"] = error
    return attributes


def metrics_data(metrics: Metrics, resource: Resource, start_ns: int) -> MetricsData:
    """The store's metrics as cumulative OTLP data (the GenAI histograms, the proxy overhead, the counters)."""
    now = time.time_ns()
    durations, tokens = [], []
    for key, stats in metrics.operations.items():
        attributes = _genai_attributes(key)
        durations.append(_histogram_point(attributes, stats.duration, DURATION_BUCKETS, start_ns, now))
        for kind, hist in (("input", stats.input_tokens), ("output", stats.output_tokens)):
            if hist.count:
                point = {**attributes, "gen_ai.token.type": kind}
                tokens.append(_histogram_point(point, hist, TOKEN_BUCKETS, start_ns, now))
    overhead = metrics.overhead
    found = [
        Metric("gen_ai.client.operation.duration", "GenAI operation duration.", "s", Histogram(durations, _CUMULATIVE)),
        Metric(
            "gen_ai.client.token.usage",
            "Number of input and output tokens used.",
            "{token}",
            Histogram(tokens, _CUMULATIVE),
        ),
        Metric(
            "llm_proxy.overhead",
            "The proxy's own time per request (not waiting on upstreams, backoffs or rate limits).",
            "s",
            Histogram([_histogram_point({}, overhead, overhead.bounds, start_ns, now)], _CUMULATIVE),
        ),
        Metric(
            "llm_proxy.request.duration",
            "Client request latency.",
            "s",
            Histogram([_histogram_point({}, metrics.latency, LATENCY_BUCKETS, start_ns, now)], _CUMULATIVE),
        ),
    ]
    requests = []
    for model, (_, successes, failures, _cached) in metrics.models.items():
        requests += [
            ({"model": model, "result": "success"}, successes),
            ({"model": model, "result": "failure"}, failures),
            ({"model": model, "result": "cancelled"}, metrics.cancelled_models.get(model, 0)),
        ]
    attempts, errors, token_counts, costs, waits = [], [], [], [], []
    for name, stats in metrics.providers.items():
        attempts.append(({"provider": name}, stats.request_count))
        errors += [({"provider": name, "kind": kind}, count) for kind, count in stats.errors_by_kind.items()]
        token_counts += [
            ({"provider": name, "direction": "input"}, stats.input_tokens),
            ({"provider": name, "direction": "output"}, stats.output_tokens),
        ]
        costs.append(({"provider": name}, stats.cost))
        waits.append(({"provider": name}, stats.ratelimit_waits))
    counters = [
        ("llm_proxy.requests", "Client requests.", "{request}", requests),
        ("llm_proxy.upstream.requests", "Attempts sent upstream.", "{request}", attempts),
        ("llm_proxy.upstream.errors", "Failed attempts.", "{request}", errors),
        ("llm_proxy.tokens", "Tokens reported by the upstreams.", "{token}", token_counts),
        ("llm_proxy.cost", "Cost from `pricing`.", "USD", costs),
        ("llm_proxy.ratelimit.waits", "Rate-limit waits.", "{wait}", waits),
        (
            "llm_proxy.cache.lookups",
            "Response cache lookups.",
            "{lookup}",
            [({"result": "hit"}, metrics.cache_hits), ({"result": "miss"}, metrics.cache_misses)],
        ),
        ("llm_proxy.fallbacks", "Targets moved past after a failure.", "{fallback}", [({}, metrics.fallbacks)]),
        ("llm_proxy.retries", "Extra attempts on the same target.", "{retry}", [({}, metrics.retries)]),
        (
            "llm_proxy.streams.truncated",
            "Streams that failed after their first chunk.",
            "{stream}",
            [({}, metrics.streams_truncated)],
        ),
        (
            "llm_proxy.reloads",
            "Config reloads.",
            "{reload}",
            [({"result": "applied"}, metrics.reloads_ok), ({"result": "rejected"}, metrics.reloads_rejected)],
        ),
    ]
    found += [_sum(name, text, unit, points, start_ns, now) for name, text, unit, points in counters]
    scope = InstrumentationScope(SCOPE, __version__)
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, found, "")], "")])
