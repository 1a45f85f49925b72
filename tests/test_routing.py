"""Routing strategies (proxy/routing.py): exact sequences with a seeded rng and a fake clock."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from proxy.config.model import ModelConfig, TargetConfig
from proxy.routing import (
    FallbackRouter,
    LatencySettings,
    LeastLatencyRouter,
    RoundRobinRouter,
    WeightedRouter,
    build_router,
    strategy_for,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(name, weights, *, seed=0, clock=None, **latency):
    settings = LatencySettings(**latency) if latency else None
    return strategy_for(name, weights, rng=random.Random(seed), clock=clock or FakeClock(), latency=settings)


def firsts(router, calls, available=None):
    return [router.order(available)[0] for _ in range(calls)]


def window_counts(picks, index, length):
    return [picks[start : start + length].count(index) for start in range(len(picks) - length + 1)]


# --- fallback ----------------------------------------------------------------------------------------------------


def test_fallback_is_the_declared_order_every_time():
    router = make("fallback", [1, 5, 2])
    assert isinstance(router, FallbackRouter)
    assert [router.order() for _ in range(3)] == [[0, 1, 2]] * 3
    assert router.order([True, False, True]) == [0, 2]
    assert router.order([False, False, False]) == []


# --- round_robin -------------------------------------------------------------------------------------------------


def test_round_robin_rotates_the_start_by_one_per_call():
    router = make("round_robin", [1, 1, 1])
    assert isinstance(router, RoundRobinRouter)
    assert [router.order() for _ in range(7)] == [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 1, 2],
    ]


def test_round_robin_with_one_target_unavailable_alternates_evenly():
    router = make("round_robin", [1, 1, 1])
    available = [True, False, True]
    assert [router.order(available) for _ in range(7)] == [[0, 2], [2, 0], [0, 2], [2, 0], [0, 2], [2, 0], [0, 2]]


def test_round_robin_target_that_comes_back_resumes_its_place():
    router = make("round_robin", [1, 1, 1])
    everyone, without_1 = None, [True, False, True]
    picks = [router.order(everyone)[0], router.order(everyone)[0]]  # 0, 1
    picks += [router.order(without_1)[0] for _ in range(3)]  # 2, 0, 2
    picks += [router.order(everyone)[0] for _ in range(4)]  # 0, 1, 2, 0
    assert picks == [0, 1, 2, 0, 2, 0, 1, 2, 0]


def test_round_robin_nothing_available_keeps_the_rotation():
    router = make("round_robin", [1, 1])
    assert router.order([False, False]) == []
    assert firsts(router, 3) == [0, 1, 0]


# --- weighted ----------------------------------------------------------------------------------------------------


def test_weighted_3_to_1_exact_sequence_and_fallback_order():
    router = make("weighted", [3, 1])
    assert isinstance(router, WeightedRouter)
    assert [router.order() for _ in range(8)] == [[0, 1], [0, 1], [1, 0], [0, 1]] * 2


def test_weighted_5_3_2_exact_sequence():
    router = make("weighted", [5, 3, 2])
    assert firsts(router, 20) == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0] * 2


@pytest.mark.parametrize(
    ("weights", "units"),
    [
        ([3, 1], [3, 1]),
        ([5, 3, 2], [5, 3, 2]),
        ([0.5, 1.5], [1, 3]),
        ([0.1, 0.2, 0.3], [1, 2, 3]),
        ([10, 20], [1, 2]),
        ([2.5, 1, 0.25], [10, 4, 1]),
    ],
)
def test_weighted_every_window_of_w_picks_matches_the_weights_exactly(weights, units):
    router = make("weighted", weights)
    assert router.state_snapshot()["units"] == units
    total = sum(units)
    picks = firsts(router, 7 * total + 3)
    for index, share in enumerate(units):
        assert set(window_counts(picks, index, total)) == {share}


def test_weighted_window_property_over_random_integer_weights():
    rng = random.Random(42)
    for _ in range(200):
        weights = [rng.randint(1, 12) for _ in range(rng.randint(2, 6))]
        router = make("weighted", weights)
        units = router.state_snapshot()["units"]
        total = sum(units)
        picks = firsts(router, 4 * total)
        for index, share in enumerate(units):
            assert set(window_counts(picks, index, total)) == {share}, weights


def test_weighted_arbitrary_weights_stay_within_one_pick_of_the_ideal_split():
    rng = random.Random(7)
    for _ in range(100):
        weights = [rng.uniform(0.01, 5) for _ in range(rng.randint(2, 6))]
        total = sum(weights)
        router = make("weighted", weights)
        counts = [0] * len(weights)
        for n in range(1, 501):
            counts[router.order()[0]] += 1
            for index, weight in enumerate(weights):
                assert abs(counts[index] - n * weight / total) < 1, weights


def test_weighted_two_targets_any_window_within_one():
    weights = [1.0, math.sqrt(2)]
    picks = firsts(make("weighted", weights), 400)
    for length in range(1, 200):
        for index, weight in enumerate(weights):
            expected = length * weight / sum(weights)
            assert all(abs(count - expected) < 1 for count in window_counts(picks, index, length))


def test_weighted_fallback_is_the_rest_by_descending_weight_stable():
    router = make("weighted", [2, 1, 2, 3])
    orders = [router.order() for _ in range(8)]
    by_weight = [3, 0, 2, 1]
    for order in orders:
        assert order == [order[0], *(i for i in by_weight if i != order[0])]
    assert [o[0] for o in orders] == [3, 0, 2, 1, 3, 0, 2, 3]


def test_weighted_skips_unavailable_and_splits_the_rest_by_their_weights():
    router = make("weighted", [5, 3, 2])
    without_0 = [False, True, True]
    orders = [router.order(without_0) for _ in range(50)]
    assert all(0 not in order and len(order) == 2 for order in orders)
    picks = [order[0] for order in orders]
    assert set(window_counts(picks, 1, 5)) == {3}
    assert set(window_counts(picks, 2, 5)) == {2}
    assert router.order([False, False, False]) == []


def test_weighted_target_that_returns_gets_no_burst():
    router = make("weighted", [5, 3, 2])
    firsts(router, 3)  # 0, 1, 2: target 0 goes down with some credit
    firsts(router, 97, [False, True, True])
    picks = firsts(router, 60)
    for index, share in enumerate([5, 3, 2]):
        counts = window_counts(picks, index, 10)
        assert all(abs(count - share) <= 1 for count in counts)  # windows spanning the change: within one
        assert set(counts[10:]) == {share}  # exact again once a whole window has passed


# --- least_latency -----------------------------------------------------------------------------------------------


def measured(latencies, *, clock=None, **settings):
    clock = clock or FakeClock()
    router = make("least_latency", [1] * len(latencies), clock=clock, **settings)
    for index, seconds in enumerate(latencies):
        router.record_latency(index, seconds)
    return router, clock


def test_least_latency_measures_unmeasured_targets_first_one_probe_each():
    router = make("least_latency", [1, 1, 1])
    assert isinstance(router, LeastLatencyRouter)
    # unclaimed unmeasured targets first, then measured ones by latency, then those with a probe in flight
    assert [router.order() for _ in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    router.record_latency(2, 0.1)
    assert router.order()[0] == 2


def test_least_latency_prefers_the_fastest_ascending_ewma():
    router, _ = measured([1.0, 0.2, 0.5], epsilon=0.0)
    assert [router.order() for _ in range(3)] == [[1, 2, 0]] * 3
    router.record_latency(1, 2.0)  # 0.2 + 0.3 * (2.0 - 0.2) = 0.74
    assert router.state_snapshot()["targets"][1]["ewma_seconds"] == pytest.approx(0.74)
    assert router.order() == [2, 1, 0]


def test_least_latency_explores_with_the_seeded_rng_exactly():
    router, _ = measured([0.3, 0.1, 0.2, 0.4], epsilon=0.05)
    by_latency = [1, 2, 0, 3]
    twin = random.Random(0)  # the same stream the router's rng draws from
    expected = []
    for _ in range(2000):
        if twin.random() < 0.05:
            expected.append(by_latency[twin.randrange(1, 4)])
        else:
            expected.append(by_latency[0])
    picks = firsts(router, 2000)
    assert picks == expected


def test_least_latency_exploration_rate_and_spread():
    router, _ = measured([0.3, 0.1, 0.2], epsilon=0.05)
    picks = firsts(router, 20000)
    explored = [p for p in picks if p != 1]
    assert 850 <= len(explored) <= 1150  # 1000 expected, about 4.5 standard deviations either side
    assert 400 <= explored.count(0) <= 600
    assert 400 <= explored.count(2) <= 600
    again, _ = measured([0.3, 0.1, 0.2], epsilon=0.05)
    assert firsts(again, 20000) == picks  # same seed, same sequence


def test_least_latency_no_exploration_rng_draw_with_a_single_candidate():
    router, _ = measured([0.3, 0.1], epsilon=1.0)
    assert firsts(router, 5, [True, False]) == [0] * 5
    assert router.order() == [0, 1]  # epsilon 1: always the other one


def test_least_latency_re_measures_a_stale_target_and_lets_it_win_back():
    router, clock = measured([1.0, 0.2], epsilon=0.0)
    assert router.order()[0] == 1
    clock.now += 20
    router.record_latency(1, 0.2)  # target 1 keeps serving, target 0 is left alone
    clock.now += 10  # target 0's sample is now 30 s old
    assert router.order() == [0, 1]  # stale: probed once
    assert router.order() == [1, 0]  # probe in flight: the others keep the traffic
    assert router.state_snapshot()["targets"][0] | {"age_seconds": None} == {
        "ewma_seconds": 1.0,
        "age_seconds": None,
        "stale": True,
        "probing": True,
    }
    router.record_latency(0, 0.05)  # it recovered: the new sample replaces the stale average
    assert router.state_snapshot()["targets"][0]["ewma_seconds"] == 0.05
    assert router.order() == [0, 1]


def test_least_latency_a_lost_probe_is_retried_after_the_horizon():
    router, clock = measured([1.0, 0.2], epsilon=0.0)
    clock.now += 30
    router.record_latency(1, 0.2)
    assert router.order()[0] == 0  # probe; never reports back
    clock.now += 29.9
    assert router.order()[0] == 1
    clock.now += 0.1
    assert router.order()[0] == 0


def test_least_latency_penalizes_failures():
    router, _ = measured([0.2, 0.5], epsilon=0.0)
    router.record_failure(0)  # a 10 s sample: 0.2 + 0.3 * 9.8
    assert router.state_snapshot()["targets"][0]["ewma_seconds"] == pytest.approx(3.14)
    assert router.order() == [1, 0]


def test_least_latency_failure_penalty_exceeds_the_slowest_target():
    router, _ = measured([40.0, 60.0], epsilon=0.0)
    router.record_failure(0)  # a 120 s sample: 40 + 0.3 * 80 = 64 > 60
    assert router.order() == [1, 0]


def test_least_latency_failing_target_recovers_after_the_horizon():
    router, clock = measured([0.1, 0.5], epsilon=0.0)
    for _ in range(5):
        router.record_failure(0)
    assert router.order()[0] == 1
    clock.now += 30
    router.record_latency(1, 0.5)
    assert router.order()[0] == 0  # stale again: probed
    router.record_latency(0, 0.1)
    assert firsts(router, 3) == [0, 0, 0]


def test_least_latency_skips_unavailable_without_claiming_them():
    router = make("least_latency", [1, 1, 1], epsilon=0.0)
    assert router.order([False, True, True]) == [1, 2]
    assert router.order() == [0, 2, 1]  # target 0 was never claimed, so it is probed now


# --- concurrency ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "weights"), [("weighted", [5, 3, 2]), ("round_robin", [1, 1, 1])])
async def test_interleaved_tasks_see_the_same_exact_sequence(name, weights):
    router = make(name, weights)
    reference = firsts(make(name, weights), 600)
    picks: list[int] = []
    jitter = random.Random(3)

    async def client(delays):
        for delay in delays:
            for _ in range(delay):
                await asyncio.sleep(0)
            picks.append(router.order()[0])  # same synchronous step as the pick: call order == pick order

    await asyncio.gather(*(client([jitter.randint(0, 3) for _ in range(20)]) for _ in range(30)))
    assert picks == reference
    assert [picks.count(i) for i in range(3)] == [600 * w // sum(weights) for w in weights]


# --- factory, reload, snapshot -----------------------------------------------------------------------------------


def test_factory_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown routing strategy `fastest`"):
        make("fastest", [1])
    with pytest.raises(ValueError, match="at least one target"):
        make("fallback", [])
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and > 0"):
            make("weighted", [1, bad])


def test_build_router_from_a_model_config():
    model = ModelConfig(
        name="fast",
        strategy="weighted",
        targets=(TargetConfig(provider="a", model="x", weight=3), TargetConfig(provider="b", model="y")),
    )
    router = build_router(model, rng=random.Random(0), clock=FakeClock())
    assert isinstance(router, WeightedRouter)
    assert firsts(router, 4) == [0, 0, 1, 0]


def test_adopt_state_continues_the_sequence_when_nothing_changed():
    old = make("weighted", [5, 3, 2])
    head = firsts(old, 4)
    new = make("weighted", [5, 3, 2])
    assert new.adopt_state(old)
    assert head + firsts(new, 16) == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0] * 2

    rotating = make("round_robin", [1, 1, 1])
    firsts(rotating, 2)
    reloaded = make("round_robin", [1, 1, 1])
    assert reloaded.adopt_state(rotating)
    assert reloaded.order()[0] == 2


def test_adopt_state_refuses_other_weights_or_strategy():
    old = make("weighted", [5, 3, 2])
    firsts(old, 4)
    assert not make("weighted", [5, 3, 1]).adopt_state(old)
    assert not make("round_robin", [5, 3, 2]).adopt_state(old)
    fresh = make("weighted", [5, 3])
    assert not fresh.adopt_state(old)
    assert firsts(fresh, 3) == [0, 1, 0]


def test_adopt_state_keeps_latency_averages():
    old, clock = measured([0.4, 0.1])
    new = make("least_latency", [1, 1], clock=clock, epsilon=0.0)
    assert new.adopt_state(old)
    assert new.order() == [1, 0]


def test_state_snapshots_are_json_ready():
    clock = FakeClock()
    for name in ("fallback", "round_robin", "weighted", "least_latency"):
        router = make(name, [2, 1], clock=clock)
        router.order()
        router.record_latency(0, 0.25)
        router.record_failure(1)
        snapshot = json.loads(json.dumps(router.state_snapshot()))
        assert snapshot["strategy"] == name
        assert snapshot["weights"] == [2.0, 1.0]
    assert snapshot["targets"][0] == {"ewma_seconds": 0.25, "age_seconds": 0.0, "stale": False, "probing": False}
