"""`proxy.explain`: route plans and dry runs agree with what the engine then does, and change nothing."""

from __future__ import annotations

import pytest

from proxy.config import load_config, load_config_text
from proxy.engine import Engine
from proxy.errors import UnknownModel
from proxy.explain import dry_run, route_plan, route_plans
from proxy.runtime import Runtime
from proxy.types import ChatRequest

MOCKS = """
version: 1
providers:
  a: {type: mock, mock: {reply: from a}}
  b: {type: mock, mock: {reply: from b}}
  c: {type: mock, mock: {reply: from c}}
  keyed: {type: openai, api_key: "${EXPLAIN_TEST_KEY}", limits: {requests_per_minute: 60, max_wait: 1s}}
models:
  default:
    targets:
      - {provider: a, model: small, context_window: 200}
      - {provider: b, model: large, context_window: 5000, max_output_tokens: 300}
  weighted:
    strategy: weighted
    targets:
      - {provider: a, model: m, weight: 3}
      - {provider: b, model: m, weight: 1}
    fallback: default
  rotating:
    strategy: round_robin
    targets: [{provider: a, model: r}, {provider: b, model: r}, {provider: c, model: r}]
  keyed:
    targets: [{provider: keyed, model: gpt-4o-mini}, {provider: c, model: spare}]
    cache: {enabled: false}
"""


@pytest.fixture
async def engine():
    engine = Engine(Runtime.build(load_config_text(MOCKS, env={})))
    yield engine
    await engine.aclose()


def ask(prompt: str = "hello", **kwargs) -> ChatRequest:
    return ChatRequest.from_prompt(prompt, **kwargs)


def test_plans_of_the_offline_example():
    plans = {plan["model"]: plan for plan in route_plans(Runtime.build(load_config("examples/offline.yaml")))}
    assert list(plans) == ["default", "echo", "balanced"]
    assert plans["default"]["default"] and not plans["balanced"]["default"]
    balanced = plans["balanced"]
    assert balanced["strategy"] == "weighted"
    assert [(t["label"], t["weight"], t["share"]) for t in balanced["targets"]] == [
        ("primary/mock-large", 3.0, 0.75),
        ("backup/mock-small", 1.0, 0.25),
    ]
    assert balanced["fallback_chain"] == ["default"]
    assert [t["already_tried"] for t in balanced["fallbacks"][0]["targets"]] == [True, True]
    assert [t["context_window"] for t in plans["default"]["targets"]] == [8192, 4096]
    assert plans["default"]["targets"][0]["context_window_source"] == "config"
    assert plans["default"]["retry"]["max_attempts"] == 2
    assert plans["default"]["cache"] == {
        "backend": "memory",
        "when": "deterministic",
        "ttl": 300.0,
        "model_enabled": None,
    }


def test_disabled_targets_say_why_and_shares_follow_the_available_ones(engine):
    plan = route_plan(engine.runtime, "keyed")
    keyed, spare = plan["targets"]
    assert not keyed["enabled"] and "EXPLAIN_TEST_KEY" in keyed["disabled_reason"]
    assert keyed["limits"]["provider"] == {
        "requests_per_minute": 60,
        "tokens_per_minute": None,
        "concurrency": None,
        "max_wait": 1.0,
    }
    assert keyed["context_window"] == 128_000 and keyed["context_window_source"] == "known model"
    assert spare["enabled"] and plan["available_targets"] == 1
    assert plan["cache"]["when"] == "never"
    rotating = route_plan(engine.runtime, "rotating")
    assert [t["share"] for t in rotating["targets"]] == [0.3333, 0.3333, 0.3333]
    assert route_plan(engine.runtime, None)["model"] == "default"
    with pytest.raises(UnknownModel):
        route_plan(engine.runtime, "nope")


async def test_an_open_breaker_shows_and_is_skipped(engine):
    runtime = engine.runtime
    target = runtime.plans["weighted"].targets[0]
    target.breaker.record_failure(runtime.clock(), trip=True)
    plan = route_plan(runtime, "weighted")
    assert plan["targets"][0]["breaker"]["state"] == "open"
    assert [t["live_share"] for t in plan["targets"]] == [None, 1.0]
    run = dry_run(runtime, ask(model="weighted"))
    assert run["order"] == ["b/m", "a/small", "b/large"]
    skipped = {c["target"]: c["skip"] for c in run["candidates"] if c["skip"]}
    assert skipped["a/m"].startswith("circuit breaker open")
    response = await engine.complete(ask(model="weighted"))
    assert response.provider == "b"


async def test_the_dry_run_order_is_the_order_requests_take_and_moves_nothing(engine):
    for model in ("weighted", "rotating"):
        for _ in range(5):
            first = dry_run(engine.runtime, ask(model=model))
            again = dry_run(engine.runtime, ask(model=model))
            assert first["order"] == again["order"]  # asking does not move the rotation
            response = await engine.complete(ask(model=model))
            assert f"{response.provider}/{response.model}" == first["order"][0]


def test_context_windows_decide_which_targets_fit(engine):
    runtime = engine.runtime
    small = dry_run(runtime, ask("hi", max_tokens=50))
    assert small["order"] == ["a/small", "b/large"]
    assert [c["max_tokens"] for c in small["candidates"]] == [50, 50]
    big = dry_run(runtime, ask("word " * 400, max_tokens=4000))
    assert 400 < big["prompt_tokens"] < 700
    assert big["order"] == ["b/large"]
    first, second = big["candidates"]
    assert first["skip"].startswith(f"the prompt (about {big['prompt_tokens']} tokens) does not fit its 200-token")
    assert second["max_tokens"] == 300  # clamped to the target's max_output_tokens
    huge = dry_run(runtime, ask("word " * 20_000))
    assert huge["order"] == [] and all(c["skip"] for c in huge["candidates"])


async def test_without_clamping_a_target_refuses_what_it_cannot_produce():
    text = MOCKS + "defaults: {clamp_max_tokens: false}\n"
    runtime = Runtime.build(load_config_text(text, env={}))
    run = dry_run(runtime, ask("hi", max_tokens=1000))
    assert run["order"] == []
    reasons = [c["skip"] for c in run["candidates"]]
    assert "defaults.clamp_max_tokens is off" in reasons[0]
    assert "exceeds the 300 output tokens `b/large` allows" in reasons[1]
    await runtime.aclose()


async def test_cacheability_matches_what_the_engine_caches(engine):
    cases = [
        (ask(model="default", temperature=0), True, "deterministic: temperature is 0"),
        (ask(model="default", seed=7), True, "deterministic: a seed is set"),
        (ask(model="default"), False, "not deterministic: temperature is unset and no seed"),
        (ask(model="keyed", temperature=0), False, "caching is off for model `keyed`"),
    ]
    for index, (request, cacheable, reason) in enumerate(cases):
        request = ChatRequest.from_prompt(
            f"question {index}", model=request.model, temperature=request.temperature, seed=request.seed
        )
        verdict = dry_run(engine.runtime, request)["cache"]
        assert verdict["cacheable"] is cacheable and verdict["reason"].startswith(reason)
        await engine.complete(request)
        assert (await engine.complete(request)).cached is cacheable
    bypassed = dry_run(engine.runtime, ask(temperature=0), bypass_cache=True)["cache"]
    assert not bypassed["cacheable"] and "bypassed" in bypassed["reason"]


def test_defaults_are_applied_before_the_dry_run(engine):
    run = dry_run(engine.runtime, ask())
    assert run["max_tokens"] == 1024 and run["model"] == "default" and run["route"] == "default"
    with pytest.raises(UnknownModel):
        dry_run(engine.runtime, ask(model="nope"))
