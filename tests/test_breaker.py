"""Circuit breaker: the state machine, the single half-open probe, error-rate opening and the sliding window."""

from __future__ import annotations

import pytest

from proxy.config.model import BreakerConfig
from proxy.errors import (
    ContentFiltered,
    ErrorKind,
    ProviderUnavailable,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamNotFound,
    UpstreamPermissionError,
    UpstreamServerError,
    UpstreamTimeout,
)
from proxy.policies.breaker import EFFECTS, BreakerState, CircuitBreaker, Effect

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def opened_breaker(at: float = 100.0, *, cooldown: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures=2, cooldown=cooldown)
    breaker.record_failure(at)
    breaker.record_failure(at)
    assert breaker.state(at) is OPEN
    return breaker


def test_consecutive_failures_open_the_breaker() -> None:
    breaker = CircuitBreaker(failures=3)
    for second in (1.0, 2.0):
        breaker.record_failure(second)
        assert breaker.state(second) is CLOSED
        assert breaker.allow(second)
    breaker.record_failure(3.0)
    assert breaker.state(3.0) is OPEN
    assert breaker.state(3.0) == "open"
    assert not breaker.allow(3.5)


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failures=3)
    breaker.record_failure(1.0)
    breaker.record_failure(2.0)
    breaker.record_success(3.0)
    breaker.record_failure(4.0)
    breaker.record_failure(5.0)
    assert breaker.state(5.0) is CLOSED
    breaker.record_failure(6.0)
    assert breaker.state(6.0) is OPEN


def test_cooldown_leads_to_half_open() -> None:
    breaker = opened_breaker(100.0, cooldown=30.0)
    assert breaker.state(129.99) is OPEN
    assert not breaker.allow(129.99)
    assert breaker.state(130.0) is HALF_OPEN


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = opened_breaker(100.0)
    assert breaker.allow(131.0)
    assert not breaker.allow(131.1)
    assert not breaker.allow(200.0)
    assert breaker.snapshot(131.2).probe_in_flight


def test_a_released_probe_slot_can_be_claimed_again() -> None:
    breaker = opened_breaker(100.0)
    assert breaker.allow(131.0)
    breaker.release_probe()  # e.g. the request was cancelled before it reached the upstream
    assert breaker.state(131.5) is HALF_OPEN
    assert breaker.allow(131.5)
    assert not breaker.allow(131.6)


def test_probe_success_closes_and_starts_afresh() -> None:
    breaker = opened_breaker(100.0)
    assert breaker.allow(131.0)
    breaker.record_success(132.0)
    assert breaker.state(132.0) is CLOSED
    assert all(breaker.allow(132.0 + i) for i in range(5))
    snapshot = breaker.snapshot(133.0)
    assert snapshot.consecutive_failures == 0 and snapshot.opened_at is None and snapshot.next_probe_at is None
    breaker.record_failure(134.0)  # one failure is not enough again: the count restarted
    assert breaker.state(134.0) is CLOSED


def test_probe_failure_reopens_with_a_fresh_cooldown() -> None:
    breaker = opened_breaker(100.0, cooldown=30.0)
    assert breaker.allow(131.0)
    breaker.record_failure(135.0)
    assert breaker.state(135.0) is OPEN
    assert not breaker.allow(150.0)
    assert breaker.state(164.99) is OPEN
    assert breaker.state(165.0) is HALF_OPEN
    assert breaker.allow(165.0)


def test_outcomes_of_calls_from_before_the_opening_are_ignored_while_open() -> None:
    breaker = opened_breaker(100.0, cooldown=30.0)
    breaker.record_failure(120.0)  # a straggler: must not push the probe further away
    breaker.record_success(121.0)  # nor close the breaker before the cooldown
    assert breaker.state(129.0) is OPEN
    assert breaker.state(130.0) is HALF_OPEN


def test_error_rate_opens_once_min_requests_are_in_the_window() -> None:
    breaker = CircuitBreaker(failures=100, error_rate=0.5, window=60.0, min_requests=10)
    now = 1000.0
    for _ in range(3):  # F F S, three times: 6 failures in 9 calls, never 100 in a row
        breaker.record_failure(now)
        breaker.record_failure(now)
        breaker.record_success(now)
        now += 1.0
    assert breaker.state(now) is CLOSED  # 67 % but only 9 calls
    breaker.record_failure(now)
    assert breaker.state(now) is OPEN  # 7 of 10


def test_an_error_rate_equal_to_the_threshold_does_not_open() -> None:
    breaker = CircuitBreaker(failures=100, error_rate=0.5, window=60.0, min_requests=10)
    for second in range(10):  # S F S F ...: the 10th call is a failure, so the rate is checked at 5 of 10
        if second % 2:
            breaker.record_failure(float(second))
        else:
            breaker.record_success(float(second))
    assert breaker.snapshot(9.0).window_calls == 10
    assert breaker.state(9.0) is CLOSED  # 5 of 10 is not above 0.5
    breaker.record_failure(10.0)
    assert breaker.state(10.0) is OPEN  # 6 of 11 is


def test_the_window_slides_and_old_failures_are_forgotten() -> None:
    def nine_calls_six_failed() -> CircuitBreaker:
        breaker = CircuitBreaker(failures=100, error_rate=0.5, window=60.0, min_requests=10)
        for _ in range(3):
            breaker.record_failure(0.0)
            breaker.record_failure(0.0)
            breaker.record_success(0.0)
        return breaker

    recent = nine_calls_six_failed()
    recent.record_failure(30.0)
    assert recent.state(30.0) is OPEN  # inside the window the old calls still count

    stale = nine_calls_six_failed()
    assert stale.snapshot(59.0).window_calls == 9
    stale.record_failure(61.0)
    assert stale.state(61.0) is CLOSED
    snapshot = stale.snapshot(61.0)
    assert (snapshot.window_calls, snapshot.window_failures) == (1, 1)


def test_the_window_restarts_when_the_breaker_closes() -> None:
    breaker = CircuitBreaker(failures=100, error_rate=0.5, window=60.0, min_requests=4)
    for _ in range(4):
        breaker.record_failure(0.0)
    assert breaker.state(0.0) is OPEN
    assert breaker.allow(30.0)
    breaker.record_success(30.0)
    assert breaker.snapshot(30.0).window_calls == 0
    breaker.record_failure(31.0)
    assert breaker.state(31.0) is CLOSED


def test_no_window_is_kept_without_an_error_rate() -> None:
    breaker = CircuitBreaker(failures=100)
    for second in range(50):
        breaker.record_failure(float(second))
        breaker.record_success(float(second))
    assert breaker.state(50.0) is CLOSED
    assert breaker.snapshot(50.0).window_calls == 0


# --- which errors count ----------------------------------------------------------------------------------


def test_every_error_kind_has_an_effect() -> None:
    assert set(EFFECTS) == set(ErrorKind)


def test_upstream_sickness_counts() -> None:
    breaker = CircuitBreaker(failures=2)
    breaker.record_error(1.0, UpstreamServerError("boom", provider="p", status=500))
    assert breaker.state(1.0) is CLOSED
    breaker.record_error(2.0, UpstreamTimeout("slow", provider="p", phase="total"))
    assert breaker.state(2.0) is OPEN


@pytest.mark.parametrize("error_class", [UpstreamAuthError, UpstreamPermissionError])
def test_credential_errors_trip_at_once(error_class: type[UpstreamAuthError]) -> None:
    breaker = CircuitBreaker(failures=5)
    breaker.record_error(1.0, error_class("no", provider="p", status=401))
    assert breaker.state(1.0) is OPEN
    assert EFFECTS[error_class.kind] is Effect.TRIP


@pytest.mark.parametrize(
    "error",
    [
        UpstreamBadRequest("bad", provider="p", status=400),
        ContentFiltered("filtered", provider="p", status=400),
        UpstreamNotFound("no such model", provider="p", status=404),
        RateLimited("our own bucket"),
        ProviderUnavailable("p", "disabled"),
    ],
    ids=["bad_request", "content_filter", "not_found", "own-limit", "unavailable"],
)
def test_errors_that_say_nothing_about_the_upstream_are_ignored(error: Exception) -> None:
    breaker = CircuitBreaker(failures=2)
    breaker.record_failure(1.0)
    for second in range(2, 10):
        breaker.record_error(float(second), error)  # type: ignore[arg-type]
    assert breaker.state(10.0) is CLOSED
    assert breaker.snapshot(10.0).consecutive_failures == 1


def test_an_ignored_error_on_the_probe_gives_the_slot_back() -> None:
    breaker = opened_breaker(100.0)
    assert breaker.allow(131.0)
    breaker.record_error(132.0, UpstreamBadRequest("bad", provider="p", status=400))
    assert breaker.state(132.0) is HALF_OPEN
    assert breaker.allow(132.5)


# --- snapshot and config ----------------------------------------------------------------------------------


def test_snapshot_describes_an_open_breaker() -> None:
    breaker = opened_breaker(100.0, cooldown=30.0)
    assert breaker.snapshot(110.0).as_dict() == {
        "state": "open",
        "consecutive_failures": 2,
        "opened_at": 100.0,
        "next_probe_at": 130.0,
        "probe_in_flight": False,
        "window_calls": 0,
        "window_failures": 0,
    }
    assert breaker.snapshot(140.0).state is HALF_OPEN


def test_from_config() -> None:
    config = BreakerConfig(failures=4, error_rate=0.25, window=10.0, min_requests=8, cooldown=5.0)
    breaker = CircuitBreaker.from_config(config)
    assert (breaker.failures, breaker.error_rate, breaker.min_requests, breaker.cooldown) == (4, 0.25, 8, 5.0)
    for _ in range(2):  # 2 of 8 calls failed: 25 % is not above 0.25
        breaker.record_failure(0.0)
        for _ in range(3):
            breaker.record_success(0.0)
    assert breaker.state(0.0) is CLOSED
    breaker.record_failure(0.0)  # 3 of 9
    assert breaker.state(0.0) is OPEN
    assert breaker.state(5.0) is HALF_OPEN
