"""The engine: takes a normalized `ChatRequest`, picks the model's plan from the current `Runtime`, and walks its
targets until one answers.

Rules kept here (the engine issue adds strategies, retries, limits, breakers and the cache around them):
- the runtime is read once per request, so a reload never changes a request midway;
- a target whose provider is disabled is skipped with its reason; a failing target falls to the next, then to the
  model's `fallback` model; when all fail, `AllTargetsFailed` lists every target's reason;
- a 400-class error (the request itself is wrong) fails fast instead of falling back;
- streams have a commit point: before the first content chunk a failure falls back invisibly; after it, the error
  reaches the caller (never a clean end).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from proxy.errors import (
    AllTargetsFailed,
    ContextLengthExceeded,
    ProviderUnavailable,
    ProxyError,
    UnknownModel,
    UpstreamBadRequest,
)
from proxy.runtime import ModelPlan, PlannedTarget, Runtime
from proxy.types import ChatRequest, ChatResponse, StreamChunk


def _fails_fast(error: ProxyError) -> bool:
    return isinstance(error, UpstreamBadRequest) and not isinstance(error, ContextLengthExceeded)


class Engine:
    """Holds the current runtime; `complete()` and `stream()` serve requests on it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _with_defaults(self, request: ChatRequest, runtime: Runtime) -> ChatRequest:
        defaults = runtime.config.defaults
        changes = {}
        if request.max_tokens is None and defaults.max_tokens is not None:
            changes["max_tokens"] = defaults.max_tokens
        if request.temperature is None and defaults.temperature is not None:
            changes["temperature"] = defaults.temperature
        return dataclasses.replace(request, **changes) if changes else request

    def _plans(self, runtime: Runtime, name: str | None) -> list[ModelPlan]:
        """The plan for `name` followed by its fallback models' plans, in order."""
        name = name or runtime.config.defaults.model
        plan = runtime.plans.get(name)
        if plan is None:
            raise UnknownModel(name, list(runtime.plans))
        chain = [plan]
        while plan.model.fallback and plan.model.fallback not in {p.model.name for p in chain}:
            plan = runtime.plans[plan.model.fallback]
            chain.append(plan)
        return chain

    def _targets(self, runtime: Runtime, request: ChatRequest) -> tuple[str, list[PlannedTarget]]:
        plans = self._plans(runtime, request.model)
        return plans[0].model.name, [target for plan in plans for target in plan.targets]

    async def complete(self, request: ChatRequest) -> ChatResponse:
        runtime = self.runtime
        request = self._with_defaults(request, runtime)
        name, targets = self._targets(runtime, request)
        failures: list[tuple[str, ProxyError]] = []
        for target in targets:
            if target.bound is None:
                failures.append((target.label, ProviderUnavailable(target.config.provider, target.unavailable_reason)))
                continue
            try:
                target.bound.validate_request(request)
                return await target.bound.complete(request)
            except ProxyError as exc:
                if _fails_fast(exc):
                    raise
                failures.append((target.label, exc))
        raise AllTargetsFailed(name, failures)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        runtime = self.runtime
        request = self._with_defaults(dataclasses.replace(request, stream=True), runtime)
        name, targets = self._targets(runtime, request)
        failures: list[tuple[str, ProxyError]] = []
        for target in targets:
            if target.bound is None:
                failures.append((target.label, ProviderUnavailable(target.config.provider, target.unavailable_reason)))
                continue
            committed = False
            try:
                target.bound.validate_request(request)
                async for chunk in target.bound.stream(request):
                    committed = committed or chunk.is_content
                    yield chunk
                return
            except ProxyError as exc:
                if committed or _fails_fast(exc):
                    raise
                failures.append((target.label, exc))
        raise AllTargetsFailed(name, failures)

    async def aclose(self) -> None:
        await self.runtime.aclose()
