"""Retry/fallback policy: the action table, the backoff schedule, retry-after, attempts and the shared deadline."""

from __future__ import annotations

import random

import pytest

from proxy.config.model import RetryConfig
from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    ErrorKind,
    ProviderUnavailable,
    RateLimited,
    RequestError,
    StreamInterrupted,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from proxy.policies.retry import ACTIONS, Action, AttemptRecord, RetryPolicy, action_for, backoff


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_error(kind: ErrorKind, *, status: int | None = None, retry_after: float | None = None) -> UpstreamError:
    classes: dict[ErrorKind, type[UpstreamError]] = {
        ErrorKind.CONNECT: UpstreamConnectError,
        ErrorKind.RATE_LIMITED: UpstreamRateLimited,
        ErrorKind.OVERLOADED: UpstreamOverloaded,
        ErrorKind.SERVER: UpstreamServerError,
        ErrorKind.AUTH: UpstreamAuthError,
        ErrorKind.PERMISSION: UpstreamPermissionError,
        ErrorKind.NOT_FOUND: UpstreamNotFound,
        ErrorKind.BAD_REQUEST: UpstreamBadRequest,
        ErrorKind.CONTEXT_LENGTH: ContextLengthExceeded,
        ErrorKind.CONTENT_FILTER: ContentFiltered,
        ErrorKind.MALFORMED: UpstreamProtocolError,
    }
    if kind is ErrorKind.TIMEOUT:
        return UpstreamTimeout("timed out", provider="p", phase="first_token", retry_after=retry_after)
    if kind is ErrorKind.INTERRUPTED:
        return StreamInterrupted("cut", provider="p", partial_text="", retry_after=retry_after)
    error = classes[kind](f"{kind.value} failure", provider="p", status=status, retry_after=retry_after)
    assert error.kind is kind
    return error


def make_policy(clock: FakeClock, **overrides: object) -> RetryPolicy:
    settings: dict[str, object] = {
        "max_attempts": 3,
        "initial_backoff": 0.5,
        "max_backoff": 8.0,
        "jitter": "none",
        "deadline": 60.0,
    }
    settings.update(overrides)
    return RetryPolicy(rng=random.Random(1), clock=clock, **settings)  # type: ignore[arg-type]


# --- backoff ----------------------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_maximum() -> None:
    schedule = [backoff(n, initial=0.5, maximum=8.0, jitter="none") for n in range(1, 8)]
    assert schedule == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_with_a_huge_attempt_number_stays_at_the_maximum() -> None:
    assert backoff(5000, initial=0.5, maximum=8.0, jitter="none") == 8.0


def test_full_jitter_is_bounded_by_the_exponential_ceiling_and_seeded() -> None:
    rng = random.Random(42)
    draws = [backoff(n, initial=0.5, maximum=8.0, jitter="full", rng=rng) for n in range(1, 8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.0 <= d <= c for d, c in zip(draws, ceilings, strict=True))
    assert draws != ceilings  # jitter actually happened
    again = random.Random(42)
    assert draws == [backoff(n, initial=0.5, maximum=8.0, jitter="full", rng=again) for n in range(1, 8)]
    assert draws[0] == pytest.approx(0.5 * random.Random(42).random())


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    draws = [backoff(3, initial=1.0, maximum=8.0, jitter="full", rng=rng) for _ in range(2000)]
    assert max(draws) <= 4.0
    assert min(draws) < 0.1 and max(draws) > 3.9
    assert 1.8 < sum(draws) / len(draws) < 2.2


def test_backoff_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff(0, initial=0.5, maximum=8.0, jitter="none")
    with pytest.raises(ValueError, match="rng"):
        backoff(1, initial=0.5, maximum=8.0, jitter="full")


def test_zero_initial_backoff_means_no_waiting() -> None:
    clock = FakeClock()
    budget = make_policy(clock, initial_backoff=0.0, jitter="full").start()
    decision = budget.decide(make_error(ErrorKind.SERVER), 1, 0)
    assert decision.action is Action.RETRY and decision.delay == 0.0


# --- the action table -------------------------------------------------------------------------------------

EXPECTED_ACTIONS = {
    ErrorKind.CONNECT: Action.RETRY,
    ErrorKind.TIMEOUT: Action.RETRY,
    ErrorKind.RATE_LIMITED: Action.RETRY,
    ErrorKind.OVERLOADED: Action.RETRY,
    ErrorKind.SERVER: Action.RETRY,
    ErrorKind.MALFORMED: Action.RETRY,
    ErrorKind.INTERRUPTED: Action.RETRY,
    ErrorKind.AUTH: Action.FALLBACK,
    ErrorKind.PERMISSION: Action.FALLBACK,
    ErrorKind.NOT_FOUND: Action.FALLBACK,
    ErrorKind.CONTEXT_LENGTH: Action.REROUTE_CONTEXT,
    ErrorKind.BAD_REQUEST: Action.FAIL_FAST,
    ErrorKind.CONTENT_FILTER: Action.FAIL_FAST,
}


def test_the_table_covers_every_error_kind() -> None:
    assert set(ACTIONS) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.value)
def test_first_failure_of_each_kind_gets_its_action(kind: ErrorKind) -> None:
    budget = make_policy(FakeClock()).start()
    decision = budget.decide(make_error(kind), attempts_on_target=1, remaining_targets=1)
    assert action_for(make_error(kind)) is EXPECTED_ACTIONS[kind]
    assert decision.action is EXPECTED_ACTIONS[kind]
    assert decision.mark_unhealthy is (kind in {ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.NOT_FOUND})
    assert decision.delay == (0.5 if decision.action is Action.RETRY else 0.0)
    assert decision.reason


@pytest.mark.parametrize("status", [408, 409, 500, 502, 504])
def test_server_statuses_including_408_and_409_are_retried(status: int) -> None:
    budget = make_policy(FakeClock()).start()
    assert budget.decide(make_error(ErrorKind.SERVER, status=status), 1, 0).action is Action.RETRY


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_falls_back_and_marks_the_target_unhealthy_instead_of_being_retried(status: int) -> None:
    # redirects are not followed, so the same URL redirects again: a misconfigured base_url, like a 404
    budget = make_policy(FakeClock()).start()
    decision = budget.decide(make_error(ErrorKind.MALFORMED, status=status), 1, 1)
    assert (decision.action, decision.delay, decision.mark_unhealthy) == (Action.FALLBACK, 0.0, True)
    unreadable = budget.decide(make_error(ErrorKind.MALFORMED, status=200), 1, 1)  # a garbled body may not repeat
    assert (unreadable.action, unreadable.mark_unhealthy) == (Action.RETRY, False)


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("our bucket is empty", retry_after=0.5),
        ProviderUnavailable("openai", "OPENAI_API_KEY is not set"),
        RequestError("max_tokens too large for this target", param="max_tokens"),
    ],
    ids=["own-rate-limit", "unavailable", "invalid-for-target"],
)
def test_errors_that_are_not_upstream_replies_fall_back_at_once(error: Exception) -> None:
    budget = make_policy(FakeClock()).start()
    decision = budget.decide(error, 1, 2)  # type: ignore[arg-type]
    assert decision.action is Action.FALLBACK
    assert decision.delay == 0.0
    assert not decision.mark_unhealthy


# --- retry-after ------------------------------------------------------------------------------------------


def test_retry_after_overrides_the_backoff() -> None:
    budget = make_policy(FakeClock(), jitter="full").start()
    decision = budget.decide(make_error(ErrorKind.RATE_LIMITED, retry_after=3.25), 1, 0)
    assert decision.action is Action.RETRY
    assert decision.delay == 3.25


def test_retry_after_equal_to_the_maximum_is_still_honoured() -> None:
    budget = make_policy(FakeClock()).start()
    assert budget.decide(make_error(ErrorKind.OVERLOADED, retry_after=8.0), 1, 0).delay == 8.0


def test_retry_after_beyond_the_maximum_falls_back_instead_of_waiting() -> None:
    budget = make_policy(FakeClock()).start()
    decision = budget.decide(make_error(ErrorKind.RATE_LIMITED, retry_after=30.0), 1, 1)
    assert decision.action is Action.FALLBACK
    assert decision.delay == 0.0
    assert "max_backoff" in decision.reason


# --- attempts and the deadline ----------------------------------------------------------------------------


def test_attempts_per_target_are_capped() -> None:
    budget = make_policy(FakeClock(), max_attempts=3).start()
    error = make_error(ErrorKind.CONNECT)
    assert [budget.decide(error, n, 1).action for n in (1, 2, 3)] == [Action.RETRY, Action.RETRY, Action.FALLBACK]
    assert [budget.decide(error, n, 1).delay for n in (1, 2)] == [0.5, 1.0]


def test_max_attempts_one_never_retries() -> None:
    budget = make_policy(FakeClock(), max_attempts=1).start()
    assert budget.decide(make_error(ErrorKind.TIMEOUT), 1, 0).action is Action.FALLBACK


def test_a_backoff_that_would_pass_the_deadline_is_not_taken() -> None:
    clock = FakeClock()
    budget = make_policy(clock, deadline=10.0).start()
    clock.advance(9.7)
    decision = budget.decide(make_error(ErrorKind.SERVER), 1, 0)  # backoff 0.5 > 0.3 left
    assert decision.action is Action.FALLBACK
    assert "deadline" in decision.reason


def test_after_the_deadline_everything_gives_up_but_bad_requests_still_fail_fast() -> None:
    clock = FakeClock()
    budget = make_policy(clock, deadline=5.0).start()
    clock.advance(5.0)
    assert budget.expired()
    for kind in (ErrorKind.SERVER, ErrorKind.AUTH, ErrorKind.CONTEXT_LENGTH):
        assert budget.decide(make_error(kind), 1, 3).action is Action.GIVE_UP
    assert budget.decide(make_error(ErrorKind.BAD_REQUEST), 1, 3).action is Action.FAIL_FAST
    assert budget.decide(RateLimited("full"), 1, 3).action is Action.GIVE_UP


def test_the_last_target_is_retried_as_long_as_the_backoff_fits() -> None:
    clock = FakeClock()
    budget = make_policy(clock, deadline=10.0, max_attempts=10).start()
    budget.begin_attempt()
    clock.advance(8.0)  # a slow attempt; no reserve is needed when no target is left
    decision = budget.decide(make_error(ErrorKind.TIMEOUT), 1, remaining_targets=0)
    assert decision.action is Action.RETRY and decision.delay == 0.5


def simulate(
    policy: RetryPolicy, clock: FakeClock, attempt_seconds: list[float], error: UpstreamError
) -> tuple[list[tuple[int, float]], list[float]]:
    """An engine's loop where every attempt fails: returns (target index, start time) per attempt and the
    end time of every sleep."""
    budget = policy.start()
    attempts: list[tuple[int, float]] = []
    sleeps_end: list[float] = []
    for index, seconds in enumerate(attempt_seconds):
        tries = 0
        while True:
            if budget.expired():
                return attempts, sleeps_end
            attempts.append((index, clock.now))
            budget.begin_attempt()
            clock.advance(min(seconds, budget.attempt_timeout(len(attempt_seconds) - index - 1)))
            tries += 1
            decision = budget.decide(error, tries, len(attempt_seconds) - index - 1, target=f"t{index}")
            if decision.action is Action.RETRY:
                clock.advance(decision.delay)
                sleeps_end.append(clock.now)
                continue
            if decision.action is Action.GIVE_UP:
                return attempts, sleeps_end
            break
    return attempts, sleeps_end


def test_a_slow_failing_primary_leaves_the_fallbacks_their_chance() -> None:
    clock = FakeClock(0.0)
    policy = make_policy(clock, deadline=60.0, max_attempts=3)  # reserve 2 s per remaining target
    attempts, sleeps_end = simulate(policy, clock, [20.0, 0.1, 0.1], make_error(ErrorKind.TIMEOUT))
    targets = [index for index, _ in attempts]
    assert targets.count(0) == 2  # a third 20 s attempt would have left nothing for the others
    assert {1, 2} <= set(targets)
    assert all(end < 60.0 for end in sleeps_end)
    assert all(start < 60.0 for _, start in attempts)


def test_a_fast_failing_primary_stops_retrying_before_the_fallbacks_are_starved() -> None:
    clock = FakeClock(0.0)
    policy = make_policy(clock, deadline=10.0, max_attempts=20, initial_backoff=1.0)
    attempts, sleeps_end = simulate(policy, clock, [0.0, 0.0, 0.0], make_error(ErrorKind.SERVER))
    primary_starts = [start for index, start in attempts if index == 0]
    assert primary_starts == [0.0, 1.0, 3.0, 7.0]  # the 8 s backoff after t=7 would pass the deadline
    assert {1, 2} <= {index for index, _ in attempts}
    assert all(end < 10.0 for end in sleeps_end)


@pytest.mark.parametrize("seed", range(20))
def test_the_deadline_is_never_exceeded_with_jitter_and_many_targets(seed: int) -> None:
    clock = FakeClock(0.0)
    policy = RetryPolicy(
        max_attempts=5,
        initial_backoff=0.3,
        max_backoff=4.0,
        jitter="full",
        deadline=15.0,
        rng=random.Random(seed),
        clock=clock,
    )
    durations = [random.Random(seed + 100).uniform(0.0, 6.0) for _ in range(4)]
    attempts, sleeps_end = simulate(policy, clock, durations, make_error(ErrorKind.OVERLOADED))
    assert all(end < 15.0 for end in sleeps_end)
    assert all(start < 15.0 for _, start in attempts)
    assert clock.now <= 15.0  # attempt_timeout keeps even the attempts inside the deadline
    assert {index for index, _ in attempts} == set(range(4))  # every target was tried


def test_attempt_timeout_keeps_a_reserve_but_never_below_a_fair_share() -> None:
    clock = FakeClock()
    budget = make_policy(clock, deadline=60.0).start()  # reserve 2 s
    assert budget.attempt_timeout(2) == pytest.approx(56.0)
    assert budget.attempt_timeout(0) == pytest.approx(60.0)
    clock.advance(57.0)
    assert budget.attempt_timeout(2) == pytest.approx(1.0)  # 3 s left, shared by three targets
    clock.advance(5.0)
    assert budget.attempt_timeout(2) == 0.0


def test_an_explicit_reserve_per_target_is_used() -> None:
    clock = FakeClock()
    budget = make_policy(clock, deadline=60.0, reserve_per_target=10.0).start()
    budget.begin_attempt()
    clock.advance(30.0)
    # 0.5 backoff + 30 s attempt + 10 s reserve = 40.5 > 30 left
    assert budget.decide(make_error(ErrorKind.TIMEOUT), 1, 1).action is Action.FALLBACK


# --- records and construction -----------------------------------------------------------------------------


def test_decisions_are_recorded_as_attempts() -> None:
    budget = make_policy(FakeClock()).start()
    budget.decide(make_error(ErrorKind.SERVER, status=502), 1, 1, target="openai/gpt-4o-mini")
    budget.decide(make_error(ErrorKind.AUTH, status=401), 1, 0, target="anthropic/haiku")
    budget.record_success("local/llama", 1)
    assert budget.records == (
        AttemptRecord("openai/gpt-4o-mini", 1, "server", 502, "server failure", 0.5),
        AttemptRecord("anthropic/haiku", 1, "auth", 401, "auth failure", 0.0),
        AttemptRecord("local/llama", 1, None, None, None, 0.0),
    )
    assert budget.records[0].as_dict() == {
        "target": "openai/gpt-4o-mini",
        "attempt": 1,
        "error_kind": "server",
        "status": 502,
        "message": "server failure",
        "delay": 0.5,
    }


def test_decide_without_a_target_records_nothing() -> None:
    budget = make_policy(FakeClock()).start()
    budget.decide(make_error(ErrorKind.SERVER), 1, 1)
    assert budget.records == ()


def test_from_config() -> None:
    clock = FakeClock()
    config = RetryConfig(max_attempts=4, initial_backoff=0.25, max_backoff=2.0, jitter="none", deadline=90.0)
    policy = RetryPolicy.from_config(config, rng=random.Random(0), clock=clock)
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff, policy.jitter, policy.deadline) == (
        4,
        0.25,
        2.0,
        "none",
        90.0,
    )
    assert policy.reserve == pytest.approx(3.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    budget = policy.start()
    assert budget.deadline_at == clock.now + 90.0
    clock.advance(30.0)
    assert budget.remaining() == pytest.approx(60.0)
