"""Route plans and dry runs as data: what the engine will do with a model, or with one request, sending nothing.

    route_plans(runtime)                 # every model's plan: strategy, targets in order, policies, fallback chain
    route_plan(runtime, "default")       # one model's (raises `UnknownModel`)
    dry_run(runtime, request)            # token estimate, which targets fit, the try order, cacheability

The answers are read from the runtime the engine serves on (its plans, breakers, limits and config), so they are
the engine's own decisions, not a re-derivation: the context checks are `Dispatch._fit`, the order is the model's
router. Nothing is changed: a dry run asks a copy of each router for its order, so no rotation moves. Everything
returned is JSON-ready and secret-free. Used by `llm-proxy explain` (proxy/cli_explain.py) and the status page
(proxy/fronts/status.py).
"""

from __future__ import annotations

import random
from typing import Any

from proxy.config.model import CacheConfig, LimitsConfig, ModelConfig, RetryConfig
from proxy.config_diff import traffic_shares
from proxy.dispatch import Dispatch
from proxy.engine import Engine
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.policies.breaker import BreakerState
from proxy.policies.cache import cache_key, is_cacheable
from proxy.routing import LatencySettings, Router, build_router
from proxy.runtime import ModelPlan, PlannedTarget, Runtime
from proxy.tokens import context_window_for
from proxy.types import ChatRequest

STRATEGY_ORDER = {
    "fallback": "in the declared order",
    "round_robin": "the first target rotates by one per request; the rest follow in rotated order",
    "weighted": "smooth weighted round robin by weight; the rest follow by descending weight",
    "least_latency": "fastest recent average first; unmeasured or stale targets are probed, 5% of requests explore",
}


def _limits(limits: LimitsConfig | None) -> dict[str, Any] | None:
    if limits is None or not limits.any:
        return None
    return {
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "concurrency": limits.concurrency,
        "max_wait": limits.max_wait,
    }


def available(target: PlannedTarget, now: float) -> bool:
    """What the dispatch checks first: the provider is enabled and the target's breaker is not open."""
    return target.bound is not None and target.breaker.state(now) is not BreakerState.OPEN


def _target(runtime: Runtime, target: PlannedTarget, index: int, share: float | None, live: float | None) -> dict:
    provider = runtime.config.providers[target.provider]
    config = target.config
    now = runtime.clock()
    snapshot = target.breaker.snapshot(now)
    source = "config" if config.context_window else ("known model" if context_window_for(config.model) else None)
    return {
        "index": index,
        "label": target.label,
        "provider": target.provider,
        "provider_type": provider.type,
        "model": target.model,
        "weight": config.weight,
        "share": share,
        "live_share": live,
        "context_window": target.context_window,
        "context_window_source": source,
        "max_output_tokens": config.max_output_tokens,
        "enabled": target.bound is not None,
        "disabled_reason": target.unavailable_reason,
        "breaker": {
            "state": snapshot.state.value,
            "consecutive_failures": snapshot.consecutive_failures,
            "next_probe_in": None if snapshot.next_probe_at is None else max(0.0, snapshot.next_probe_at - now),
            "failures": provider.breaker.failures,
            "error_rate": provider.breaker.error_rate,
            "window": provider.breaker.window,
            "min_requests": provider.breaker.min_requests,
            "cooldown": provider.breaker.cooldown,
        },
        "timeout": {
            "connect": provider.timeout.connect,
            "first_token": provider.timeout.first_token,
            "total": provider.timeout.total,
        },
        "limits": {"provider": _limits(provider.limits), "target": _limits(config.limits)},
        "price": None
        if target.price is None
        else {"input_per_mtok": target.price.input_per_mtok, "output_per_mtok": target.price.output_per_mtok},
    }


def cache_policy(cache: CacheConfig, model: ModelConfig) -> dict[str, Any]:
    """The cache rule that applies to `model`, as the engine applies it (`Engine._cache_key`)."""
    when = cache.when
    if model.cache.enabled is False:
        when = "never"
    elif model.cache.enabled and when == "never":
        when = "deterministic"
    if cache.backend == "none":
        when = "never"
    ttl = model.cache.ttl if model.cache.ttl is not None else cache.ttl
    return {"backend": cache.backend, "when": when, "ttl": ttl, "model_enabled": model.cache.enabled}


def retry_policy(retry: RetryConfig) -> dict[str, Any]:
    return {
        "max_attempts": retry.max_attempts,
        "initial_backoff": retry.initial_backoff,
        "max_backoff": retry.max_backoff,
        "jitter": retry.jitter,
        "deadline": retry.deadline,
    }


def route_plan(runtime: Runtime, name: str | None = None) -> dict[str, Any]:
    """One model's plan (None: the default model). Raises `UnknownModel` like a request naming it would."""
    chain = runtime.resolve(name)
    plan = chain[0]
    model = plan.model
    now = runtime.clock()
    up = [available(t, now) for t in plan.targets]
    configured = traffic_shares(model)
    live = traffic_shares(model, up) if not all(up) else configured
    targets = [_target(runtime, t, i, configured[i], live[i]) for i, t in enumerate(plan.targets)]
    seen = {t.label for t in plan.targets}
    fallbacks = []
    for fallback in chain[1:]:
        entries = []
        for t in fallback.targets:
            entries.append(
                {
                    "label": t.label,
                    "enabled": t.bound is not None,
                    "disabled_reason": t.unavailable_reason,
                    "breaker": t.breaker.state(now).value,
                    "already_tried": t.label in seen,
                }
            )
            seen.add(t.label)
        fallbacks.append({"model": fallback.model.name, "strategy": fallback.model.strategy, "targets": entries})
    config = runtime.config
    return {
        "model": model.name,
        "description": model.description,
        "default": model.name == config.defaults.model,
        "strategy": model.strategy,
        "order": STRATEGY_ORDER[model.strategy],
        "targets": targets,
        "available_targets": sum(up),
        "fallback_chain": [p.model.name for p in chain[1:]],
        "fallbacks": fallbacks,
        "cache": cache_policy(config.cache, model),
        "retry": retry_policy(config.retry),
        "defaults": {"max_tokens": config.defaults.max_tokens, "clamp_max_tokens": config.defaults.clamp_max_tokens},
    }


def route_plans(runtime: Runtime) -> list[dict[str, Any]]:
    """Every configured model's plan, in the config's order."""
    return [route_plan(runtime, name) for name in runtime.plans]


# --- dry runs ---------------------------------------------------------------------------------------------


def _router_copy(plan: ModelPlan, runtime: Runtime) -> Router:
    """A router with `plan`'s state whose `order()` may be called without moving the real one; no exploration."""
    router = build_router(plan.model, rng=random.Random(0), clock=runtime.clock, latency=LatencySettings(epsilon=0))
    router.adopt_state(plan.router)
    return router


def _cache_verdict(runtime: Runtime, plan: ModelPlan, request: ChatRequest, bypass: bool) -> dict[str, Any]:
    policy = cache_policy(runtime.config.cache, plan.model)
    cacheable = is_cacheable(request, when=policy["when"], bypass=bypass)
    if bypass:
        reason = "the cache is bypassed for this request"
    elif runtime.config.cache.backend == "none":
        reason = "the cache is off (`cache.backend: none`)"
    elif plan.model.cache.enabled is False:
        reason = f"caching is off for model `{plan.model.name}` (`cache.enabled: false`)"
    elif policy["when"] == "never":
        reason = "`cache.when` is `never`"
    elif policy["when"] == "always":
        reason = "`cache.when` is `always`"
    elif request.temperature == 0:
        reason = "deterministic: temperature is 0"
    elif request.seed is not None:
        reason = "deterministic: a seed is set"
    else:
        shown = "unset" if request.temperature is None else f"{request.temperature:g}"
        reason = f"not deterministic: temperature is {shown} and no seed; only deterministic requests are cached"
    return {
        "cacheable": cacheable,
        "reason": reason,
        "ttl": policy["ttl"] if cacheable else None,
        "key": cache_key(request, plan.cache_scope or plan.model.name) if cacheable else None,
    }


def dry_run(runtime: Runtime, request: ChatRequest, *, bypass_cache: bool = False) -> dict[str, Any]:
    """What serving `request` would do now, sending nothing: the defaults applied, the prompt's token estimate, each
    candidate target in the order it would be tried (or why it is skipped), and whether the answer is cacheable.

    Raises `UnknownModel` (a `ProxyError`) when the request names no configured model."""
    request = Engine._with_defaults(request, runtime, stream=request.stream)
    chain = runtime.resolve(request.model)
    dispatch = Dispatch(runtime, Metrics(), chain, request)
    now = runtime.clock()
    tried: set[str] = set()
    candidates: list[dict[str, Any]] = []
    order: list[str] = []
    for plan in chain:
        up = [available(t, now) for t in plan.targets]
        ranked = _router_copy(plan, runtime).order(up)
        for index in [*ranked, *(i for i, ok in enumerate(up) if not ok)]:
            target = plan.targets[index]
            entry: dict[str, Any] = {
                "model": plan.model.name,
                "target": target.label,
                "context_window": target.context_window,
                "position": None,
                "max_tokens": None,
                "skip": None,
            }
            candidates.append(entry)
            if not up[index]:
                entry["skip"] = target.unavailable_reason or "circuit breaker open after repeated failures"
                continue
            if target.label in tried:
                entry["skip"] = "already tried earlier in the chain"
                continue
            tried.add(target.label)
            fitted = dispatch._fit(target)
            if isinstance(fitted, ProxyError):
                entry["skip"] = fitted.message
                continue
            assert target.bound is not None
            try:
                target.bound.validate_request(fitted)
            except ProxyError as exc:
                entry["skip"] = str(exc)
                continue
            order.append(target.label)
            entry["position"] = len(order)
            entry["max_tokens"] = fitted.max_tokens
    return {
        "model": request.model or runtime.config.defaults.model,
        "route": chain[0].model.name,
        "fallback_chain": [p.model.name for p in chain[1:]],
        "prompt_tokens": dispatch.prompt_tokens,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": request.stream,
        "order": order,
        "candidates": candidates,
        "cache": _cache_verdict(runtime, chain[0], request, bypass_cache),
    }
