"""State carried over a reload (`Runtime.build(config, previous=old)`): kept where the settings did not change,
fresh where they did; the old runtime closes only what it still owns."""

from __future__ import annotations

import pytest

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed
from proxy.runtime import Runtime
from proxy.types import ChatRequest

BASE = """
version: 1
providers:
  limited:
    type: mock
    limits: {requests_per_minute: 2, max_wait: 0s}
  other: {type: mock, description: OTHER}
models:
  default:
    strategy: weighted
    targets: [{provider: limited, model: m1, weight: 1}]
  second:
    strategy: weighted
    targets: [{provider: other, model: m2, weight: WEIGHT}]
"""


def config(weight: int = 1, limited: str = "limited", other: str = "other"):
    text = BASE.replace("WEIGHT", str(weight)).replace("OTHER", other)
    text = text.replace("  limited:\n", f"  limited:\n    description: {limited}\n")
    return load_config_text(text)


async def test_a_provider_at_its_limit_stays_limited_after_an_unrelated_edit():
    engine = Engine(Runtime.build(config()))
    await engine.complete(ChatRequest.from_prompt("a"))
    await engine.complete(ChatRequest.from_prompt("b"))
    old = engine.swap(Runtime.build(config(weight=5, other="edited"), previous=engine.runtime))
    await old.aclose()
    assert engine.runtime.unchanged == {"limited"}
    with pytest.raises(AllTargetsFailed, match="rate limit"):
        await engine.complete(ChatRequest.from_prompt("c"))
    assert engine.runtime.providers["limited"] is old.providers["limited"]
    assert engine.runtime.providers["other"] is not old.providers["other"]
    await engine.aclose()


async def test_a_changed_provider_starts_fresh_and_loses_its_metrics():
    engine = Engine(Runtime.build(config()))
    await engine.complete(ChatRequest.from_prompt("a"))
    await engine.complete(ChatRequest.from_prompt("b"))
    await engine.complete(ChatRequest.from_prompt("x", model="second"))
    old = engine.swap(Runtime.build(config(limited="changed"), previous=engine.runtime))
    await old.aclose()
    assert engine.runtime.unchanged == {"other"}
    await engine.complete(ChatRequest.from_prompt("c"))  # fresh bucket: admitted
    usage = engine.metrics_snapshot()["provider_usage"]
    assert usage == {"limited": 1, "other": 1}
    await engine.aclose()


async def test_router_state_and_breakers_survive_when_the_model_is_unchanged():
    first = Runtime.build(config())
    breaker = first.breakers["limited/m1"]
    second = Runtime.build(config(weight=3, other="edited"), previous=first)
    assert second.breakers["limited/m1"] is breaker
    assert second.breakers["other/m2"] is not first.breakers["other/m2"]
    assert second.plans["default"].cache_scope == first.plans["default"].cache_scope
    assert second.plans["second"].cache_scope != first.plans["second"].cache_scope
    await first.aclose()
    await second.aclose()


async def test_the_old_runtime_closes_only_the_providers_it_still_owns():
    closed: list[str] = []
    first = Runtime.build(config())
    for name, provider in first.providers.items():

        async def aclose(name=name) -> None:
            closed.append(name)

        provider.aclose = aclose  # type: ignore[method-assign]
    second = Runtime.build(config(other="edited"), previous=first)
    await first.aclose()
    assert closed == ["other"]
    await second.aclose()
    assert closed == ["other", "limited"]
