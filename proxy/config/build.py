"""Schema-valid, semantically checked config data -> the frozen objects of `proxy.config.model`.

The only place that reads the raw dictionaries; everything after this sees typed fields, seconds for durations and
`Secret` for keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.config.durations import parse_duration
from proxy.config.model import (
    BreakerConfig,
    CacheConfig,
    Config,
    DefaultsConfig,
    HttpServerConfig,
    LimitsConfig,
    LogsConfig,
    MockConfig,
    MockFault,
    ModelCacheConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    RetryConfig,
    Secret,
    ServerConfig,
    StateConfig,
    TargetConfig,
    TelemetryConfig,
    TemplateArgument,
    TemplateConfig,
    TimeoutConfig,
    TracesConfig,
)
from proxy.config.template_checks import resolve_template_file


def _seconds(section: dict[str, Any], key: str, default: float) -> float:
    return parse_duration(section[key]) if key in section else default


def _maybe_seconds(section: dict[str, Any], key: str) -> float | None:
    return parse_duration(section[key]) if key in section else None


def _limits(raw: dict[str, Any]) -> LimitsConfig:
    return LimitsConfig(
        requests_per_minute=raw.get("requests_per_minute"),
        tokens_per_minute=raw.get("tokens_per_minute"),
        concurrency=raw.get("concurrency"),
        max_wait=_seconds(raw, "max_wait", 2.0),
        per_worker=raw.get("per_worker", False),
    )


def _mock(raw: dict[str, Any]) -> MockConfig:
    fault_raw = raw.get("fault")
    fault = None
    if fault_raw is not None:
        fault = MockFault(
            status=fault_raw.get("status"),
            message=fault_raw.get("message"),
            retry_after=_maybe_seconds(fault_raw, "retry_after"),
            timeout=fault_raw.get("timeout", False),
            cut_after=fault_raw.get("cut_after"),
            malformed_after=fault_raw.get("malformed_after"),
            rate=float(fault_raw.get("rate", 1.0)),
            first=fault_raw.get("first"),
        )
    defaults = MockConfig()
    return MockConfig(
        reply=raw.get("reply", defaults.reply),
        replies=tuple(raw.get("replies", ())),
        echo=raw.get("echo", False),
        latency=_seconds(raw, "latency", 0.0),
        first_token=_seconds(raw, "first_token", 0.0),
        chunk_delay=_seconds(raw, "chunk_delay", 0.0),
        chunk_size=raw.get("chunk_size", 1),
        fault=fault,
        seed=raw.get("seed", 0),
    )


def _provider(name: str, raw: dict[str, Any], disabled_reason: str | None) -> ProviderConfig:
    timeout = raw.get("timeout", {})
    breaker = raw.get("breaker", {})
    enabled = raw.get("enabled", True) and disabled_reason is None
    if not raw.get("enabled", True):
        disabled_reason = "disabled in the config (`enabled: false`)"
    kind = raw["type"]
    return ProviderConfig(
        name=name,
        type=kind,
        enabled=enabled,
        disabled_reason=disabled_reason,
        description=raw.get("description"),
        api_key=Secret(raw["api_key"]) if raw.get("api_key") else None,
        base_url=raw.get("base_url"),
        organization=raw.get("organization"),
        project=raw.get("project"),
        api_version=raw.get("api_version"),
        headers={k: Secret(v) for k, v in raw.get("headers", {}).items()},
        timeout=TimeoutConfig(
            connect=_seconds(timeout, "connect", 5.0),
            first_token=_seconds(timeout, "first_token", 30.0),
            total=_seconds(timeout, "total", 120.0),
        ),
        limits=_limits(raw.get("limits", {})),
        breaker=BreakerConfig(
            failures=breaker.get("failures", 5),
            error_rate=breaker.get("error_rate"),
            window=_seconds(breaker, "window", 60.0),
            min_requests=breaker.get("min_requests", 20),
            cooldown=_seconds(breaker, "cooldown", 30.0),
        ),
        pricing={
            model: PriceConfig(
                input_per_mtok=float(p.get("input_per_mtok", 0.0)),
                output_per_mtok=float(p.get("output_per_mtok", 0.0)),
                cached_input_per_mtok=p.get("cached_input_per_mtok"),
            )
            for model, p in raw.get("pricing", {}).items()
        },
        max_connections=raw.get("max_connections", 100),
        mock=_mock(raw.get("mock", {})) if kind == "mock" else None,
        class_path=raw.get("class"),
        options=dict(raw.get("options", {})),
    )


def _model(name: str, raw: dict[str, Any]) -> ModelConfig:
    cache = raw.get("cache", {})
    return ModelConfig(
        name=name,
        strategy=raw.get("strategy", "fallback"),
        targets=tuple(
            TargetConfig(
                provider=t["provider"],
                model=t["model"],
                weight=float(t.get("weight", 1.0)),
                context_window=t.get("context_window"),
                max_output_tokens=t.get("max_output_tokens"),
                limits=_limits(t["limits"]) if "limits" in t else None,
            )
            for t in raw["targets"]
        ),
        fallback=raw.get("fallback"),
        description=raw.get("description"),
        cache=ModelCacheConfig(enabled=cache.get("enabled"), ttl=_maybe_seconds(cache, "ttl")),
    )


def _template(name: str, raw: dict[str, Any], template_dir: Path | None) -> TemplateConfig:
    file = None
    if "file" in raw and template_dir is not None:
        file = resolve_template_file(template_dir, raw["file"])
    return TemplateConfig(
        name=name,
        description=raw.get("description"),
        file=file,
        text=raw.get("text"),
        system=raw.get("system"),
        arguments=tuple(
            TemplateArgument(
                name=arg,
                description=spec.get("description"),
                required=spec.get("required", False),
                default=spec.get("default"),
            )
            for arg, spec in raw.get("arguments", {}).items()
        ),
        model=raw.get("model"),
        max_tokens=raw.get("max_tokens"),
        temperature=raw.get("temperature"),
    )


def build_config(
    data: dict[str, Any],
    *,
    path: Path | None,
    version_hash: str,
    template_dir: Path | None,
    disabled: dict[str, str],
) -> Config:
    """Typed config from checked data. `disabled` maps provider names to why they are disabled."""
    defaults = data.get("defaults", {})
    retry = data.get("retry", {})
    cache = data.get("cache", {})
    state = data.get("state", {})
    server = data.get("server", {})
    telemetry = data.get("telemetry", {})
    traces = telemetry.get("traces", {})
    logs = telemetry.get("logs", {})
    return Config(
        path=path,
        version_hash=version_hash,
        providers={name: _provider(name, raw, disabled.get(name)) for name, raw in data["providers"].items()},
        models={name: _model(name, raw) for name, raw in data["models"].items()},
        defaults=DefaultsConfig(
            model=defaults.get("model", "default"),
            max_tokens=defaults.get("max_tokens", 1024),
            temperature=defaults.get("temperature"),
            direct_models=defaults.get("direct_models", False),
            clamp_max_tokens=defaults.get("clamp_max_tokens", True),
        ),
        retry=RetryConfig(
            max_attempts=retry.get("max_attempts", 3),
            initial_backoff=_seconds(retry, "initial_backoff", 0.5),
            max_backoff=_seconds(retry, "max_backoff", 8.0),
            jitter=retry.get("jitter", "full"),
            deadline=_seconds(retry, "deadline", 60.0),
        ),
        cache=CacheConfig(
            backend=cache.get("backend", "memory"),
            ttl=_seconds(cache, "ttl", 300.0),
            max_entries=cache.get("max_entries", 10000),
            when=cache.get("when", "deterministic"),
        ),
        state=StateConfig(
            backend=state.get("backend", "memory"),
            url=Secret(state["url"]) if state.get("url") else None,
            failure_mode=state.get("failure_mode", "fail_open"),
            expected_replicas=state.get("expected_replicas", 1),
            timeout=_seconds(state, "timeout", 0.1),
            key_prefix=state.get("key_prefix", "llm-proxy"),
        ),
        template_dir=template_dir,
        templates={name: _template(name, raw, template_dir) for name, raw in data.get("templates", {}).items()},
        server=ServerConfig(
            http=HttpServerConfig(
                host=server.get("http", {}).get("host", "127.0.0.1"),
                port=server.get("http", {}).get("port", 8085),
                allowed_hosts=tuple(server.get("http", {}).get("allowed_hosts", ())),
                allowed_origins=tuple(server.get("http", {}).get("allowed_origins", ())),
            ),
            bearer_tokens=tuple(Secret(t) for t in server.get("auth", {}).get("bearer_tokens", [])),
            grace_period=_seconds(server, "grace_period", 10.0),
        ),
        telemetry=TelemetryConfig(
            service_name=telemetry.get("service_name", "llm-proxy"),
            traces=TracesConfig(
                exporter=traces.get("exporter", "none"),
                endpoint=traces.get("endpoint"),
                sample_ratio=float(traces.get("sample_ratio", 1.0)),
            ),
            metrics_exporter=telemetry.get("metrics", {}).get("exporter", "none"),
            capture_content=telemetry.get("capture_content", False),
            resource_attributes={k: str(v) for k, v in telemetry.get("resource_attributes", {}).items()},
            logs=LogsConfig(level=logs.get("level", "info"), format=logs.get("format", "auto")),
        ),
    )
