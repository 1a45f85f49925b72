"""`Runtime`: everything built from one `Config` that requests need, composed once at config load.

- Providers are instantiated once (disabled ones are not built; their reasons are kept).
- Every configured model gets a `ModelPlan`: its targets (`PlannedTarget`: bound model, resolved context window,
  price, rate limiter chain, circuit breaker) and its router (strategy state).
- Breakers are per target (`provider/model`), shared by every model that routes to that target, with the
  provider's `breaker` settings. Rate limiters: one per provider (its `limits`), plus one per target entry that
  sets its own `limits`; a call needs both (`LimiterChain`).
- A reload builds the new runtime with `previous=` the old one: providers whose settings (and `defaults`) did not
  change are taken over with their connection pools, rate-limit buckets and breakers; models whose settings did not
  change keep their router state. The old runtime then closes only the providers it still owns.
- Shared state (`state.backend: redis`): limiters are `RedisLimiter`s (limits marked `per_worker` stay in memory)
  and breakers `SharedBreaker`s over one `RedisState` (`self.state`), which a reload with the same `state:` takes
  over (limiters and breakers too, as above); a changed `state:` builds everything afresh, and the old runtime
  closes the old connection. Redis keys are named by scope, so shared buckets outlive reloads and restarts.
  The runtime's default clock is per host, so shared limits then read Redis's `TIME`; a clock injected for tests
  is used as the shared time base instead.
- With `defaults.direct_models`, a request may name `provider/model` directly; such plans are built on first use
  and kept (bounded), sharing the provider's limiter and the target's breaker.
- The retry policy is built once; each request opens its own budget from it.
- Prompt templates are read and compiled once (`PromptTemplates`); one that cannot be built rejects the config.

Time, sleeping and randomness are injected (`clock`, `sleep`, `rng`) so the engine can be tested on a fake clock.
A config reload builds a new Runtime aside and the engine swaps one reference; in-flight requests keep the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config.model import (
    BreakerConfig,
    Config,
    LimitsConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    StateConfig,
    TargetConfig,
)
from proxy.errors import ConfigError, ConfigIssue, UnknownModel
from proxy.policies.breaker import BreakerState, CircuitBreaker
from proxy.policies.ratelimit import Limiter, LimiterChain, RateLimiter
from proxy.policies.redis_breaker import SharedBreaker
from proxy.policies.redis_ratelimit import RedisLimiter
from proxy.policies.redis_state import RedisState
from proxy.policies.retry import RetryPolicy
from proxy.providers.base import BoundModel, Provider
from proxy.providers.registry import build_provider
from proxy.routing import Router, build_router
from proxy.templates import PromptTemplates
from proxy.tokens import context_window_for

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MAX_DIRECT_PLANS = 1024  # distinct `provider/model` names kept; beyond that a plan is built per request


def _same_state(old: StateConfig, new: StateConfig) -> bool:
    """Whether buckets and breakers can be carried over: the same store (any two memory settings are)."""
    return old == new or (old.backend == new.backend == "memory")


@dataclass(frozen=True, slots=True)
class PlannedTarget:
    """One target of a model's plan, with everything a call to it needs, resolved at load time."""

    config: TargetConfig
    bound: BoundModel | None  # None when the provider is disabled
    unavailable_reason: str | None
    label: str  # `provider/model`
    context_window: int | None  # the config's, else the known window of the model id, else None (unknown)
    price: PriceConfig | None
    limiter: LimiterChain
    breaker: CircuitBreaker
    # The name and the attributes of this target's attempt spans that never change, made on first use
    # (proxy/spans.py).
    span_blocks: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def model(self) -> str:
        return self.config.model


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: ModelConfig
    targets: tuple[PlannedTarget, ...]
    router: Router
    cache_scope: str  # the model's name plus a hash of its settings: part of the response-cache key
    # The attributes of this plan's routing spans that never change (by whether the plan is a fallback model's),
    # and the target labels of the candidate orders seen (by order), made on first use (proxy/spans.py).
    span_blocks: dict[bool, Any] = field(default_factory=dict, compare=False, repr=False)
    span_orders: dict[tuple[int, ...], tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)


def _price(provider: ProviderConfig, model: str) -> PriceConfig | None:
    return provider.pricing.get(model)


class Runtime:
    """Providers, plans and policies for one config version. Build with `Runtime.build(config)`; `aclose()` it."""

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        *,
        templates: PromptTemplates | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.templates = templates if templates is not None else PromptTemplates.from_config(config)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retry = RetryPolicy.from_config(config.retry, rng=self.rng, clock=clock)
        # The attributes of this config version's request spans, by whether the request streams; and those blocks
        # joined with the HTTP server spans' (FastSpan.extend_block, bounded) (proxy/spans.py).
        self.span_blocks: dict[bool, Any] = {}
        self.server_span_blocks: dict[Any, Any] = {}
        self._owned = set(providers)  # providers this runtime closes (a reload hands kept ones to its successor)
        self.unchanged: frozenset[str] = frozenset()  # providers whose settings equal the previous runtime's
        if previous is not None:
            self.unchanged = frozenset(
                name
                for name, cfg in config.providers.items()
                if previous.config.providers.get(name) == cfg and previous.config.defaults == config.defaults
            )
        self._previous = previous
        carry = previous is not None and _same_state(previous.config.state, config.state)
        self._carried = self.unchanged if carry else frozenset()  # providers whose limiters/breakers are kept
        self.state: RedisState | None = None
        if config.state.backend == "redis":
            if carry and previous is not None and previous.state is not None:
                self.state = previous.state
            else:
                self.state = RedisState(config.state, clock=clock)
        self._owns_state = self.state is not None  # closed by `aclose` unless a later runtime takes it over
        self.limiters = {
            name: previous.limiters[name]
            if previous is not None and name in self._carried
            else self._limiter(cfg.limits, name)
            for name, cfg in config.providers.items()
        }
        self.breakers: dict[str, CircuitBreaker] = {}
        self._target_limiters: dict[tuple[str, str, LimitsConfig], RateLimiter] = {}
        self.plans: dict[str, ModelPlan] = {name: self._plan(model) for name, model in config.models.items()}
        self._direct: dict[str, ModelPlan] = {}
        self._previous = None  # do not keep the old runtime alive
        if previous is not None and self.state is not None and previous.state is self.state:
            previous._owns_state = False  # handed on: the old runtime must not close it

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        previous: Runtime | None = None,
    ) -> Runtime:
        """Build everything `config` needs. With `previous` (a reload), providers whose settings did not change are
        taken over with their connection pools, rate-limit buckets, breakers and routers' state."""
        templates = PromptTemplates.from_config(config)  # ConfigError when one cannot be built
        providers: dict[str, Provider] = {}
        issues: list[ConfigIssue] = []
        file = str(config.path) if config.path else "<config>"
        for name, provider_config in config.providers.items():
            if not provider_config.enabled:
                continue
            if (
                previous is not None
                and name in previous.providers
                and previous.config.providers.get(name) == provider_config
                and previous.config.defaults == config.defaults
            ):
                providers[name] = previous.providers[name]
                continue
            try:
                providers[name] = build_provider(provider_config, default_max_tokens=config.defaults.max_tokens)
            except ValueError as exc:
                issues.append(ConfigIssue(file, None, None, f"providers.{name}", str(exc), "semantic"))
        if issues:  # what was built holds nothing open yet: connection pools open on first use
            raise ConfigError(issues)
        runtime = cls(config, providers, templates=templates, clock=clock, sleep=sleep, rng=rng, previous=previous)
        if previous is not None:
            for name, provider in providers.items():
                if previous.providers.get(name) is provider:
                    previous._owned.discard(name)
        return runtime

    # --- building -----------------------------------------------------------------------------------------

    def _limiter(self, limits: LimitsConfig, scope: str) -> RateLimiter:
        """In Redis when the state is shared and the limits are not `per_worker`; in memory otherwise."""
        if self.state is None or limits.per_worker:
            return Limiter.from_config(limits, scope, clock=self.clock, sleep=self.sleep)
        shared_clock = None if self.clock is time.monotonic else self.clock
        return RedisLimiter.from_config(limits, scope, self.state, clock=shared_clock, sleep=self.sleep)

    def _new_breaker(self, label: str, config: BreakerConfig) -> CircuitBreaker:
        if self.state is None:
            return CircuitBreaker.from_config(config)
        return SharedBreaker.from_config(config, label, self.state, clock=self.clock)

    def _breaker(self, label: str, provider: ProviderConfig) -> CircuitBreaker:
        breaker = self.breakers.get(label)
        if breaker is None:
            previous = self._previous
            if previous is not None and provider.name in self._carried and label in previous.breakers:
                breaker = previous.breakers[label]
            else:
                breaker = self._new_breaker(label, provider.breaker)
            self.breakers[label] = breaker
        return breaker

    def _target_limiter(self, model_name: str, label: str, limits: LimitsConfig, provider: str) -> RateLimiter:
        key = (model_name, label, limits)
        previous = self._previous
        if previous is not None and provider in self._carried and key in previous._target_limiters:
            limiter = previous._target_limiters[key]
        else:
            limiter = self._limiter(limits, f"{model_name}:{label}")
        self._target_limiters[key] = limiter
        return limiter

    def _target(self, model_name: str, target: TargetConfig) -> PlannedTarget:
        provider_config = self.config.providers[target.provider]
        label = f"{target.provider}/{target.model}"
        limiters = [self.limiters[target.provider]]
        if target.limits is not None:
            limiters.append(self._target_limiter(model_name, label, target.limits, target.provider))
        window = target.context_window or context_window_for(target.model)
        provider = self.providers.get(target.provider)
        bound = None
        reason = None
        if provider is None:
            reason = provider_config.disabled_reason or "disabled"
        else:
            bound = BoundModel(
                provider, target.model, context_window=window, max_output_tokens=target.max_output_tokens
            )
        return PlannedTarget(
            config=target,
            bound=bound,
            unavailable_reason=reason,
            label=label,
            context_window=window,
            price=_price(provider_config, target.model),
            limiter=LimiterChain(limiters),
            breaker=self._breaker(label, provider_config),
        )

    def _plan(self, model: ModelConfig) -> ModelPlan:
        targets = tuple(self._target(model.name, target) for target in model.targets)
        router = build_router(model, rng=self.rng, clock=self.clock)
        providers = {target.provider for target in model.targets}
        previous = self._previous
        old = previous.plans.get(model.name) if previous is not None else None
        if old is not None and old.model == model and providers <= self.unchanged:
            router.adopt_state(old.router)
        # The cache scope changes whenever the model or a provider it routes to changes, so a reload never serves
        # answers cached under different settings (secrets show as *** in the repr, so none enters the hash).
        settings = repr((model, [self.config.providers[name] for name in sorted(providers)]))
        scope = f"{model.name}@{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
        return ModelPlan(model, targets, router, scope)

    # --- lookups ------------------------------------------------------------------------------------------

    def resolve(self, name: str | None) -> list[ModelPlan]:
        """The plan for `name` (None: the default model) followed by its fallback models' plans, in order.

        Raises `UnknownModel` naming the known models (and how to enable `provider/model` names when that would
        have matched)."""
        name = name or self.config.defaults.model
        plan = self.plans.get(name) or self._direct_plan(name)
        chain = [plan]
        seen = {plan.model.name}
        while plan.model.fallback and plan.model.fallback not in seen:
            plan = self.plans[plan.model.fallback]
            seen.add(plan.model.name)
            chain.append(plan)
        return chain

    def _direct_plan(self, name: str) -> ModelPlan:
        plan = self._direct.get(name)
        if plan is not None:
            return plan
        provider, _, model = name.partition("/")
        known = list(self.plans)
        if not model or provider not in self.config.providers:
            raise UnknownModel(name, known)
        if not self.config.defaults.direct_models:
            raise UnknownModel(
                name,
                known,
                hint=f"`{provider}/...` names a provider's model directly, which this config does not allow "
                "(set `defaults.direct_models: true` to allow it)",
            )
        plan = self._plan(ModelConfig(name=name, targets=(TargetConfig(provider=provider, model=model),)))
        if len(self._direct) < MAX_DIRECT_PLANS:
            self._direct[name] = plan
        return plan

    def provider_breaker_state(self, provider: str) -> dict[str, Any]:
        """The provider's breakers: the worst state of its targets, and each target's snapshot."""
        now = self.clock()
        prefix = f"{provider}/"
        targets = {
            label[len(prefix) :]: breaker.snapshot(now).as_dict()
            for label, breaker in self.breakers.items()
            if label.startswith(prefix)
        }
        states = {snapshot["state"] for snapshot in targets.values()}
        worst = next(
            (s.value for s in (BreakerState.OPEN, BreakerState.HALF_OPEN) if s.value in states),
            BreakerState.CLOSED.value,
        )
        return {"state": worst, "targets": targets}

    def state_stats(self) -> dict[str, Any] | None:
        """The shared state's health and counters (`RedisState.stats()`), None with memory state."""
        return None if self.state is None else self.state.stats()

    async def aclose(self) -> None:
        """Close the providers (and the Redis connection) this runtime still owns; those a reload handed on stay."""
        for name in sorted(self._owned):
            await self.providers[name].aclose()
        self._owned.clear()
        if self.state is not None and self._owns_state:
            self._owns_state = False
            await self.state.aclose()
