"""The typed, frozen config objects code sees after loading (never raw dicts).

`proxy.config.load` builds these from a validated YAML document; nothing else constructs them from user input.
Durations are seconds (float). Secrets are `Secret` objects whose `repr`/`str` never show the value.
Imports nothing from `proxy`: every layer may depend on these objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ProviderType = Literal["openai", "anthropic", "openai_compatible", "mock", "python"]
Strategy = Literal["fallback", "round_robin", "weighted", "least_latency"]

_EMPTY: Mapping[str, Any] = {}


class Secret:
    """A secret string (API key, bearer token). Shows as `'***'`; call `reveal()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutConfig:
    connect: float = 5.0
    first_token: float = 30.0
    total: float = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    concurrency: int | None = None
    max_wait: float = 2.0
    per_worker: bool = False

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.concurrency)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    failures: int = 5
    error_rate: float | None = None
    window: float = 60.0
    min_requests: int = 20
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceConfig:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MockFault:
    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    timeout: bool = False
    cut_after: int | None = None
    malformed_after: int | None = None
    rate: float = 1.0
    first: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    reply: str = "This is a reply from the mock provider."
    replies: tuple[str, ...] = ()
    echo: bool = False
    latency: float = 0.0
    first_token: float = 0.0
    chunk_delay: float = 0.0
    chunk_size: int = 1
    fault: MockFault | None = None
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderConfig:
    name: str
    type: ProviderType
    enabled: bool = True
    disabled_reason: str | None = None
    description: str | None = None
    api_key: Secret | None = None
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    api_version: str | None = None
    headers: Mapping[str, Secret] = field(default_factory=lambda: _EMPTY)
    timeout: TimeoutConfig = TimeoutConfig()
    limits: LimitsConfig = LimitsConfig()
    breaker: BreakerConfig = BreakerConfig()
    pricing: Mapping[str, PriceConfig] = field(default_factory=lambda: _EMPTY)
    max_connections: int = 100
    mock: MockConfig | None = None
    class_path: str | None = None  # type: python -> `package.module:ClassName`
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    provider: str
    model: str
    weight: float = 1.0
    context_window: int | None = None
    max_output_tokens: int | None = None
    limits: LimitsConfig | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCacheConfig:
    enabled: bool | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    name: str
    strategy: Strategy = "fallback"
    targets: tuple[TargetConfig, ...]
    fallback: str | None = None
    description: str | None = None
    cache: ModelCacheConfig = ModelCacheConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultsConfig:
    model: str = "default"
    max_tokens: int | None = 1024
    temperature: float | None = None
    direct_models: bool = False
    clamp_max_tokens: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: Literal["full", "none"] = "full"
    deadline: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    backend: Literal["memory", "redis", "none"] = "memory"
    ttl: float = 300.0
    max_entries: int = 10000
    when: Literal["deterministic", "always", "never"] = "deterministic"


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    backend: Literal["memory", "redis"] = "memory"
    url: Secret | None = None
    failure_mode: Literal["fail_open", "fail_closed"] = "fail_open"
    expected_replicas: int = 1
    timeout: float = 0.1
    key_prefix: str = "llm-proxy"


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateArgument:
    name: str
    description: str | None = None
    required: bool = False
    default: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateConfig:
    name: str
    description: str | None = None
    file: Path | None = None  # absolute, resolved under the template dir
    text: str | None = None
    system: str | None = None
    arguments: tuple[TemplateArgument, ...] = ()
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpServerConfig:
    host: str = "127.0.0.1"
    port: int = 8085
    allowed_hosts: tuple[str, ...] = ()  # DNS-rebinding protection of /mcp; empty: the SDK's default for `host`
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    http: HttpServerConfig = HttpServerConfig()
    bearer_tokens: tuple[Secret, ...] = ()
    grace_period: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TracesConfig:
    exporter: Literal["otlp", "console", "none"] = "none"
    endpoint: str | None = None
    sample_ratio: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LogsConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    service_name: str = "llm-proxy"
    traces: TracesConfig = TracesConfig()
    metrics_exporter: Literal["otlp", "none"] = "none"
    capture_content: bool = False
    resource_attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    logs: LogsConfig = LogsConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole, validated config. `version_hash` is a short hash of the file's content (the config version)."""

    path: Path | None
    version_hash: str
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig]
    defaults: DefaultsConfig = DefaultsConfig()
    retry: RetryConfig = RetryConfig()
    cache: CacheConfig = CacheConfig()
    state: StateConfig = StateConfig()
    template_dir: Path | None = None
    templates: Mapping[str, TemplateConfig] = field(default_factory=lambda: _EMPTY)
    server: ServerConfig = ServerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
