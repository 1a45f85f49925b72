"""The GenAI client histograms, the proxy-overhead histogram and the engine's counters: at `/metrics`, in the
`get_metrics` JSON and as OTLP data, all read from the one metrics store, so they agree."""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import ProxyError
from proxy.metrics import DURATION_BUCKETS, TOKEN_BUCKETS
from proxy.otel_metrics import metrics_data
from proxy.types import ChatRequest
from tests.engine_helpers import FakeClock, make_engine
from tests.http_server import engine_app

CONFIG = """
version: 1
providers:
  good: {type: mock, mock: {reply: "a fine answer of several words"}}
  flaky: {type: mock, mock: {fault: {status: 500, first: 2}}}
retry: {max_attempts: 2, initial_backoff: 1ms, max_backoff: 2ms}
models:
  default: {targets: [{provider: flaky, model: mock-f}, {provider: good, model: mock-1}]}
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def genai(provider: str, kind: str, request_model: str, response_model: str, **more: str) -> tuple:
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": kind,
        "gen_ai_request_model": request_model,
        "gen_ai_response_model": response_model,
        "provider": provider,
        **more,
    }
    return tuple(sorted(labels.items()))


async def test_metrics_endpoint_get_metrics_and_otlp_agree():
    async with engine_app(CONFIG) as (base_url, engine):
        answered = await engine.complete(ChatRequest.from_prompt("one", temperature=0))  # flaky fails twice
        await engine.complete(ChatRequest.from_prompt("one", temperature=0))  # a cache hit
        await engine.complete(ChatRequest.from_prompt("two"))  # flaky has recovered
        with pytest.raises(ProxyError):
            await engine.complete(ChatRequest.from_prompt("x", model="nope"))
        engine.metrics.record_request("default", success=False, cancelled=True)  # a client that went away
        async with aiohttp.ClientSession(base_url) as session, session.get("/metrics") as response:
            got = samples(await response.text())
        snapshot = engine.metrics_snapshot()
        data = encode_metrics(metrics_data(engine.metrics, Resource.create({}), 0))
    usage = answered.usage
    failed = genai("flaky", "mock", "mock-f", "", error_type="server")
    ok = genai("good", "mock", "mock-1", answered.model, error_type="")
    assert got[("gen_ai_client_operation_duration_seconds_count", failed)] == 2
    assert got[("gen_ai_client_operation_duration_seconds_count", ok)] == 1  # the cache hit made no call
    last = ("le", str(DURATION_BUCKETS[-1]))
    assert got[("gen_ai_client_operation_duration_seconds_bucket", tuple(sorted((*ok, last))))] == 1
    recovered = genai("flaky", "mock", "mock-f", "mock-f", error_type="")
    assert got[("gen_ai_client_operation_duration_seconds_count", recovered)] == 1
    tokens_in = genai("good", "mock", "mock-1", answered.model, gen_ai_token_type="input")
    tokens_out = genai("good", "mock", "mock-1", answered.model, gen_ai_token_type="output")
    assert got[("gen_ai_client_token_usage_count", tokens_in)] == 1
    assert got[("gen_ai_client_token_usage_sum", tokens_in)] == usage.input_tokens
    assert got[("gen_ai_client_token_usage_sum", tokens_out)] == usage.output_tokens
    failed_tokens = genai("flaky", "mock", "mock-f", "", gen_ai_token_type="input")
    assert ("gen_ai_client_token_usage_count", failed_tokens) not in got  # no usage, no sample
    # the overhead: one sample per client request, like the request counters and get_metrics
    assert got[("llm_proxy_overhead_seconds_count", ())] == snapshot["total_requests"] == 5
    assert snapshot["overhead_ms"]["count"] == 5
    assert got[("llm_proxy_overhead_seconds_sum", ())] <= got[("llm_proxy_request_duration_seconds_sum", ())]
    # attempts per provider = calls in the duration histograms, in all three views
    assert snapshot["provider_usage"] == {"flaky": 3, "good": 1}
    assert got[("llm_proxy_upstream_requests_total", (("provider", "flaky"),))] == 3
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    durations = metrics["gen_ai.client.operation.duration"]
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
    assert sum(point.count for point in durations.histogram.data_points) == 4
    point = next(
        p for p in durations.histogram.data_points if any(a.value.string_value == "server" for a in p.attributes)
    )
    assert {a.key: a.value.string_value for a in point.attributes} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mock",
        "gen_ai.request.model": "mock-f",
        "proxy.provider": "flaky",
        "error.type": "server",
    }
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
    token_points = metrics["gen_ai.client.token.usage"].histogram.data_points
    assert list(token_points[0].explicit_bounds) == list(TOKEN_BUCKETS)
    assert sum(p.count for p in token_points) == 4  # 2 answers x (input, output)
    assert metrics["llm_proxy.overhead"].histogram.data_points[0].count == 5
    requests = {
        tuple(sorted((a.key, a.value.string_value) for a in p.attributes)): p.as_int or p.as_double
        for p in metrics["llm_proxy.requests"].sum.data_points
    }
    assert requests[(("model", "default"), ("result", "success"))] == 3
    cancelled = (("model", "default"), ("result", "cancelled"))
    assert requests[cancelled] == got[("llm_proxy_requests_total", cancelled)] == snapshot["cancelled_requests"] == 1
    assert metrics["llm_proxy.requests"].sum.is_monotonic
    assert metrics["llm_proxy.retries"].sum.data_points[0].as_int == snapshot["retries"] == 1


async def test_the_overhead_leaves_out_upstream_time_backoffs_and_rate_limit_waits():
    clock = FakeClock()
    config = {
        "providers": {
            "slow": {
                "type": "python",
                "class": "tests.engine_helpers:ScriptedProvider",
                "options": {"latency": 2.0, "script": [503]},
            }
        },
        "models": {"default": {"targets": [{"provider": "slow", "model": "slow-1"}]}},
        "retry": {"max_attempts": 2, "initial_backoff": "3s", "max_backoff": "3s", "jitter": "none"},
    }
    engine, _ = make_engine(config, clock)
    try:
        response = await engine.complete(ChatRequest.from_prompt("hi"))
    finally:
        await clock.aclose()
    assert response.latency_ms == pytest.approx(7000.0)  # 2 s + a 3 s backoff + 2 s, on the fake clock
    overhead = engine.metrics.overhead
    assert overhead.count == 1 and overhead.total == pytest.approx(0.0, abs=1e-9)
    durations = {key[4]: stats.duration for key, stats in engine.metrics.operations.items()}
    assert durations["overloaded"].total == pytest.approx(2.0) and durations[""].total == pytest.approx(2.0)
