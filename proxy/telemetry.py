"""OpenTelemetry for the proxy: tracing set up from the `telemetry` config section and the standard `OTEL_*`
environment variables (which win), and the OTLP push of the metrics store.

    telemetry = setup(config.telemetry)       # llm-proxy serve, at start; `telemetry.shutdown()` at the end
    active()                                  # the hot path: the active `Tracing`, or None when traces are off
    install(Tracing(provider))                # tests: any TracerProvider (e.g. with an InMemorySpanExporter)

Off (`traces.exporter: none`, the default, or `OTEL_SDK_DISABLED=true`): `active()` is None and the engine,
dispatch, fronts and transport skip every span, event and `traceparent` behind that one check.

On: spans go to one SDK `TracerProvider` (resource: `service.name`, `service.version`, the config's
`resource_attributes`, then `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES` over them; sampler: parent-based ratio
`traces.sample_ratio` unless `OTEL_TRACES_SAMPLER` says otherwise; up to 2,048 spans per export, `OTEL_BSP_*` over
that). Exporters:
- `otlp`: OTLP/HTTP protobuf (encoded by proxy/otlp_encode.py as spans come, proxy/span_batches.py) to
  `traces.endpoint` + `/v1/traces`;
  `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `..._HEADERS` and friends win; `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` needs
  the gRPC exporter installed;
- `console`: stderr (stdout is the MCP protocol on stdio); `none`.
`OTEL_TRACES_EXPORTER`/`OTEL_METRICS_EXPORTER` override the choices, and
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` overrides `capture_content`.

The OTel API's global tracer provider can be set once per process, and the MCP SDK draws its own spans
(`tools/call <name>`) from it. So the first `install()` sets the global to a small switch that forwards to
whatever `Tracing` is active: tests swap providers freely and the SDK's spans follow (nothing when none is).

Metrics are not recorded twice: `push_metrics()` sends the `Metrics` store (proxy/metrics.py, the same store
`/metrics` and `get_metrics` read) as OTLP data (proxy/otel_metrics.py), cumulative since the process started,
every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) when `telemetry.metrics.exporter` is `otlp`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from proxy import __version__, span_batches
from proxy.config.model import TelemetryConfig
from proxy.metrics import Metrics
from proxy.otel_fast import AttributeBlock, Recorder
from proxy.otel_metrics import metrics_data
from proxy.otlp_encode import FastOTLPSpanExporter

__all__ = ["Settings", "Telemetry", "Tracing", "active", "install", "settings_from", "setup", "span"]

log = logging.getLogger(__name__)

TRACER_NAME = "llm-proxy"
EXPORTERS = ("otlp", "console", "none")
DEFAULT_METRIC_INTERVAL = 60.0
_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)


# --- settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective telemetry settings: the config's, with the `OTEL_*` variables over them."""

    traces: str = "none"  # otlp | console | none
    traces_endpoint: str | None = None  # a full URL; None: the exporter's own (OTEL_EXPORTER_OTLP_* or localhost)
    metrics: str = "none"  # otlp | console | none
    metrics_endpoint: str | None = None
    protocol: str = "http/protobuf"
    sample_ratio: float = 1.0
    sampler_from_env: bool = False
    capture_content: bool = False
    service_name: str = "llm-proxy"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    metric_interval: float = DEFAULT_METRIC_INTERVAL


def _choice(variable: str, env: Mapping[str, str], configured: str) -> str:
    value = env.get(variable, "").strip().lower()
    if not value:
        return configured
    for item in value.split(","):
        if item.strip() in EXPORTERS:
            return item.strip()
    log.warning("%s=%s is not one of %s; using the config's `%s`", variable, value, ", ".join(EXPORTERS), configured)
    return configured


def settings_from(config: TelemetryConfig, env: Mapping[str, str] | None = None) -> Settings:
    """Resolve `config` against the environment (`os.environ` by default); see the module docstring."""
    env = os.environ if env is None else env
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    traces = "none" if disabled else _choice("OTEL_TRACES_EXPORTER", env, config.traces.exporter)
    metrics = "none" if disabled else _choice("OTEL_METRICS_EXPORTER", env, config.metrics_exporter)
    base = (config.traces.endpoint or "").rstrip("/")
    env_base = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    def endpoint(signal: str) -> str | None:
        if env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or env_base or not base:
            return None
        return f"{base}/v1/{signal}"

    capture = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().lower()
    try:
        interval = float(env.get("OTEL_METRIC_EXPORT_INTERVAL", "")) / 1000
    except ValueError:
        interval = DEFAULT_METRIC_INTERVAL
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    return Settings(
        traces=traces,
        traces_endpoint=endpoint("traces"),
        metrics=metrics,
        metrics_endpoint=endpoint("metrics"),
        protocol=protocol.strip().lower() or "http/protobuf",
        sample_ratio=config.traces.sample_ratio,
        sampler_from_env=bool(env.get("OTEL_TRACES_SAMPLER")),
        capture_content=capture == "true" if capture in ("true", "false") else config.capture_content,
        service_name=config.service_name,
        resource_attributes=dict(config.resource_attributes),
        metric_interval=interval if interval > 0 else DEFAULT_METRIC_INTERVAL,
    )


# --- the active tracing and the global switch -----------------------------------------------------------------


class Tracing:
    """Traces are on: where the proxy's spans come from, and whether prompt and answer text is recorded.

    `start_span(name, context=None, kind=INTERNAL, attributes=None, block=None)` starts the per-request spans: lean
    ones (proxy/otel_fast.py) on an SDK provider, else the provider's own (a `block`'s attributes merged in);
    `start_child(name, parent_span, ...)` the same under a given span; `record_child(name, parent_span, started,
    attributes, block)` an INTERNAL span under it that began at `started` (ns) and ends now, in one call.
    `tracer` is the provider's tracer, for the rare spans (startup, reload, shutdown)."""

    __slots__ = ("capture_content", "provider", "record_child", "start_child", "start_span", "tracer")

    def __init__(self, provider: trace.TracerProvider, *, capture_content: bool = False) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)
        self.capture_content = capture_content
        recorder = Recorder.for_provider(provider, InstrumentationScope(TRACER_NAME, __version__))
        self.start_span = recorder.start if recorder is not None else self._tracer_span
        self.start_child = recorder.child if recorder is not None else self._tracer_child
        self.record_child = recorder.record if recorder is not None else self._tracer_record

    def _tracer_span(
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        block: AttributeBlock | None = None,
        start_time: int | None = None,
    ) -> trace.Span:
        if block is not None:
            attributes = {**block.mapping, **(attributes or {})}
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes, start_time=start_time)

    def _tracer_child(
        self,
        name: str,
        parent: trace.Span,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        block: AttributeBlock | None = None,
    ) -> trace.Span:
        return self._tracer_span(name, trace.set_span_in_context(parent), kind, attributes, block)

    def _tracer_record(
        self,
        name: str,
        parent: trace.Span,
        started: int,
        attributes: dict[str, Any] | None = None,
        block: AttributeBlock | None = None,
    ) -> None:
        context = trace.set_span_in_context(parent)
        self._tracer_span(name, context, trace.SpanKind.INTERNAL, attributes, block, start_time=started).end()


_active: Tracing | None = None
_global_claimed = False

# The HTTP server span of the request in progress, which the engine's request span may take as its own (one span
# per HTTP request, proxy/spans.py): the front puts it here in a one-item list (and empties it when the span ends);
# the first request trace under it pops it, and adopts it only if it is the current span and still recording.
server_span: ContextVar[list[trace.Span] | None] = ContextVar("server_span", default=None)


def active() -> Tracing | None:
    """The active `Tracing`, or None when traces are off (the hot path's one check)."""
    return _active


class _SwitchTracer(trace.Tracer):
    """A tracer that forwards to the active provider's tracer of the same name (a no-op one when traces are off)."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self._args = args
        self._for: trace.TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()

    def _current(self) -> trace.Tracer:
        provider = _active.provider if _active is not None else None
        if provider is not self._for:
            self._tracer = provider.get_tracer(*self._args) if provider is not None else trace.NoOpTracer()
            self._for = provider
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._current().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().start_as_current_span(*args, **kwargs)


class _SwitchProvider(trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return _SwitchTracer((instrumenting_module_name, instrumenting_library_version, schema_url, attributes))


def _claim_global() -> None:
    global _global_claimed
    if _global_claimed:
        return
    _global_claimed = True
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # nobody has set one yet
        trace.set_tracer_provider(_SwitchProvider())
    else:
        log.info("a global tracer provider was already set; the MCP SDK's own spans go to it")


def install(tracing: Tracing | None) -> Tracing | None:
    """Make `tracing` the active one (None: traces off); returns the one it replaces."""
    global _active
    previous, _active = _active, tracing
    if tracing is not None:
        _claim_global()
    return previous


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span | None]:
    """A span around a lifecycle step (startup, reload, shutdown), current inside; yields None when traces are off."""
    tracing = _active
    if tracing is None:
        yield None
        return
    with tracing.tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


# --- setup ------------------------------------------------------------------------------------------------------


def _resource(settings: Settings) -> Resource:
    attributes = {"service.name": settings.service_name, "service.version": __version__}
    attributes.update(settings.resource_attributes)
    return Resource.create(attributes).merge(OTELResourceDetector().detect())  # OTEL_* over the config


def _span_exporter(settings: Settings) -> SpanExporter:
    if settings.traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            log.warning("OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; exporting over HTTP instead")
        else:
            return GrpcExporter()
    import requests
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # A session with an auth hook that adds nothing: requests then skips its ~/.netrc lookup on every export (a
    # netrc entry would also replace the Authorization header OTEL_EXPORTER_OTLP_HEADERS sets). Proxies and
    # certificates from the environment still apply. A credential provider named in the environment brings its own.
    session = None
    if not any(os.environ.get(name) for name in _CREDENTIAL_PROVIDERS):
        session = requests.Session()
        session.auth = _as_is
    return FastOTLPSpanExporter(OTLPSpanExporter(endpoint=settings.traces_endpoint, session=session))


def _as_is(request: Any) -> Any:
    return request


def _metric_exporter(settings: Settings) -> MetricExporter:
    if settings.metrics == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=settings.metrics_endpoint)


def _batch_sizes(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The SDK batch processor's sizes (console and gRPC exports): proxy/span_batches.py's, 4x the SDK's 512 spans
    per export and 2048 held, so that a busy proxy (3 spans per HTTP request) sends a quarter as many export requests
    (requests + urllib3 were ~1.8% of its CPU at 512). `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` / `OTEL_BSP_MAX_QUEUE_SIZE`
    win (both then come from the environment or the SDK)."""
    env = os.environ if env is None else env
    if env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or env.get("OTEL_BSP_MAX_QUEUE_SIZE"):
        return {}
    return {"max_export_batch_size": span_batches.SEND_SIZE, "max_queue_size": span_batches.QUEUE_SIZE}


def _span_processor(settings: Settings) -> SpanProcessor:
    """OTLP/HTTP: the encoding processor (proxy/span_batches.py); any other exporter: the SDK's batch processor."""
    exporter = _span_exporter(settings)
    if isinstance(exporter, FastOTLPSpanExporter) and exporter.fast:
        return span_batches.EncodingSpanProcessor(exporter, **span_batches.settings_from_env())
    return BatchSpanProcessor(exporter, **_batch_sizes())


class Telemetry:
    """What `setup()` built: the active `Tracing` (None when traces are off) and the metrics exporter (or None)."""

    def __init__(
        self,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_exporter: MetricExporter | None = None,
    ) -> None:
        self.settings = settings
        self.resource = _resource(settings)
        self.started_ns = time.time_ns()
        self.tracing: Tracing | None = None
        self._provider: TracerProvider | None = None
        if span_exporter is not None or settings.traces != "none":
            sampler = None if settings.sampler_from_env else ParentBased(TraceIdRatioBased(settings.sample_ratio))
            provider = TracerProvider(resource=self.resource, sampler=sampler, shutdown_on_exit=False)
            if span_exporter is not None:  # tests: every span at once
                provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            else:
                provider.add_span_processor(_span_processor(settings))
            self._provider = provider
            self.tracing = Tracing(provider, capture_content=settings.capture_content)
        if metric_exporter is None and settings.metrics != "none":
            metric_exporter = _metric_exporter(settings)
        self.metric_exporter = metric_exporter

    def describe(self) -> str:
        """One line for the startup log: where traces and metrics go."""
        s = self.settings
        traces = s.traces if s.traces != "otlp" else f"otlp ({s.traces_endpoint or 'OTEL_EXPORTER_OTLP_* / default'})"
        ratio = "" if s.traces == "none" or s.sampler_from_env else f", sample ratio {s.sample_ratio:g}"
        return f"traces: {traces}{ratio}; metrics push: {s.metrics}; prompt capture: {s.capture_content}"

    def export_metrics(self, metrics: Metrics) -> None:
        """Send the store's metrics now (blocking: run it in a thread from the event loop)."""
        if self.metric_exporter is None:
            return
        data = metrics_data(metrics, self.resource, self.started_ns)
        try:
            self.metric_exporter.export(data)
        except Exception as exc:  # a collector that is down must not take the proxy with it
            log.warning("metrics export failed: %s", type(exc).__name__)

    async def push_metrics(self, metrics: Metrics) -> None:
        """Export `metrics` every interval until cancelled (call `export_metrics` once more at shutdown)."""
        if self.metric_exporter is None:
            return
        while True:
            await asyncio.sleep(self.settings.metric_interval)
            data = metrics_data(metrics, self.resource, self.started_ns)  # read on the loop: the store is not shared
            try:
                await asyncio.to_thread(self.metric_exporter.export, data)
            except Exception as exc:
                log.warning("metrics export failed: %s", type(exc).__name__)

    def shutdown(self) -> None:
        """Flush and stop the exporters; traces are off afterwards (if this setup's tracing was the active one)."""
        if self.tracing is not None and _active is self.tracing:
            install(None)
        if self._provider is not None:
            self._provider.shutdown()
        if self.metric_exporter is not None:
            self.metric_exporter.shutdown()


def setup(
    config: TelemetryConfig,
    env: Mapping[str, str] | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    metric_exporter: MetricExporter | None = None,
) -> Telemetry:
    """Build the telemetry of `config` (+ the environment) and make its tracing the active one (with traces off,
    the active tracing is left as it is: none in a server, a test's own in tests)."""
    telemetry = Telemetry(settings_from(config, env), span_exporter=span_exporter, metric_exporter=metric_exporter)
    if telemetry.tracing is not None:
        install(telemetry.tracing)
    return telemetry
