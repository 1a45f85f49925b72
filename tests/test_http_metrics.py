"""`GET /metrics`: the Prometheus exposition parses with `prometheus_client`'s parser and matches the traffic."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import ProxyError
from proxy.types import ChatRequest
from tests.http_server import engine_app

CONFIG = """
version: 1
providers:
  good:
    type: mock
    pricing: {mock-1: {input_per_mtok: 1000000, output_per_mtok: 2000000}}
  flaky:
    type: mock
    mock: {fault: {status: 500, first: 2}}
retry: {max_attempts: 2, initial_backoff: 1ms, max_backoff: 2ms}
models:
  default:
    targets: [{provider: flaky, model: mock-f}, {provider: good, model: mock-1}]
  only_flaky:
    targets: [{provider: flaky, model: mock-f}]
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_match_the_traffic_sent():
    async with engine_app(CONFIG) as (base_url, engine):
        first = await engine.complete(ChatRequest.from_prompt("one", temperature=0))  # flaky fails twice -> good
        await engine.complete(ChatRequest.from_prompt("one", temperature=0))  # cache hit
        await engine.complete(ChatRequest.from_prompt("two", model="only_flaky"))  # flaky has recovered
        with pytest.raises(ProxyError):
            await engine.complete(ChatRequest.from_prompt("x", model="nope"))
        async with aiohttp.ClientSession(base_url) as session, session.get("/metrics") as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    got = samples(text)
    assert got[("llm_proxy_requests_total", (("model", "default"), ("result", "success")))] == 2
    assert got[("llm_proxy_requests_total", (("model", "only_flaky"), ("result", "success")))] == 1
    # a model the config does not have counts as "(unknown)", not under the name the client made up
    assert got[("llm_proxy_requests_total", (("model", "(unknown)"), ("result", "failure")))] == 1
    assert not any(("model", "nope") in labels for _, labels in got)
    assert got[("llm_proxy_cached_requests_total", (("model", "default"),))] == 1
    assert got[("llm_proxy_upstream_requests_total", (("provider", "flaky"),))] == 3
    assert got[("llm_proxy_upstream_requests_total", (("provider", "good"),))] == 1
    assert got[("llm_proxy_upstream_errors_total", (("kind", "server"), ("provider", "flaky")))] == 2
    assert got[("llm_proxy_retries_total", ())] == 1
    assert got[("llm_proxy_fallbacks_total", ())] == 1
    assert got[("llm_proxy_cache_lookups_total", (("result", "hit"),))] == 1
    assert got[("llm_proxy_cache_lookups_total", (("result", "miss"),))] == 1
    usage = first.usage
    assert got[("llm_proxy_tokens_total", (("direction", "input"), ("provider", "good")))] == usage.input_tokens
    assert got[("llm_proxy_cost_usd_total", (("provider", "good"),))] == first.cost
    assert first.cost == usage.input_tokens + 2 * usage.output_tokens
    assert got[("llm_proxy_request_duration_seconds_count", ())] == 4
    assert got[("llm_proxy_request_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("llm_proxy_upstream_duration_seconds_count", (("provider", "flaky"),))] == 3
    assert got[("llm_proxy_breaker_state", (("provider", "flaky"), ("state", "closed"), ("target", "mock-f")))] == 1
    assert got[("llm_proxy_config_info", (("version", engine.runtime.config.version_hash),))] == 1
    assert got[("llm_proxy_reloads_total", (("result", "rejected"),))] == 0
