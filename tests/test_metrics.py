"""The metrics store: the counting rule, percentiles, bounded memory, cost math and the `get_metrics` shape."""

from __future__ import annotations

import json

import pytest

from proxy.config.model import PriceConfig
from proxy.errors import ErrorKind
from proxy.metrics import MAX_MODEL_LABELS, OTHER_LABEL, LatencyWindow, Metrics, cost_of
from proxy.types import Usage

DESIGN_KEYS = [
    "total_requests",
    "success_requests",
    "failed_requests",
    "provider_usage",
    "provider_errors",
    "provider_metrics",
]
DESIGN_PROVIDER_KEYS = ["request_count", "error_count", "stream_count", "token_count"]


def replay_traffic(metrics: Metrics) -> None:
    """Three client requests: one retried then fell back, one plain, one cached; plus one that failed everywhere."""
    # 1: openai 429, openai 429 again (a retry), then anthropic answers (a fallback)
    metrics.record_attempt("openai", success=False, error_kind=ErrorKind.RATE_LIMITED, latency_s=0.1)
    metrics.record_attempt("openai", success=False, error_kind=ErrorKind.RATE_LIMITED, latency_s=0.1)
    metrics.record_attempt("anthropic", success=True, input_tokens=100, output_tokens=20, latency_s=0.5)
    metrics.record_request("default", success=True, latency_s=0.8, fallbacks=1, retries=1)
    # 2: openai answers a stream
    metrics.record_attempt("openai", success=True, stream=True, input_tokens=10, output_tokens=5, latency_s=0.2)
    metrics.record_request("default", success=True, latency_s=0.2, stream=True)
    # 3: a cache hit: a success and no attempt
    metrics.record_cache(hit=True, tokens_saved=15)
    metrics.record_request("default", success=True, cached=True, latency_s=0.001)
    # 4: both providers fail
    metrics.record_attempt("openai", success=False, error_kind=ErrorKind.SERVER, latency_s=0.3)
    metrics.record_attempt("anthropic", success=False, error_kind=ErrorKind.TIMEOUT, latency_s=1.0)
    metrics.record_request("fast", success=False, latency_s=1.3, fallbacks=1)


def test_counting_rule_attempts_exceed_requests_and_totals_add_up():
    metrics = Metrics()
    replay_traffic(metrics)
    snap = metrics.snapshot()
    assert snap["total_requests"] == 4
    assert snap["success_requests"] == 3 and snap["failed_requests"] == 1
    assert snap["success_requests"] + snap["failed_requests"] == snap["total_requests"]
    assert snap["provider_usage"] == {"openai": 4, "anthropic": 2}
    assert sum(snap["provider_usage"].values()) == 6 > snap["total_requests"]
    assert snap["provider_errors"] == {"openai": 3, "anthropic": 1}
    assert snap["fallbacks"] == 2 and snap["retries"] == 1


def test_cache_hit_is_a_success_and_no_attempt():
    metrics = Metrics()
    metrics.record_cache(hit=True, tokens_saved=42)
    metrics.record_request("default", success=True, cached=True)
    metrics.record_cache(hit=False)
    snap = metrics.snapshot()
    assert snap["total_requests"] == 1 and snap["success_requests"] == 1 and snap["failed_requests"] == 0
    assert snap["provider_usage"] == {} and snap["provider_metrics"] == {}
    assert snap["cached_requests"] == 1
    assert snap["cache"] == {"hits": 1, "misses": 1, "hit_rate": 0.5, "tokens_saved": 42}
    assert snap["models"]["default"] == {"requests": 1, "successes": 1, "failures": 0, "cancelled": 0, "cached": 1}


def test_snapshot_shape_is_exactly_designs_then_extras():
    metrics = Metrics()
    replay_traffic(metrics)
    snap = metrics.snapshot()
    assert list(snap)[: len(DESIGN_KEYS)] == DESIGN_KEYS
    for name, row in snap["provider_metrics"].items():
        assert list(row)[: len(DESIGN_PROVIDER_KEYS)] == DESIGN_PROVIDER_KEYS
        assert snap["provider_usage"][name] == row["request_count"]
        assert snap["provider_errors"][name] == row["error_count"]
    openai = snap["provider_metrics"]["openai"]
    assert openai["request_count"] == 4 and openai["error_count"] == 3
    assert openai["stream_count"] == 1 and openai["token_count"] == 15
    assert snap["provider_metrics"]["anthropic"]["token_count"] == 120
    assert json.loads(json.dumps(snap)) == snap  # plain JSON all the way down


def test_snapshot_of_an_empty_store_matches_the_design_example_types():
    snap = Metrics().snapshot()
    assert {key: snap[key] for key in DESIGN_KEYS} == {
        "total_requests": 0,
        "success_requests": 0,
        "failed_requests": 0,
        "provider_usage": {},
        "provider_errors": {},
        "provider_metrics": {},
    }
    assert snap["latency_ms"]["p50"] is None and snap["cache"]["hit_rate"] is None


def test_extras_errors_by_kind_streams_tokens():
    metrics = Metrics()
    replay_traffic(metrics)
    metrics.record_request("default", success=False, stream=True, truncated=True)
    snap = metrics.snapshot()
    assert snap["errors_by_kind"] == {"rate_limited": 2, "server": 1, "timeout": 1}
    assert snap["provider_metrics"]["openai"]["errors_by_kind"] == {"rate_limited": 2, "server": 1}
    assert snap["stream_requests"] == 2 and snap["streams_truncated"] == 1
    assert snap["tokens"] == {"input": 110, "output": 25}
    assert snap["models"]["fast"] == {"requests": 1, "successes": 0, "failures": 1, "cancelled": 0, "cached": 0}


def test_a_cancelled_request_is_neither_a_success_nor_a_failure():
    metrics = Metrics()
    metrics.record_request("default", success=True)
    metrics.record_request("default", success=False, cancelled=True, stream=True)
    metrics.record_request("default", success=False)
    metrics.record_request("default", success=True, cached=True, cancelled=True)  # a served cache hit stays a success
    snap = metrics.snapshot()
    assert (snap["total_requests"], snap["success_requests"]) == (4, 2)
    assert (snap["failed_requests"], snap["cancelled_requests"]) == (1, 1)
    assert snap["total_requests"] == snap["success_requests"] + snap["failed_requests"] + snap["cancelled_requests"]
    assert snap["models"]["default"] == {"requests": 4, "successes": 2, "failures": 1, "cancelled": 1, "cached": 1}
    assert snap["errors_by_kind"] == {} and snap["stream_requests"] == 1
    metrics.reset()
    assert metrics.snapshot()["cancelled_requests"] == 0 and metrics.cancelled_models == {}


def test_failed_attempt_without_a_kind_counts_as_unknown():
    metrics = Metrics()
    metrics.record_attempt("p", success=False)
    assert metrics.snapshot()["errors_by_kind"] == {"unknown": 1}


def test_snapshot_for_one_provider_and_configured_idle_providers():
    metrics = Metrics()
    replay_traffic(metrics)
    only = metrics.snapshot("anthropic")
    assert only["provider_usage"] == {"anthropic": 2}
    assert list(only["provider_metrics"]) == ["anthropic"]
    assert only["total_requests"] == 4  # client totals stay global
    assert only["errors_by_kind"] == {"timeout": 1}
    idle = metrics.snapshot("local")
    assert idle["provider_usage"] == {"local": 0} and idle["provider_metrics"]["local"]["request_count"] == 0
    listed = metrics.snapshot(providers=["openai", "anthropic", "local"])
    assert listed["provider_usage"] == {"openai": 4, "anthropic": 2, "local": 0}


def test_rate_limit_waits_and_reloads():
    metrics = Metrics()
    metrics.record_ratelimit_wait("openai", 0.25, admitted=True)
    metrics.record_ratelimit_wait("openai", 2.0, admitted=False)
    metrics.record_reload(True, version="abc123")
    metrics.record_reload(False, version="def456", detail="2 issues")
    snap = metrics.snapshot()
    assert snap["rate_limit"] == {"waits": 2, "wait_seconds": 2.25, "rejections": 1}
    row = snap["provider_metrics"]["openai"]
    assert row["rate_limit_waits"] == 2 and row["rate_limit_rejections"] == 1
    assert row["request_count"] == 0  # waiting is not an attempt
    assert snap["reloads"] == {
        "ok": 1,
        "rejected": 1,
        "last": {"ok": False, "version": "def456", "detail": "2 issues"},
    }


def test_state_survives_until_reset_and_reset_provider_drops_one():
    metrics = Metrics()
    replay_traffic(metrics)
    metrics.reset_provider("openai")
    snap = metrics.snapshot()
    assert "openai" not in snap["provider_usage"] and snap["provider_usage"]["anthropic"] == 2
    assert snap["total_requests"] == 4
    metrics.reset()
    assert metrics.snapshot() == Metrics().snapshot()


# --- latency ----------------------------------------------------------------------------------------------


def test_percentiles_on_known_data():
    window = LatencyWindow(1000)
    for ms in range(100, 0, -1):  # 1..100 ms, in reverse so sorting matters
        window.add(ms / 1000)
    summary = window.summary_ms()
    assert summary["p50"] == 50.0 and summary["p90"] == 90.0 and summary["p99"] == 99.0
    assert summary["count"] == 100 and summary["max"] == 100.0 and summary["mean"] == 50.5
    assert window.percentile(100) == 0.1 and window.percentile(1) == 0.001


def test_request_and_attempt_latencies_are_summarized():
    metrics = Metrics()
    for ms in (10, 20, 30, 40):
        metrics.record_request("default", success=True, latency_s=ms / 1000)
        metrics.record_attempt("openai", success=True, latency_s=ms / 2000)
    snap = metrics.snapshot()
    assert snap["latency_ms"]["p50"] == 20.0 and snap["latency_ms"]["p99"] == 40.0
    assert snap["provider_metrics"]["openai"]["latency_ms"]["p90"] == 20.0


def test_memory_stays_bounded():
    metrics = Metrics(latency_window=512)
    for i in range(100_000):
        metrics.record_request(f"client-model-{i}", success=True, latency_s=i / 1e6)
        metrics.record_attempt("openai", success=True, latency_s=i / 1e6)
    assert len(metrics.latency.samples) == 512
    assert len(metrics.providers["openai"].latency.samples) == 512
    assert len(metrics.models) == MAX_MODEL_LABELS + 1
    assert metrics.models[OTHER_LABEL][0] == 100_000 - MAX_MODEL_LABELS
    snap = metrics.snapshot()
    assert snap["latency_ms"]["count"] == 100_000
    assert snap["latency_ms"]["p50"] >= 99.0  # the window holds the most recent samples (99.488..99.999 ms)


# --- cost -------------------------------------------------------------------------------------------------


def test_cost_per_million_tokens():
    price = PriceConfig(input_per_mtok=0.15, output_per_mtok=0.60)
    assert cost_of(Usage(1_000_000, 0), price) == pytest.approx(0.15)
    assert cost_of(Usage(2000, 500), price) == pytest.approx((2000 * 0.15 + 500 * 0.60) / 1e6)


def test_cached_input_priced_at_its_own_rate_when_set():
    price = PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3)
    usage = Usage(input_tokens=10_000, output_tokens=1000, cached_input_tokens=8000)
    assert cost_of(usage, price) == pytest.approx((2000 * 3.0 + 8000 * 0.3 + 1000 * 15.0) / 1e6)
    without = PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0)
    assert cost_of(usage, without) == pytest.approx((10_000 * 3.0 + 1000 * 15.0) / 1e6)


def test_cost_without_price_or_usage_is_zero():
    assert cost_of(Usage(100, 100), None) == 0.0
    assert cost_of(None, PriceConfig(input_per_mtok=1.0)) == 0.0


def test_cost_accumulates_per_provider_and_overall():
    metrics = Metrics()
    metrics.record_attempt("openai", success=True, cost=0.25)
    metrics.record_attempt("openai", success=True, cost=0.5)
    metrics.record_attempt("anthropic", success=True, cost=1.0)
    snap = metrics.snapshot()
    assert snap["provider_metrics"]["openai"]["cost"] == pytest.approx(0.75)
    assert snap["cost"] == pytest.approx(1.75)
