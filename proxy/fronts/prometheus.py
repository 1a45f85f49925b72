"""`GET /metrics`: the engine's metrics store in the Prometheus text format, read at scrape time.

Nothing is recorded twice: a `prometheus_client` collector turns `Metrics` (proxy/metrics.py), the breakers, the
cache backend's counters and the config version into metric families when Prometheus scrapes, so the hot path
pays nothing for the exposition. Names follow Prometheus conventions (`_total` counters, `_seconds` units):

    llm_proxy_requests_total{model,result}             client requests by configured model
                                                       (success|failure|cancelled: the client went away)
    llm_proxy_cached_requests_total{model}             ... of which served from the cache
    llm_proxy_request_duration_seconds                 client request latency (histogram)
    llm_proxy_stream_requests_total, llm_proxy_streams_truncated_total, llm_proxy_fallbacks_total,
    llm_proxy_retries_total
    llm_proxy_upstream_requests_total{provider}        attempts sent upstream
    llm_proxy_upstream_errors_total{provider,kind}     failed attempts by error kind
    llm_proxy_upstream_streams_total{provider}
    llm_proxy_upstream_duration_seconds{provider}      attempt latency (histogram)
    llm_proxy_tokens_total{provider,direction}         input|output tokens reported by the upstreams
    llm_proxy_cost_usd_total{provider}                 from the providers' `pricing`
    llm_proxy_cache_lookups_total{result}, llm_proxy_cache_tokens_saved_total, llm_proxy_cache_entries
    llm_proxy_ratelimit_waits_total{provider}, llm_proxy_ratelimit_wait_seconds_total{provider},
    llm_proxy_ratelimit_rejections_total{provider}
    llm_proxy_breaker_state{provider,target,state}     1 for the target's current state, 0 for the others
    llm_proxy_reloads_total{result}                    applied|rejected
    llm_proxy_config_info{version}                     always 1
    llm_proxy_overhead_seconds                         the proxy's own time per request (histogram): its latency
                                                       minus upstream calls, backoffs and rate-limit waits
    gen_ai_client_operation_duration_seconds{...}      per upstream call (histogram, the GenAI convention's
                                                       buckets); labels gen_ai_operation_name,
                                                       gen_ai_provider_name, gen_ai_request_model,
                                                       gen_ai_response_model, error_type, provider
    gen_ai_client_token_usage{..., gen_ai_token_type}  tokens per answered call (histogram, powers of 4)

The GenAI names are the OTel semantic conventions' (PROTOCOLS.md section 6) in Prometheus spelling (dots become
underscores, the unit a suffix); the same store is pushed over OTLP with the OTel names (proxy/telemetry.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from proxy.engine import Engine
from proxy.metrics import LATENCY_BUCKETS, Histogram, LatencyWindow, genai_provider_name

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BREAKER_STATES = ("closed", "open", "half_open")


_GENAI_LABELS = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "provider",
]


def _histogram(family: HistogramMetricFamily, labels: list[str], window: LatencyWindow | Histogram) -> None:
    bounds = window.bounds if isinstance(window, Histogram) else LATENCY_BUCKETS
    cumulative = 0
    buckets = []
    for bound, count in zip((*map(str, bounds), "+Inf"), window.buckets, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, window.total)


class EngineCollector(Collector):
    """Reads the engine's state into metric families on every scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        metrics = engine.metrics
        yield from self._requests(engine)
        yield from self._upstreams(engine)
        cache = engine.cache.stats()
        lookups = CounterMetricFamily("llm_proxy_cache_lookups", "Response cache lookups.", labels=["result"])
        lookups.add_metric(["hit"], metrics.cache_hits)
        lookups.add_metric(["miss"], metrics.cache_misses)
        yield lookups
        yield CounterMetricFamily(
            "llm_proxy_cache_tokens_saved", "Tokens not spent thanks to cache hits.", value=metrics.cache_tokens_saved
        )
        yield GaugeMetricFamily("llm_proxy_cache_entries", "Entries in the response cache.", value=cache["entries"])
        yield from self._breakers(engine)
        reloads = CounterMetricFamily("llm_proxy_reloads", "Config reloads.", labels=["result"])
        reloads.add_metric(["applied"], metrics.reloads_ok)
        reloads.add_metric(["rejected"], metrics.reloads_rejected)
        yield reloads
        info = GaugeMetricFamily("llm_proxy_config_info", "The config version being served.", labels=["version"])
        info.add_metric([engine.runtime.config.version_hash], 1)
        yield info
        yield from self._state(engine)
        yield from self._genai(engine)

    def _genai(self, engine: Engine) -> Iterator[Metric]:
        metrics = engine.metrics
        overhead = HistogramMetricFamily(
            "llm_proxy_overhead_seconds",
            "The proxy's own time per request: latency minus upstream calls, backoffs and rate-limit waits.",
            labels=[],
        )
        _histogram(overhead, [], metrics.overhead)
        yield overhead
        duration = HistogramMetricFamily(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (one per upstream call).",
            labels=[*_GENAI_LABELS, "error_type"],
        )
        tokens = HistogramMetricFamily(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (one per answered upstream call).",
            labels=[*_GENAI_LABELS, "gen_ai_token_type"],
        )
        for (provider, provider_type, request_model, response_model, error), stats in metrics.operations.items():
            labels = ["chat", genai_provider_name(provider_type), request_model, response_model, provider]
            _histogram(duration, [*labels, error], stats.duration)
            for kind, histogram in (("input", stats.input_tokens), ("output", stats.output_tokens)):
                if histogram.count:
                    _histogram(tokens, [*labels, kind], histogram)
        yield duration
        yield tokens

    def _requests(self, engine: Engine) -> Iterator[Metric]:
        metrics = engine.metrics
        requests = CounterMetricFamily("llm_proxy_requests", "Client requests.", labels=["model", "result"])
        cached = CounterMetricFamily("llm_proxy_cached_requests", "Requests served from the cache.", labels=["model"])
        cancelled = metrics.cancelled_models
        for model, (_, successes, failures, hits) in metrics.models.items():
            requests.add_metric([model, "success"], successes)
            requests.add_metric([model, "failure"], failures)
            requests.add_metric([model, "cancelled"], cancelled.get(model, 0))
            cached.add_metric([model], hits)
        yield requests
        yield cached
        duration = HistogramMetricFamily(
            "llm_proxy_request_duration_seconds", "Client request latency.", unit="", labels=[]
        )
        _histogram(duration, [], metrics.latency)
        yield duration
        for name, text, value in (
            ("llm_proxy_stream_requests", "Streaming client requests.", metrics.stream_requests),
            ("llm_proxy_streams_truncated", "Streams that failed after their first chunk.", metrics.streams_truncated),
            ("llm_proxy_fallbacks", "Targets moved past after a failure.", metrics.fallbacks),
            ("llm_proxy_retries", "Extra attempts on the same target.", metrics.retries),
        ):
            yield CounterMetricFamily(name, text, value=value)

    def _upstreams(self, engine: Engine) -> Iterator[Metric]:
        names = list(dict.fromkeys([*engine.runtime.config.providers, *engine.metrics.providers]))
        attempts = CounterMetricFamily("llm_proxy_upstream_requests", "Attempts sent upstream.", labels=["provider"])
        errors = CounterMetricFamily("llm_proxy_upstream_errors", "Failed attempts.", labels=["provider", "kind"])
        streams = CounterMetricFamily("llm_proxy_upstream_streams", "Streaming attempts.", labels=["provider"])
        tokens = CounterMetricFamily("llm_proxy_tokens", "Tokens reported.", labels=["provider", "direction"])
        cost = CounterMetricFamily("llm_proxy_cost_usd", "Cost from `pricing`, in USD.", labels=["provider"])
        waits = CounterMetricFamily("llm_proxy_ratelimit_waits", "Rate-limit waits.", labels=["provider"])
        waited = CounterMetricFamily(
            "llm_proxy_ratelimit_wait_seconds", "Time spent waiting for rate limits.", labels=["provider"]
        )
        rejected = CounterMetricFamily(
            "llm_proxy_ratelimit_rejections", "Requests a rate limit moved on.", labels=["provider"]
        )
        duration = HistogramMetricFamily("llm_proxy_upstream_duration_seconds", "Attempt latency.", labels=["provider"])
        for name in names:
            stats = engine.metrics.providers.get(name)
            if stats is None:
                stats_window = LatencyWindow(1)
                values = (0, 0, 0, 0, 0.0, 0, 0.0, 0)
                kinds: dict[str, int] = {}
            else:
                stats_window = stats.latency
                values = (
                    stats.request_count,
                    stats.stream_count,
                    stats.input_tokens,
                    stats.output_tokens,
                    stats.cost,
                    stats.ratelimit_waits,
                    stats.ratelimit_wait_seconds,
                    stats.ratelimit_rejections,
                )
                kinds = stats.errors_by_kind
            count, stream_count, tokens_in, tokens_out, usd, wait_count, wait_seconds, rejections = values
            attempts.add_metric([name], count)
            streams.add_metric([name], stream_count)
            tokens.add_metric([name, "input"], tokens_in)
            tokens.add_metric([name, "output"], tokens_out)
            cost.add_metric([name], usd)
            waits.add_metric([name], wait_count)
            waited.add_metric([name], wait_seconds)
            rejected.add_metric([name], rejections)
            for kind, value in kinds.items():
                errors.add_metric([name, kind], value)
            _histogram(duration, [name], stats_window)
        yield from (attempts, errors, streams, tokens, cost, waits, waited, rejected, duration)

    def _state(self, engine: Engine) -> Iterator[Metric]:
        """Shared state in Redis (only when used): is it answering, and what ran without it."""
        state, cache = engine.runtime.state_stats(), engine.cache.stats()
        redis_cache = cache.get("backend") == "redis"
        if state is None and not redis_cache:
            return
        up = GaugeMetricFamily(
            "llm_proxy_state_up", "1 while Redis answers, 0 while it is unavailable.", labels=["client"]
        )
        fallbacks = CounterMetricFamily(
            "llm_proxy_state_fallbacks", "Operations served without Redis while it was unavailable.", labels=["what"]
        )
        if state is not None:
            up.add_metric(["limits"], 1 if state["available"] else 0)
            fallbacks.add_metric(["ratelimit"], state["fallbacks"].get("ratelimit", 0))
        if redis_cache:
            up.add_metric(["cache"], 1 if cache["available"] else 0)
            fallbacks.add_metric(["cache"], cache["fallbacks"])
        yield up
        yield fallbacks
        if state is not None:
            for name, text, key in (
                ("llm_proxy_state_refusals", "Calls refused while Redis was unavailable (fail_closed).", "refusals"),
                ("llm_proxy_state_failures", "Redis operations that failed or timed out.", "failures"),
                ("llm_proxy_state_outages", "Times Redis became unavailable.", "outages"),
            ):
                yield CounterMetricFamily(name, text, value=state[key])

    def _breakers(self, engine: Engine) -> Iterator[Metric]:
        runtime = engine.runtime
        now = runtime.clock()
        family = GaugeMetricFamily(
            "llm_proxy_breaker_state", "Circuit breaker state per target.", labels=["provider", "target", "state"]
        )
        for label, breaker in runtime.breakers.items():
            provider, _, model = label.partition("/")
            current = breaker.state(now).value
            for state in _BREAKER_STATES:
                family.add_metric([provider, model, state], 1 if state == current else 0)
        yield family


def metrics_route_handler(engine: Engine):
    """The `/metrics` handler for `engine` (its own registry, so several apps in one process do not clash)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return metrics_endpoint
