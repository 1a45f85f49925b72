"""One request's walk over its candidate targets: routing order, skips, limits, retries, fallbacks, recording.

`Dispatch.run(call)` finds a target that takes the request and returns `(result, Admitted)`:
1. Candidates: the requested model's targets in its router's order, then each `fallback` model's (ordered when
   reached, so an unused fallback's rotation does not move). Skipped without a call, each with its reason kept for
   `AllTargetsFailed`: a disabled provider, an open circuit breaker, a context window the prompt cannot fit, and
   after a context-length error every target whose window is not larger than the one that overflowed.
2. Context: the prompt is estimated once (`proxy.tokens`); with `defaults.clamp_max_tokens`, `max_tokens` is
   lowered to what the target's window (and `max_output_tokens`) leaves, else a request that cannot fit is skipped.
3. Admission: the breaker (`allow`, which in half-open claims the single probe) and the rate limiters (waiting up
   to `max_wait`, never past the deadline); a refusal moves on to the next target.
4. The call, bounded by `RetryBudget.attempt_timeout` so one slow attempt cannot eat the other targets' share;
   then the retry table decides: retry after a backoff, fall back, reroute for context, fail fast, or give up.
   `fallbacks` counts real moves: a failed target followed by the next target being tried (the `proxy.fallback`
   trace event goes out then too), so the last target's failure, with nothing left to try, is no fallback.
Every attempt is recorded once: metrics (per provider, and the GenAI operation histograms), breaker, router
latency, the lease (tokens corrected by real usage), and the attempt history the response carries. `call` may stop
early (a stream returns once its first content chunk arrived, the commit point); the caller reports the final
outcome through `Admitted`.

Time not spent by the proxy itself is summed for the overhead histogram: `upstream_s` (inside calls) and
`waited_s` (backoffs and rate-limit waits). With traces on (`trace`, a `proxy.spans.RequestTrace`), each plan
reached gets a routing span, each attempt a CLIENT span (current while its call runs, so the transport sends its
`traceparent`), and skips, waits, retries, fallbacks and breaker trips become events; with traces off every one of
those is behind a single `is not None` check.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from time import time_ns
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.errors import (
    AllTargetsFailed,
    ContextLengthExceeded,
    ProviderUnavailable,
    ProxyError,
    RateLimited,
    UpstreamTimeout,
)
from proxy.metrics import Metrics, cost_of
from proxy.policies.breaker import BreakerState
from proxy.policies.ratelimit import Lease
from proxy.policies.retry import Action, RetryBudget, error_label
from proxy.routing import Router
from proxy.runtime import ModelPlan, PlannedTarget, Runtime
from proxy.tokens import estimate_prompt_tokens
from proxy.types import Attempt, ChatRequest, ChatResponse, Usage

if TYPE_CHECKING:
    from proxy.spans import RequestTrace

T = TypeVar("T")
Call = Callable[[PlannedTarget, ChatRequest], Awaitable[T]]

_OPEN = BreakerState.OPEN  # an enum member read through its class costs a descriptor call


class Admitted:
    """The target that took the request, with what finishing its attempt needs. Report exactly one outcome."""

    __slots__ = ("_dispatch", "_done", "attempt", "index", "lease", "request", "span", "started", "target")

    def __init__(
        self,
        dispatch: Dispatch,
        target: PlannedTarget,
        index: int,
        request: ChatRequest,
        lease: Lease,
        attempt: int,
        span: Any = None,
    ) -> None:
        self._dispatch = dispatch
        self.target = target
        self.index = index
        self.request = request
        self.lease = lease
        self.attempt = attempt
        self.span = span  # the attempt's span when traces are on
        self.started = dispatch.runtime.clock()
        self._done = False

    async def succeed(
        self, usage: Usage | None, *, first_token_at: float | None = None, response: ChatResponse | None = None
    ) -> float:
        """The attempt answered; returns its cost. `first_token_at` (streams) feeds the latency router; `response`
        (what it answered) names the response model in the metrics and the span."""
        if self._done:
            return 0.0
        self._done = True
        dispatch, target = self._dispatch, self.target
        now = dispatch.runtime.clock()
        cost = cost_of(usage, target.price)
        metrics = dispatch.metrics
        metrics.record_attempt(
            target.provider,
            success=True,
            stream=dispatch.stream,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cost=cost,
            latency_s=now - self.started,
        )
        assert target.bound is not None
        metrics.record_operation(
            target.provider,
            target.bound.provider.type,
            target.model,
            (response.model if response is not None else None) or target.model,
            now - self.started,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
        )
        if self.span is not None and dispatch.trace is not None:
            dispatch.trace.attempt_succeeded(self.span, response, usage)
        target.breaker.record_success(now)
        dispatch.router_of(target).record_latency(self.index, (first_token_at or now) - self.started)
        dispatch.budget.record_success(target.label, self.attempt)
        await self.lease.release(usage.total_tokens if usage else None)
        return cost

    async def fail(self, error: ProxyError) -> None:
        """The attempt failed after the caller took over (a stream cut after its commit point)."""
        if self._done:
            return
        self._done = True
        self._dispatch.record_failure(self.target, self.index, error, self.started, self.span, truncated=True)
        self._dispatch.budget.decide(error, self.attempt, 0, target=self.target.label)
        await self.lease.release(None)

    async def abandon(self) -> None:
        """The caller went away (cancelled) before an outcome: free the probe and the lease, count nothing."""
        if self._done:
            return
        self._done = True
        if self.span is not None:  # the attempt's span: neither answered nor failed
            self.span.set_attribute("proxy.cancelled", True)
            self.span.end()
        self.target.breaker.release_probe()
        await self.lease.release(None)


class Dispatch:
    """The state of one request across its targets. Not shared between requests."""

    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics,
        chain: list[ModelPlan],
        request: ChatRequest,
        trace: RequestTrace | None = None,
    ) -> None:
        self.runtime = runtime
        self.trace = trace
        self.metrics = metrics
        self.chain = chain
        self.request = request
        self.stream = request.stream
        self.budget: RetryBudget = runtime.retry.start()
        self.failures: list[tuple[str, ProxyError]] = []
        self._prompt_tokens: int | None = None
        self.min_window: int | None = None  # after a context-length error: only larger windows are tried
        self.retries = 0
        self.fallbacks = 0  # moves to a next target after a failure (not the last target's failure)
        self._left: tuple[str, ProxyError, bool] | None = None  # a failed target not yet moved on from
        self.upstream_s = 0.0  # time inside upstream calls (up to a stream's commit point)
        self.waited_s = 0.0  # time in backoffs and rate-limit waits
        self._walked = 0  # targets tried so far (an attempt's `proxy.fallback_index`)
        self._routers: dict[int, Router] = {}  # id(target) -> its plan's router
        self._tried: set[str] = set()

    @property
    def prompt_tokens(self) -> int:
        """The prompt's estimated tokens, computed on first need (a context window or a tokens/min limit)."""
        if self._prompt_tokens is None:
            self._prompt_tokens = estimate_prompt_tokens(self.request)
        return self._prompt_tokens

    @property
    def name(self) -> str:
        return self.chain[0].model.name

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return self.budget.records

    def router_of(self, target: PlannedTarget) -> Router:
        return self._routers[id(target)]

    # --- candidates -------------------------------------------------------------------------------------

    def _available(self, target: PlannedTarget, now: float) -> bool:
        return target.bound is not None and target.breaker.state(now) is not _OPEN

    def _candidates(self) -> Iterator[tuple[PlannedTarget, int, int]]:
        """(target, index in its plan, targets remaining after it), skipping unavailable ones with a reason."""
        trace = self.trace
        for position, plan in enumerate(self.chain):
            route_started = time_ns() if trace is not None else 0
            now = self.runtime.clock()
            available = [self._available(t, now) for t in plan.targets]
            for index, target in enumerate(plan.targets):
                self._routers[id(target)] = plan.router
                if not available[index]:
                    self._skip_unavailable(target, now)
            order = plan.router.order(available)
            if trace is not None:
                trace.route(route_started, plan, position, order, available)
            for rank, index in enumerate(order):
                later_here = len(order) - rank - 1
                later_plans = sum(self._available(t, now) for p in self.chain[position + 1 :] for t in p.targets)
                yield plan.targets[index], index, later_here + later_plans

    def _skip_unavailable(self, target: PlannedTarget, now: float) -> None:
        if target.bound is None:
            reason = target.unavailable_reason or "disabled"
        else:
            snapshot = target.breaker.snapshot(now)
            wait = "" if snapshot.next_probe_at is None else f"; next probe in {snapshot.next_probe_at - now:.3g}s"
            reason = f"circuit breaker open after repeated failures{wait}"
        self.failures.append((target.label, ProviderUnavailable(target.provider, reason)))
        if self.trace is not None:
            self.trace.skipped(target.label, "disabled" if target.bound is None else "breaker_open")

    def _fit(self, target: PlannedTarget) -> ChatRequest | ProxyError:
        """The request as this target gets it (max_tokens clamped), or why it cannot take it."""
        request = self.request
        window = target.context_window
        if self.min_window is not None and window is not None and window <= self.min_window:
            return ContextLengthExceeded(
                f"skipped: its {window}-token context window is not larger than the one that overflowed",
                provider=target.provider,
            )
        clamp = self.runtime.config.defaults.clamp_max_tokens
        limit = target.config.max_output_tokens
        max_tokens = request.max_tokens
        if window is not None:
            room = window - self.prompt_tokens
            if room < 1:
                return ContextLengthExceeded(
                    f"the prompt (about {self.prompt_tokens} tokens) does not fit its {window}-token context window",
                    provider=target.provider,
                )
            if max_tokens is not None and max_tokens > room:
                if not clamp:
                    return ContextLengthExceeded(
                        f"the prompt (about {self.prompt_tokens} tokens) plus max_tokens {max_tokens} does not fit "
                        f"its {window}-token context window (defaults.clamp_max_tokens is off)",
                        provider=target.provider,
                    )
                max_tokens = room
        if clamp and limit is not None and max_tokens is not None and max_tokens > limit:
            max_tokens = limit
        if max_tokens != request.max_tokens:
            request = dataclasses.replace(request, max_tokens=max_tokens)
        return request

    # --- recording --------------------------------------------------------------------------------------

    def record_failure(
        self,
        target: PlannedTarget,
        index: int,
        error: ProxyError,
        started: float,
        span: Any = None,
        *,
        truncated: bool = False,
    ) -> None:
        now = self.runtime.clock()
        kind = error_label(error)
        self.metrics.record_attempt(
            target.provider, success=False, error_kind=kind, stream=self.stream, latency_s=now - started
        )
        assert target.bound is not None
        self.metrics.record_operation(
            target.provider, target.bound.provider.type, target.model, "", now - started, error_type=kind
        )
        breaker = target.breaker
        trace = self.trace
        if trace is None:
            breaker.record_error(now, error)
        else:
            was_open = breaker.state(now) is BreakerState.OPEN
            breaker.record_error(now, error)
            opened = not was_open and breaker.state(now) is BreakerState.OPEN
            if opened:
                trace.breaker_opened(target.label)
            if span is not None:
                trace.attempt_failed(span, error, truncated=truncated, breaker_opened=opened)
        self._routers[id(target)].record_failure(index)

    # --- the walk ---------------------------------------------------------------------------------------

    async def run(self, call: Call[T]) -> tuple[T, Admitted]:
        """Try candidates until `call` returns; raises the fail-fast error or `AllTargetsFailed`."""
        for target, index, remaining in self._candidates():
            if target.label in self._tried:  # a fallback model that shares a target already tried
                continue
            self._tried.add(target.label)
            request = self._fit(target)
            if isinstance(request, ProxyError):
                self.failures.append((target.label, request))
                if self.trace is not None:
                    self.trace.skipped(target.label, "context_window")
                continue
            outcome = await self._try_target(target, index, remaining, request, call)
            if outcome is not None:
                return outcome
            if self.budget.expired():
                break
        raise self.all_failed()

    def all_failed(self) -> AllTargetsFailed:
        if self.budget.expired():
            note = f"the {self.runtime.retry.deadline:g}s deadline was spent before every target was tried"
            tried = {label for label, _ in self.failures}
            for plan in self.chain:
                for target in plan.targets:
                    if target.label not in tried:
                        self.failures.append((target.label, ProviderUnavailable(target.provider, note)))
                        tried.add(target.label)
        error = AllTargetsFailed(self.name, self.failures)
        error.attempts = self.attempts
        return error

    async def _try_target(
        self, target: PlannedTarget, index: int, remaining: int, request: ChatRequest, call: Call[T]
    ) -> tuple[T, Admitted] | None:
        assert target.bound is not None
        trace = self.trace
        fallback_index = self._walked
        self._walked += 1
        attempt = 0
        while True:
            attempt += 1
            if not target.breaker.allow(self.runtime.clock()):
                self._skip_unavailable(target, self.runtime.clock())
                return None
            if attempt == 1 and self._left is not None:
                self._moved_on()
            try:
                target.bound.validate_request(request)
                lease = await self._admit(target, request)
            except ProxyError as exc:
                target.breaker.release_probe()
                self.failures.append((target.label, exc))
                self.budget.decide(exc, attempt, remaining, target=target.label)
                self._left = (target.label, exc, False)
                if trace is not None:
                    trace.skipped(target.label, error_label(exc))
                return None
            except BaseException:
                target.breaker.release_probe()
                raise
            span = token = None
            if trace is not None:
                span = trace.start_attempt(
                    target, request, attempt=attempt, fallback_index=fallback_index, waited=lease.waited
                )
                token = trace.enter(span)
            admitted = Admitted(self, target, index, request, lease, attempt, span)
            self.budget.begin_attempt()
            try:
                async with asyncio.timeout(self.budget.attempt_timeout(remaining)) as scope:
                    result = await call(target, request)
                return result, admitted
            except TimeoutError:
                if not scope.expired():
                    await admitted.abandon()
                    raise
                error: ProxyError = UpstreamTimeout(
                    "no answer within this attempt's share of the retry deadline",
                    provider=target.provider,
                    phase="deadline",
                )
            except ProxyError as exc:
                error = exc
            except BaseException:
                await admitted.abandon()
                raise
            finally:
                self.upstream_s += self.runtime.clock() - admitted.started
                if token is not None:
                    trace.leave(token)  # type: ignore[union-attr]
            admitted._done = True
            self.record_failure(target, index, error, admitted.started, span)
            await lease.release(None)
            can_retry = target.breaker.state(self.runtime.clock()) is not BreakerState.OPEN
            decision = self.budget.decide(error, attempt, remaining, target=target.label, can_retry=can_retry)
            if decision.mark_unhealthy:
                target.breaker.record_failure(self.runtime.clock(), trip=True)
                if trace is not None:
                    trace.breaker_opened(target.label)
            if decision.action is Action.RETRY:
                self.retries += 1
                if trace is not None:
                    trace.retry(target.label, attempt, error, decision.delay)
                self.waited_s += decision.delay
                await self.runtime.sleep(decision.delay)
                continue
            if decision.action is Action.FAIL_FAST:
                error.attempts = self.attempts  # type: ignore[attr-defined]
                raise error
            self.failures.append((target.label, error))
            if decision.action is Action.REROUTE_CONTEXT:
                window = target.context_window or self.prompt_tokens
                self.min_window = max(self.min_window or 0, window)
            if decision.action is not Action.GIVE_UP:
                self._left = (target.label, error, True)
            return None

    def _moved_on(self) -> None:
        """A target failed and the next one is now tried: one fallback (and its trace event). A failure with no
        target left to try is no fallback."""
        assert self._left is not None
        label, error, event = self._left
        self._left = None
        self.fallbacks += 1
        if event and self.trace is not None:
            self.trace.fallback(label, error)

    async def _admit(self, target: PlannedTarget, request: ChatRequest) -> Lease:
        """Pass the target's rate limiters, waiting at most their `max_wait` and never past the deadline."""
        limiter = target.limiter
        if not limiter.limiters:
            return await limiter.acquire(0)
        tokens = self.prompt_tokens + (request.max_tokens or 0)
        max_wait = max(0.0, min(limiter.max_wait, self.budget.remaining()))
        started = self.runtime.clock()
        try:
            lease = await limiter.acquire(tokens, max_wait=max_wait)
        except RateLimited:
            waited = self.runtime.clock() - started
            self.waited_s += waited
            self.metrics.record_ratelimit_wait(target.provider, waited, admitted=False)
            if self.trace is not None:
                self.trace.ratelimit_wait(target.label, waited, admitted=False)
            raise
        if lease.waited > 0:
            self.waited_s += lease.waited
            self.metrics.record_ratelimit_wait(target.provider, lease.waited, admitted=True)
            if self.trace is not None:
                self.trace.ratelimit_wait(target.label, lease.waited, admitted=True)
        return lease
