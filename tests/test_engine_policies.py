"""The engine's policies, exercised through `Engine` on a fake clock with a seeded rng: rate limits (burst then
1 s spacing, max_wait -> next target -> `retry_after`, tokens/min corrected by usage), circuit breakers, routing
strategies (exact sequences), retry/backoff (full-jitter schedule, retry-after, the deadline), context windows
(skip, clamp) and the response cache (hits, bypass, TTL, streams, single-flight).

Providers are `ScriptedProvider`s (tests/engine_helpers.py): they record the fake-clock time and the request of
every call they receive, so the assertions are about what reached the upstream and when. The policies themselves
have unit tests (test_ratelimit, test_breaker, test_routing, test_retry_policy, test_cache); these check the wiring.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.errors import AllTargetsFailed, ProxyError, StreamInterrupted
from proxy.tokens import estimate_prompt_tokens
from proxy.types import ChatRequest
from tests.engine_helpers import T0, FakeClock, make_engine, scripted


@pytest.fixture
async def clock():
    fake = FakeClock()
    yield fake
    await fake.aclose()


@pytest.fixture
async def build(clock):
    engines = []

    def make(config, *, seed: int = 0):
        engine, providers = make_engine(config, clock, seed=seed)
        engines.append(engine)
        return engine, providers

    yield make
    for engine in engines:
        await engine.aclose()


def target(provider: str, **settings) -> dict:
    return {"provider": provider, "model": f"{provider}-1", **settings}


def model(*providers: str, **settings) -> dict:
    return {"targets": [target(p) for p in providers], **settings}


def ask(prompt: str = "hello", **kwargs) -> ChatRequest:
    return ChatRequest.from_prompt(prompt, **kwargs)


def history(result) -> list[tuple[str, str | None]]:
    return [(a.target, a.error_kind) for a in result.attempts]


async def provider_entry(engine, name: str) -> dict:
    return next(entry for entry in await engine.list_providers() if entry["name"] == name)


# --- rate limits -------------------------------------------------------------------------------------------


def limited(max_wait: str, **limits) -> dict:
    return scripted(limits={"requests_per_minute": 60, "max_wait": max_wait, **limits})


async def test_60_rpm_admits_a_burst_of_60_then_one_request_per_second(build, clock):
    engine, providers = build({"providers": {"lim": limited("30s")}, "models": {"default": model("lim")}})
    responses = await asyncio.gather(*(engine.complete(ask(f"q{i}")) for i in range(65)))
    assert all(r.provider == "lim" for r in responses)
    times = [t - T0 for t in providers["lim"].times]
    assert times[:60] == [0.0] * 60
    assert times[60:] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0], abs=1e-6)
    limits = engine.metrics_snapshot()["rate_limit"]
    assert limits["waits"] == 5 and limits["wait_seconds"] == pytest.approx(15.0) and limits["rejections"] == 0
    assert (await provider_entry(engine, "lim"))["limits"]["headroom"]["requests_available"] == 0


async def test_a_wait_longer_than_max_wait_moves_to_the_next_target(build):
    engine, providers = build(
        {"providers": {"lim": limited("2s"), "spare": scripted()}, "models": {"default": model("lim", "spare")}}
    )
    responses = await asyncio.gather(*(engine.complete(ask(f"q{i}")) for i in range(64)))
    assert [t - T0 for t in providers["lim"].times[60:]] == pytest.approx([1.0, 2.0])
    assert [r.provider for r in responses[60:]] == ["lim", "lim", "spare", "spare"]
    assert history(responses[63]) == [("lim/lim-1", "local_rate_limit"), ("spare/spare-1", None)]
    assert [t - T0 for t in providers["spare"].times] == [0.0, 0.0]  # moved on at once, no waiting
    metrics = engine.metrics_snapshot()
    assert metrics["provider_usage"] == {"lim": 62, "spare": 2}  # a refusal is not an attempt sent upstream
    assert metrics["rate_limit"]["rejections"] == 2


async def test_with_no_target_left_a_rate_limited_request_fails_with_retry_after(build):
    engine, providers = build({"providers": {"lim": limited("2s")}, "models": {"default": model("lim")}})
    results = await asyncio.gather(*(engine.complete(ask(f"q{i}")) for i in range(63)), return_exceptions=True)
    refused = results[62]
    assert isinstance(refused, AllTargetsFailed)
    assert refused.retry_after == pytest.approx(3.0)  # the 63rd request fits at t=3
    assert refused.status_code == 429
    assert history(refused) == [("lim/lim-1", "local_rate_limit")]
    assert len(providers["lim"].calls) == 62
    metrics = engine.metrics_snapshot()
    assert (metrics["total_requests"], metrics["success_requests"], metrics["failed_requests"]) == (63, 62, 1)


async def test_tokens_per_minute_charge_is_corrected_by_usage_and_a_large_request_waits(build):
    limits = {"tokens_per_minute": 6000, "max_wait": "60s"}
    engine, providers = build(
        {"providers": {"tpm": scripted(limits=limits, usage=[10, 5])}, "models": {"default": model("tpm")}}
    )
    await engine.complete(ask("a first large request", max_tokens=4000))
    # Charged prompt + 4000 up front, then corrected to the 15 tokens the call really used.
    assert (await provider_entry(engine, "tpm"))["limits"]["headroom"]["tokens_available"] == 6000 - 15

    providers["tpm"].latency = 1.0  # from now on a call stays in flight (holding its charge) for 1 s
    second, third = ask("second", max_tokens=4000), ask("third", max_tokens=4000)
    level = 6000 - 15 - (estimate_prompt_tokens(second) + 4000)  # once `second` is admitted
    missing = estimate_prompt_tokens(third) + 4000 - level
    await asyncio.gather(engine.complete(second), engine.complete(third))
    called = [t - T0 for t in providers["tpm"].times[1:]]
    assert called[0] == 0.0
    assert called[1] == pytest.approx(missing / 100.0, abs=1e-6)  # refilled at 6000/min = 100/s
    assert called[1] > 20
    assert engine.metrics_snapshot()["rate_limit"]["wait_seconds"] == pytest.approx(missing / 100.0)


# --- circuit breakers ----------------------------------------------------------------------------------------


BREAKER = {"failures": 3, "cooldown": "30s"}


def breaker_config(flaky_script: list[str]) -> dict:
    return {
        "providers": {
            "flaky": scripted(breaker=BREAKER, latency=1, script=flaky_script),
            "backup": scripted(latency=1),
        },
        "models": {"default": model("flaky", "backup"), "solo": model("flaky")},
        "retry": {"max_attempts": 1},
    }


async def test_breaker_opens_after_consecutive_failures_and_the_target_is_skipped(build):
    engine, providers = build(breaker_config(["503", "503", "503"]))
    for _ in range(3):
        response = await engine.complete(ask())
        assert history(response) == [("flaky/flaky-1", "overloaded"), ("backup/backup-1", None)]
    entry = await provider_entry(engine, "flaky")
    assert entry["breaker"]["state"] == "open"
    assert entry["breaker"]["targets"]["flaky-1"]["consecutive_failures"] == 3

    response = await engine.complete(ask())
    assert history(response) == [("backup/backup-1", None)]  # flaky was not called
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask(model="solo"))
    assert "circuit breaker open" in str(caught.value) and caught.value.attempts == ()
    assert caught.value.status_code == 503
    assert len(providers["flaky"].calls) == 3


async def test_after_the_cooldown_one_probe_goes_through_and_success_closes_the_breaker(build, clock):
    engine, providers = build(breaker_config(["503", "503", "503"]))
    for _ in range(3):
        await engine.complete(ask())
    clock.advance(27.5)  # opened at t=5 (the third failure); backup answered at t=6
    assert (await engine.complete(ask())).provider == "backup"
    assert (await provider_entry(engine, "flaky"))["breaker"]["state"] == "open"  # t=34.5
    clock.advance(1)
    assert (await provider_entry(engine, "flaky"))["breaker"]["state"] == "half_open"

    # Three requests at once: one is the probe (flaky answers after 1 s), the others go to the backup meanwhile.
    responses = await asyncio.gather(*(engine.complete(ask()) for _ in range(3)))
    assert sorted(r.provider for r in responses) == ["backup", "backup", "flaky"]
    assert len(providers["flaky"].calls) == 4
    entry = await provider_entry(engine, "flaky")
    assert entry["breaker"]["state"] == "closed"
    assert entry["breaker"]["targets"]["flaky-1"]["consecutive_failures"] == 0
    assert (await engine.complete(ask())).provider == "flaky"


async def test_a_failed_probe_opens_the_breaker_again_for_a_new_cooldown(build, clock):
    engine, providers = build(breaker_config(["503"] * 4))
    for _ in range(3):
        await engine.complete(ask())
    clock.advance(30)
    response = await engine.complete(ask())
    assert history(response) == [("flaky/flaky-1", "overloaded"), ("backup/backup-1", None)]
    snapshot = (await provider_entry(engine, "flaky"))["breaker"]["targets"]["flaky-1"]
    assert snapshot["state"] == "open"
    assert snapshot["next_probe_at"] == pytest.approx(providers["flaky"].times[-1] + 1 + 30)


async def test_a_breaker_opening_mid_retries_stops_the_retries_and_keeps_the_upstream_error(build, clock):
    engine, providers = build(
        {
            "providers": {"flaky": scripted(breaker={"failures": 2}, then="429@1")},
            "models": {"default": model("flaky")},
            "retry": {"max_attempts": 3, "initial_backoff": "1s"},
        }
    )
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask())
    assert len(providers["flaky"].calls) == 2
    assert clock.sleeps == [1.0]  # one retry made; no backoff before a retry that cannot happen
    assert engine.metrics_snapshot()["retries"] == 1
    assert caught.value.retry_after == 1.0 and "429" in str(caught.value)
    assert "circuit breaker" not in str(caught.value)


async def test_the_attempt_history_shows_no_backoff_when_the_breaker_stopped_the_retries(build, clock):
    engine, _ = build(
        {
            "providers": {"flaky": scripted(breaker={"failures": 2}, then="429@1")},
            "models": {"default": model("flaky")},
            "retry": {"max_attempts": 3, "initial_backoff": "1s"},
        }
    )
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask())
    assert [a.delay for a in caught.value.attempts] == [1.0, 0.0] and clock.sleeps == [1.0]


# --- routing strategies --------------------------------------------------------------------------------------


def three_providers(**extra) -> dict:
    return {name: scripted(**extra) for name in ("a", "b", "c")}


async def test_round_robin_rotates_exactly(build):
    engine, _ = build(
        {"providers": three_providers(), "models": {"default": model("a", "b", "c", strategy="round_robin")}}
    )
    sequence = [(await engine.complete(ask())).provider for _ in range(6)]
    assert sequence == ["a", "b", "c", "a", "b", "c"]


async def test_round_robin_rotates_exactly_under_concurrency(build):
    engine, providers = build(
        {"providers": three_providers(latency=1), "models": {"default": model("a", "b", "c", strategy="round_robin")}}
    )
    responses = await asyncio.gather(*(engine.complete(ask()) for _ in range(30)))
    assert [r.provider for r in responses] == ["a", "b", "c"] * 10
    assert [len(providers[name].calls) for name in "abc"] == [10, 10, 10]


async def test_weighted_3_to_1_is_exact_over_every_window(build):
    targets = [target("heavy", weight=3), target("light", weight=1)]
    providers = {"heavy": scripted(), "light": scripted()}
    engine, _ = build({"providers": providers, "models": {"default": {"strategy": "weighted", "targets": targets}}})
    sequence = [(await engine.complete(ask())).provider for _ in range(8)]
    assert sequence == ["heavy", "heavy", "light", "heavy"] * 2


async def test_least_latency_prefers_the_faster_target_and_skips_disabled_and_broken_ones(build):
    providers = {
        "slow": scripted(latency=0.5),
        "broken": scripted(then="503"),
        "off": {**scripted(), "enabled": False},
        "fast": scripted(latency=0.05),
    }
    config = {
        "providers": providers,
        "models": {"default": model("slow", "broken", "off", "fast", strategy="least_latency")},
        "retry": {"max_attempts": 1},
    }
    engine, _ = build(config, seed=3)
    first = await engine.complete(ask())
    second = await engine.complete(ask())
    assert history(first) == [("slow/slow-1", None)]  # unmeasured targets are probed first, in order
    assert history(second) == [("broken/broken-1", "overloaded"), ("fast/fast-1", None)]
    later = [await engine.complete(ask()) for _ in range(20)]
    answered = [r.provider for r in later]
    assert answered.count("fast") >= 17  # the rest is epsilon exploration (5%) of the seeded rng
    assert answered[:3] == ["fast", "fast", "fast"]
    tried = {a.target for r in (first, second, *later) for a in r.attempts}
    assert "off/off-1" not in tried  # a disabled provider is never a candidate
    assert "broken" not in answered


# --- retry and backoff ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", ["full", "none"])
async def test_backoff_follows_the_capped_exponential_schedule_with_seeded_full_jitter(build, clock, jitter):
    config = {
        "providers": {"flaky": scripted(script=["503"] * 5, breaker={"failures": 10})},
        "models": {"default": model("flaky")},
        "retry": {"max_attempts": 6, "initial_backoff": "1s", "max_backoff": "2s", "jitter": jitter},
    }
    engine, providers = build(config, seed=42)
    response = await engine.complete(ask())
    ceilings = [1.0, 2.0, 2.0, 2.0, 2.0]
    rng = random.Random(42)
    expected = [rng.uniform(0, c) for c in ceilings] if jitter == "full" else ceilings
    assert clock.sleeps == pytest.approx(expected)
    assert [a.delay for a in response.attempts] == pytest.approx([*expected, 0.0])
    assert [a.attempt for a in response.attempts] == [1, 2, 3, 4, 5, 6]
    calls = [t - T0 for t in providers["flaky"].times]
    assert calls == pytest.approx([sum(expected[:i]) for i in range(6)])
    assert engine.metrics_snapshot()["retries"] == 5


async def test_a_429_retry_after_is_honoured(build, clock):
    engine, providers = build({"providers": {"p": scripted(script=["429@2.5"])}, "models": {"default": model("p")}})
    response = await engine.complete(ask())
    assert clock.sleeps == [2.5]
    assert [t - T0 for t in providers["p"].times] == [0.0, 2.5]
    assert [(a.error_kind, a.status, a.delay) for a in response.attempts] == [
        ("rate_limited", 429, 2.5),
        (None, None, 0.0),
    ]


async def test_a_retry_after_above_max_backoff_falls_back_without_waiting(build, clock):
    config = {
        "providers": {"p": scripted(then="429@30"), "backup": scripted()},
        "models": {"default": model("p", "backup"), "solo": model("p")},
        "retry": {"max_backoff": "8s"},
    }
    engine, providers = build(config)
    response = await engine.complete(ask())
    assert history(response) == [("p/p-1", "rate_limited"), ("backup/backup-1", None)]
    assert response.attempts[0].delay == 0.0 and clock.sleeps == []
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask(model="solo"))
    assert caught.value.retry_after == 30.0 and caught.value.status_code == 429
    assert clock.sleeps == [] and len(providers["p"].calls) == 2


async def test_the_deadline_caps_the_chain_and_keeps_the_fallbacks_attempt(build, clock):
    failing = scripted(latency=0.5, then="503", breaker={"failures": 100})
    config = {
        "providers": {"primary": failing, "primary_again": failing, "backup": scripted(latency=0.5)},
        "models": {"default": model("primary", "backup"), "doomed": model("primary", "primary_again")},
        "retry": {"max_attempts": 10, "initial_backoff": "1s", "max_backoff": "8s", "jitter": "none", "deadline": "6s"},
    }
    engine, providers = build(config)
    response = await engine.complete(ask())
    # Retries stop once a backoff + an attempt as slow as the last + the backup's reserve (6/30 s) no longer fit.
    assert [t - T0 for t in providers["primary"].times] == pytest.approx([0.0, 1.5, 4.0])
    assert clock.sleeps == [1.0, 2.0]
    assert response.provider == "backup" and clock.now() - T0 == pytest.approx(5.0)

    started = clock.now()
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask(model="doomed"))
    assert clock.now() - started == pytest.approx(5.0)  # 3 attempts on primary, 1 on the fallback, within 6 s
    assert [a.target for a in caught.value.attempts] == ["primary/primary-1"] * 3 + ["primary_again/primary_again-1"]


# --- context windows -----------------------------------------------------------------------------------------

LONG_PROMPT = "word " * 400  # about 430 tokens


def windows_config(*windows: int, clamp: bool = True, max_output: int | None = None) -> dict:
    names = [f"w{window}" for window in windows]
    targets = [target(name, context_window=window) for name, window in zip(names, windows, strict=True)]
    if max_output is not None:
        targets[-1]["max_output_tokens"] = max_output
    return {
        "providers": {name: scripted() for name in names},
        "models": {"default": {"targets": targets}},
        "defaults": {"clamp_max_tokens": clamp},
    }


async def test_a_prompt_too_long_for_a_window_skips_that_target_for_a_larger_one(build):
    engine, providers = build(windows_config(200, 8000))
    response = await engine.complete(ask(LONG_PROMPT, max_tokens=100))
    assert response.provider == "w8000" and history(response) == [("w8000/w8000-1", None)]
    assert providers["w200"].calls == []


async def test_max_tokens_is_clamped_to_what_the_window_leaves(build):
    engine, providers = build(windows_config(1000))
    request = ask(LONG_PROMPT, max_tokens=5000)
    await engine.complete(request)
    assert providers["w1000"].calls[0].max_tokens == 1000 - estimate_prompt_tokens(request)
    engine, providers = build(windows_config(100_000, max_output=300))
    await engine.complete(request)
    assert providers["w100000"].calls[0].max_tokens == 300


async def test_when_every_window_is_too_small_the_request_fails_with_a_400_naming_the_window(build):
    engine, providers = build(windows_config(100, 200))
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ask(LONG_PROMPT))
    assert caught.value.status_code == 400
    assert "100-token context window" in str(caught.value) and "200-token context window" in str(caught.value)
    assert providers["w100"].calls == [] and providers["w200"].calls == []


async def test_a_context_length_error_reroutes_past_windows_that_are_not_larger(build):
    targets = [target("small", context_window=8000), target("same", context_window=8000)]
    config = {
        "providers": {"small": scripted(then="context"), "same": scripted(), "large": scripted()},
        "models": {"default": {"targets": [*targets, target("large", context_window=16000)]}},
    }
    engine, providers = build(config)
    response = await engine.complete(ask())
    assert history(response) == [("small/small-1", "context_length"), ("large/large-1", None)]
    assert providers["same"].calls == []


async def test_without_clamping_a_request_that_cannot_fit_skips_the_target(build):
    engine, providers = build(windows_config(100, 8000, clamp=False))
    response = await engine.complete(ask("short question", max_tokens=500))
    assert response.provider == "w8000" and providers["w100"].calls == []


# --- the response cache --------------------------------------------------------------------------------------


def cache_config(**extra) -> dict:
    return {
        "providers": {"p": scripted(reply="the cached answer", latency=1, usage=[10, 5])},
        "models": {"default": model("p"), "uncached": model("p", cache={"enabled": False})},
        **extra,
    }


DETERMINISTIC = ask("what is 2+2?", temperature=0)


async def test_identical_deterministic_requests_call_the_upstream_once(build):
    engine, providers = build(cache_config())
    first = await engine.complete(DETERMINISTIC)
    second = await engine.complete(DETERMINISTIC)
    assert len(providers["p"].calls) == 1
    assert not first.cached and second.cached
    assert second.attempts == () and second.cost == 0.0 and second.text == first.text
    metrics = engine.metrics_snapshot()
    assert metrics["cache"]["hits"] == 1 and metrics["cache"]["misses"] == 1
    assert metrics["cache"]["tokens_saved"] == 15
    assert metrics["cached_requests"] == 1 and metrics["total_requests"] == 2
    assert metrics["provider_usage"] == {"p": 1}
    assert (await engine.complete(ask("what is 2+2?", seed=7))).cached is False  # a seed is deterministic too...
    assert (await engine.complete(ask("what is 2+2?", seed=7))).cached is True


@pytest.mark.parametrize(
    ("request_", "kwargs"),
    [
        (ask("what is 2+2?"), {}),  # no temperature: the provider's default, not deterministic
        (ask("what is 2+2?", temperature=0.7), {}),
        (DETERMINISTIC, {"bypass_cache": True}),
        (ask("what is 2+2?", temperature=0, model="uncached"), {}),
    ],
    ids=["no-temperature", "temperature-0.7", "bypass", "model-cache-disabled"],
)
async def test_requests_that_must_not_use_the_cache_always_reach_the_upstream(build, request_, kwargs):
    engine, providers = build(cache_config())
    responses = [await engine.complete(request_, **kwargs) for _ in range(2)]
    assert len(providers["p"].calls) == 2 and not any(r.cached for r in responses)


async def test_a_bypassed_request_does_not_store_its_answer(build):
    engine, providers = build(cache_config())
    await engine.complete(DETERMINISTIC, bypass_cache=True)
    assert not (await engine.complete(DETERMINISTIC)).cached
    assert (await engine.complete(DETERMINISTIC)).cached
    assert len(providers["p"].calls) == 2


async def test_cache_entries_expire_after_their_ttl_on_the_runtime_clock(build, clock):
    config = cache_config(cache={"ttl": "10s"})
    config["models"]["short"] = model("p", cache={"ttl": "2s"})
    engine, providers = build(config)
    await engine.complete(DETERMINISTIC)  # stored at t=1 (after the 1 s call)
    clock.advance(9.5)
    assert (await engine.complete(DETERMINISTIC)).cached
    clock.advance(0.5)  # t=11: expired
    assert not (await engine.complete(DETERMINISTIC)).cached
    assert len(providers["p"].calls) == 2
    short = ask("what is 2+2?", temperature=0, model="short")
    await engine.complete(short)
    clock.advance(1.5)
    assert (await engine.complete(short)).cached
    clock.advance(0.5)
    assert not (await engine.complete(short)).cached


async def test_a_cached_answer_is_replayed_to_a_stream_as_chunks(build):
    engine, providers = build(cache_config())
    answer = await engine.complete(DETERMINISTIC)
    stream = engine.stream(DETERMINISTIC)
    chunks = [chunk async for chunk in stream]
    assert stream.cached and stream.provider == "p" and stream.response is not None and stream.response.cached
    assert "".join(c.text for c in chunks) == answer.text == "the cached answer"
    assert len([c for c in chunks if c.text]) >= 1 and chunks[-1].finish_reason == "stop"
    assert len(providers["p"].calls) == 1
    assert engine.metrics_snapshot()["stream_requests"] == 1


async def test_a_clean_stream_is_stored_and_a_broken_one_never_is(build):
    config = cache_config()
    config["providers"]["p"] = scripted(reply="one two three four", script=["cut:2"])
    engine, providers = build(config)
    with pytest.raises(StreamInterrupted):
        async for _ in engine.stream(DETERMINISTIC):
            pass
    stream = engine.stream(DETERMINISTIC)
    assert "".join([c.text async for c in stream]) == "one two three four"
    assert not stream.cached and len(providers["p"].calls) == 2  # the broken stream was not stored
    answer = await engine.complete(DETERMINISTIC)
    assert answer.cached and answer.text == "one two three four"  # the clean one was
    assert len(providers["p"].calls) == 2


async def test_a_stream_cut_after_its_commit_point_reports_its_attempt_history(build):
    config = cache_config()
    config["providers"]["p"] = scripted(reply="one two three four", script=["503", "cut:2"])
    engine, _ = build(config)
    with pytest.raises(StreamInterrupted) as caught:
        async for _ in engine.stream(ask()):
            pass
    assert caught.value.partial_text == "one two"
    attempts = getattr(caught.value, "attempts", ())
    assert [(a.target, a.error_kind) for a in attempts] == [("p/p-1", "overloaded"), ("p/p-1", "interrupted")]


async def test_concurrent_identical_deterministic_requests_make_one_upstream_call(build):
    engine, providers = build(cache_config())
    responses = await asyncio.gather(*(engine.complete(DETERMINISTIC) for _ in range(20)))
    assert len(providers["p"].calls) == 1
    assert sum(r.cached for r in responses) == 19 and {r.text for r in responses} == {"the cached answer"}
    metrics = engine.metrics_snapshot()
    assert metrics["total_requests"] == metrics["success_requests"] == 20
    assert metrics["cached_requests"] == 19 and metrics["provider_usage"] == {"p": 1}


async def test_single_flight_followers_count_one_cache_lookup_each(build):
    engine, _ = build(cache_config())
    await asyncio.gather(*(engine.complete(DETERMINISTIC) for _ in range(20)))
    cache = engine.metrics_snapshot()["cache"]
    assert (cache["hits"], cache["misses"]) == (19, 1)


async def test_single_flight_followers_of_a_failed_call_are_counted_as_failed_requests(build):
    config = cache_config()
    config["providers"]["p"] = scripted(latency=1, then="400")
    engine, providers = build(config)
    results = await asyncio.gather(*(engine.complete(DETERMINISTIC) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ProxyError) for r in results)
    assert len(providers["p"].calls) == 1
    metrics = engine.metrics_snapshot()
    assert (metrics["total_requests"], metrics["failed_requests"]) == (5, 5)
