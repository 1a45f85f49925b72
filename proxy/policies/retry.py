"""Retry vs fallback: what to do after a failed attempt, and how long to wait first. Pure: no sleeping, no I/O.

One table (`ACTIONS`) maps each upstream `ErrorKind` to an action (DESIGN.md "Retry vs fallback"):

| kind                                                                 | action                                  |
|----------------------------------------------------------------------|-----------------------------------------|
| connect, timeout, rate_limited, overloaded, server (5xx, 408, 409),  | retry, then fall back                   |
| malformed, interrupted (a stream that broke before its commit point) |                                         |
| auth, permission, not_found                                          | fallback, and mark the target unhealthy |
| context_length                                                       | reroute_context: a larger context window |
| bad_request, content_filter                                          | fail_fast                               |

Errors that are not upstream replies: our own limiter's `RateLimited` and `ProviderUnavailable` fall back at once
(the limiter already waited; a disabled provider will not heal within a request); a `RequestError` raised by a
target's `validate_request` falls back too (that target cannot take the request; another may).

Backoff (stamina-style): before retry `n` (n = failed attempts so far, from 1) wait
`min(max_backoff, initial_backoff * 2**(n-1))`, with full jitter a uniform draw in `[0, that]`. An upstream's
`retry-after` replaces the computed backoff; if it asks for more than `max_backoff`, the target is not retried at
all: we fall back instead (the wait would stall the request; the next target may answer now, and if none is
left, `AllTargetsFailed` still carries the upstream's `retry_after` for the client).

One deadline covers the whole chain. `RetryBudget` (one per request; `RetryPolicy.start()`) owns it and decides.
Rule that keeps the fallbacks' chance: a retry on the current target is made only if
`backoff + duration of the attempt that just failed + reserve * remaining_targets <= time left`, i.e. after waiting
and making another attempt as slow as the last one, every remaining target would still have `reserve` seconds
(`reserve_per_target`, default `deadline / 30`, so 2 s for a 60 s deadline). With no target left the current one
is retried as long as the backoff ends before the deadline. A delay never reaches past the deadline, and once the
deadline is spent the decision is `give_up`. `RetryBudget.attempt_timeout()` tells the engine how long the next
attempt may run so that a single slow attempt cannot eat the remaining targets' reserve either.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from proxy.config.model import RetryConfig
from proxy.errors import ErrorKind, ProviderUnavailable, ProxyError, RateLimited, RequestError, UpstreamError
from proxy.types import Attempt


class Action(enum.StrEnum):
    """What the engine does next after a failed attempt."""

    RETRY = "retry"  # wait `delay`, then try the same target again
    FALLBACK = "fallback"  # move on to the next target
    REROUTE_CONTEXT = "reroute_context"  # move on to a target with a larger context window
    FAIL_FAST = "fail_fast"  # the request itself is wrong: stop and report this error
    GIVE_UP = "give_up"  # the deadline is spent: stop and report every failure so far


ACTIONS: Mapping[ErrorKind, Action] = MappingProxyType(
    {
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
)

MARKS_UNHEALTHY: frozenset[ErrorKind] = frozenset({ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.NOT_FOUND})


def _is_redirect(error: UpstreamError) -> bool:
    """A 3xx (a malformed reply, since redirects are not followed): a misconfigured `base_url`, like a 404."""
    return error.kind is ErrorKind.MALFORMED and error.status is not None and 300 <= error.status < 400


def action_for(error: ProxyError) -> Action:
    """The table's action for `error` (before attempts and the deadline are taken into account)."""
    if isinstance(error, UpstreamError):
        if _is_redirect(error):  # the same URL redirects again: check base_url, meanwhile the next target
            return Action.FALLBACK
        return ACTIONS[error.kind]
    # RateLimited (our limiter already waited), ProviderUnavailable, a target's RequestError, anything else:
    # this target cannot serve the request now, another one may.
    return Action.FALLBACK


def error_label(error: ProxyError) -> str:
    """A short name for the failure in attempt records: the `ErrorKind` value for upstream errors."""
    if isinstance(error, UpstreamError):
        return error.kind.value
    if isinstance(error, RateLimited):
        return "local_rate_limit"
    if isinstance(error, ProviderUnavailable):
        return "unavailable"
    if isinstance(error, RequestError):
        return "invalid_for_target"
    return type(error).__name__


def backoff(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    jitter: Literal["full", "none"],
    rng: random.Random | None = None,
) -> float:
    """Wait before the retry that follows failed attempt `attempt` (1-based).

    `min(maximum, initial * 2**(attempt-1))`; with `jitter="full"` a uniform draw in `[0, that]` from `rng`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, 64))  # the exponent cap avoids float overflow
    if jitter == "none":
        return ceiling
    if rng is None:
        raise ValueError("full jitter needs an rng")
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict after one failed attempt. `delay` is only non-zero for `retry`."""

    action: Action
    delay: float
    reason: str
    mark_unhealthy: bool = False


AttemptRecord = Attempt  # the record kept per attempt; defined in proxy.types so responses can carry it


class RetryPolicy:
    """Retry settings plus the injected rng and clock; shared by requests. `start()` opens one request's budget."""

    __slots__ = ("clock", "deadline", "initial_backoff", "jitter", "max_attempts", "max_backoff", "reserve", "rng")

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        jitter: Literal["full", "none"] = "full",
        deadline: float = 60.0,
        reserve_per_target: float | None = None,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.deadline = deadline
        self.reserve = deadline / 30 if reserve_per_target is None else reserve_per_target
        self.rng = rng
        self.clock = clock

    @classmethod
    def from_config(
        cls,
        config: RetryConfig,
        *,
        rng: random.Random,
        clock: Callable[[], float],
        reserve_per_target: float | None = None,
    ) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            initial_backoff=config.initial_backoff,
            max_backoff=config.max_backoff,
            jitter=config.jitter,
            deadline=config.deadline,
            reserve_per_target=reserve_per_target,
            rng=rng,
            clock=clock,
        )

    def backoff(self, attempt: int) -> float:
        return backoff(
            attempt, initial=self.initial_backoff, maximum=self.max_backoff, jitter=self.jitter, rng=self.rng
        )

    def delay_for(self, error: ProxyError, failed_attempts: int) -> float | None:
        """The wait before retrying after `failed_attempts` failures: the upstream's retry-after if it sent one,
        else the backoff. None when the retry-after exceeds `max_backoff` (then: fall back, don't wait)."""
        retry_after = error.retry_after if isinstance(error, UpstreamError) else None
        if retry_after is None:
            return self.backoff(failed_attempts)
        if retry_after > self.max_backoff:
            return None
        return max(0.0, retry_after)

    def start(self) -> RetryBudget:
        return RetryBudget(self)


class RetryBudget:
    """One request's deadline (across every target) and its attempt records. Not shared between requests."""

    __slots__ = ("_attempt_started", "_policy", "_records", "deadline_at", "started_at")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.started_at = policy.clock()
        self.deadline_at = self.started_at + policy.deadline
        self._attempt_started: float | None = None
        self._records: list[AttemptRecord] = []

    def remaining(self) -> float:
        """Seconds left before the deadline (<= 0 once it has passed)."""
        return self.deadline_at - self._policy.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def attempt_timeout(self, remaining_targets: int) -> float:
        """How long the next attempt may run: the time left minus each remaining target's reserve, but never
        less than a fair share of the time left (time left / (remaining_targets + 1)). 0 once expired."""
        left = self.remaining()
        if left <= 0:
            return 0.0
        return max(left - self._policy.reserve * remaining_targets, left / (remaining_targets + 1))

    def begin_attempt(self) -> None:
        """Mark the start of an attempt, so `decide` knows how long a retry is likely to take."""
        self._attempt_started = self._policy.clock()

    def decide(
        self,
        error: ProxyError,
        attempts_on_target: int,
        remaining_targets: int,
        *,
        target: str = "",
        can_retry: bool = True,
    ) -> Decision:
        """What to do after `error` on a target tried `attempts_on_target` times so far (this one included),
        with `remaining_targets` targets still untried after it. Records the attempt when `target` is given.
        `can_retry=False` (e.g. the target's breaker just opened) turns a retry into a fallback."""
        decision = self._decide(error, attempts_on_target, remaining_targets)
        if decision.action is Action.RETRY and not can_retry:
            decision = Decision(Action.FALLBACK, 0.0, f"{error_label(error)}: its circuit breaker opened")
        if target:
            self._records.append(
                AttemptRecord(
                    target=target,
                    attempt=attempts_on_target,
                    error_kind=error_label(error),
                    status=error.status if isinstance(error, UpstreamError) else None,
                    message=error.message,
                    delay=decision.delay,
                )
            )
        return decision

    def record_success(self, target: str, attempt: int) -> None:
        self._records.append(AttemptRecord(target, attempt, None, None, None, 0.0))

    @property
    def records(self) -> tuple[AttemptRecord, ...]:
        return tuple(self._records)

    def _decide(self, error: ProxyError, attempts: int, remaining_targets: int) -> Decision:
        policy = self._policy
        action = action_for(error)
        label = error_label(error)
        unhealthy = isinstance(error, UpstreamError) and (error.kind in MARKS_UNHEALTHY or _is_redirect(error))
        if action is Action.FAIL_FAST:
            return Decision(Action.FAIL_FAST, 0.0, f"{label}: the request itself is wrong", unhealthy)
        now = policy.clock()
        left = self.deadline_at - now
        if left <= 0:
            return Decision(Action.GIVE_UP, 0.0, f"the {policy.deadline:g}s deadline is spent", unhealthy)
        if action is not Action.RETRY:
            return Decision(action, 0.0, f"{label}: not retried", unhealthy)
        if attempts >= policy.max_attempts:
            return Decision(Action.FALLBACK, 0.0, f"{label}: {attempts} of {policy.max_attempts} attempts used")
        delay = policy.delay_for(error, attempts)
        if delay is None:
            return Decision(
                Action.FALLBACK,
                0.0,
                f"{label}: the upstream asks to wait longer than max_backoff {policy.max_backoff:g}s",
            )
        if delay >= left:
            return Decision(Action.FALLBACK, 0.0, f"{label}: a {delay:.3g}s backoff would pass the deadline")
        if remaining_targets > 0:
            last_attempt = 0.0 if self._attempt_started is None else max(0.0, now - self._attempt_started)
            if delay + last_attempt + policy.reserve * remaining_targets > left:
                return Decision(
                    Action.FALLBACK,
                    0.0,
                    f"{label}: a retry would leave the {remaining_targets} remaining target(s) "
                    f"less than {policy.reserve:.3g}s each",
                )
        return Decision(Action.RETRY, delay, f"{label}: retry {attempts + 1} of {policy.max_attempts}")
