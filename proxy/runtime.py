"""`Runtime`: everything built from one `Config` that requests need, immutable once built.

Providers are instantiated once (disabled ones are not built; their reasons are kept), and every model name gets
its ordered plan of targets. A config reload builds a new Runtime aside and swaps one reference (see engine.py).
Routing strategies, rate limits, retries, breakers and the cache plug in here as the engine issue lands; today a
plan is tried in its declared order.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.model import Config, ModelConfig, TargetConfig
from proxy.errors import ConfigError, ConfigIssue
from proxy.providers.base import BoundModel, Provider
from proxy.providers.registry import build_provider


@dataclass(frozen=True, slots=True)
class PlannedTarget:
    """One target of a model's plan: the config entry and, when its provider is enabled, the bound model."""

    config: TargetConfig
    bound: BoundModel | None
    unavailable_reason: str | None

    @property
    def label(self) -> str:
        return f"{self.config.provider}/{self.config.model}"


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: ModelConfig
    targets: tuple[PlannedTarget, ...]


class Runtime:
    """Providers and plans for one config version. Build with `Runtime.build(config)`; close with `aclose()`."""

    def __init__(self, config: Config, providers: dict[str, Provider], plans: dict[str, ModelPlan]) -> None:
        self.config = config
        self.providers = providers
        self.plans = plans

    @classmethod
    def build(cls, config: Config) -> Runtime:
        providers: dict[str, Provider] = {}
        issues: list[ConfigIssue] = []
        file = str(config.path) if config.path else "<config>"
        for name, provider_config in config.providers.items():
            if not provider_config.enabled:
                continue
            try:
                providers[name] = build_provider(provider_config, default_max_tokens=config.defaults.max_tokens)
            except ValueError as exc:
                issues.append(ConfigIssue(file, None, None, f"providers.{name}", str(exc), "semantic"))
        if issues:
            raise ConfigError(issues)
        plans = {name: cls._plan(config, model, providers) for name, model in config.models.items()}
        return cls(config, providers, plans)

    @staticmethod
    def _plan(config: Config, model: ModelConfig, providers: dict[str, Provider]) -> ModelPlan:
        targets = []
        for target in model.targets:
            provider = providers.get(target.provider)
            if provider is None:
                reason = config.providers[target.provider].disabled_reason or "disabled"
                targets.append(PlannedTarget(target, None, reason))
                continue
            bound = BoundModel(
                provider,
                target.model,
                context_window=target.context_window,
                max_output_tokens=target.max_output_tokens,
            )
            targets.append(PlannedTarget(target, bound, None))
        return ModelPlan(model, tuple(targets))

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
