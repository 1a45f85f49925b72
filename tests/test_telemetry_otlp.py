"""Telemetry setup (the config with the `OTEL_*` variables over it), and end to end: `llm-proxy serve` in a real
process exporting over OTLP/HTTP to a small receiver that decodes the protobuf (`opentelemetry-proto`), where the
spans of an HTTP request (under the client's `traceparent`), of startup and shutdown, and the metrics turn up."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.streams.text import TextReceiveStream
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy import telemetry
from proxy.config.model import TelemetryConfig, TracesConfig
from tests.fakes import ModelReply, OpenAIFake

KEY = "test-otlp-upstream-key-0123456789"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SERVE_SCRIPT = textwrap.dedent(
    """
    import argparse, sys
    from proxy.cli_serve import add_serve_parser, run_serve
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_serve_parser(parser.add_subparsers(dest="command"))
    sys.exit(run_serve(parser.parse_args(sys.argv[1:])))
    """
)


# --- settings ---------------------------------------------------------------------------------------------------


def test_off_by_default_and_the_environment_wins():
    assert telemetry.settings_from(TelemetryConfig(), {}).traces == "none"
    configured = TelemetryConfig(traces=TracesConfig(exporter="otlp", endpoint="http://collector:4318/"))
    settings = telemetry.settings_from(configured, {})
    assert (settings.traces, settings.traces_endpoint) == ("otlp", "http://collector:4318/v1/traces")
    assert settings.metrics == "none" and settings.metrics_endpoint == "http://collector:4318/v1/metrics"
    assert telemetry.settings_from(configured, {"OTEL_TRACES_EXPORTER": "none"}).traces == "none"
    assert telemetry.settings_from(configured, {"OTEL_SDK_DISABLED": "true"}).traces == "none"
    assert telemetry.settings_from(TelemetryConfig(), {"OTEL_TRACES_EXPORTER": "console"}).traces == "console"
    assert telemetry.settings_from(TelemetryConfig(), {"OTEL_METRICS_EXPORTER": "otlp"}).metrics == "otlp"
    from_env = telemetry.settings_from(configured, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"})
    assert from_env.traces_endpoint is None  # the exporter reads the variable itself
    assert telemetry.settings_from(
        configured, {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    ).capture_content
    assert telemetry.settings_from(configured, {"OTEL_METRIC_EXPORT_INTERVAL": "5000"}).metric_interval == 5.0


def test_spans_are_exported_in_batches_of_2048_unless_the_environment_says():
    assert telemetry._batch_sizes({}) == {"max_export_batch_size": 2048, "max_queue_size": 8192}
    assert telemetry._batch_sizes({"OTEL_BSP_MAX_QUEUE_SIZE": "100"}) == {}  # both from the environment (or the SDK)
    assert telemetry._batch_sizes({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64"}) == {}
    processor = BatchSpanProcessor(InMemorySpanExporter(), **telemetry._batch_sizes({}))  # sizes the SDK accepts
    processor.shutdown()


def test_resource_and_sampling(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    config = TelemetryConfig(
        service_name="from-config",
        resource_attributes={"deployment.environment": "prod", "team": "llm"},
        traces=TracesConfig(sample_ratio=0.0),
    )
    exporter = InMemorySpanExporter()
    setup = telemetry.Telemetry(telemetry.settings_from(config, {}), span_exporter=exporter)
    try:
        attributes = dict(setup.resource.attributes)
        assert attributes["service.name"] == "from-env"
        assert attributes["deployment.environment"] == "staging" and attributes["team"] == "llm"
        assert setup.tracing is not None
        setup.tracing.tracer.start_span("dropped").end()  # ratio 0: never sampled
        assert exporter.get_finished_spans() == ()
    finally:
        setup.shutdown()


# --- end to end -------------------------------------------------------------------------------------------------


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


class Receiver:
    """An OTLP/HTTP collector on 127.0.0.1 that keeps what it receives, decoded."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, Span)
        self.metrics: list[Any] = []
        self.authorizations: list[str | None] = []  # of the trace exports

    async def traces(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("authorization"))
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = {kv.key: plain(kv.value) for kv in resource_spans.resource.attributes}
            self.spans += [(resource, span) for scope in resource_spans.scope_spans for span in scope.spans]
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def metrics_(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest.FromString(await request.read())
        for resource_metrics in message.resource_metrics:
            self.metrics += [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
        body = ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def named(self, name: str) -> list[Any]:
        return [span for _, span in self.spans if span.name == name]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    app.router.add_post("/v1/metrics", found.metrics_)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield found, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def attributes(span: Any) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in span.attributes}


async def test_the_server_exports_its_spans_and_metrics_over_otlp(tmp_path, receiver, start_fake):
    collector, endpoint = receiver
    fake = await start_fake(OpenAIFake(api_key=KEY))
    fake.script(ModelReply(text=("Hello", " over", " OTLP")))
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"""
version: 1
providers:
  openai: {{type: openai, base_url: "{fake.base_url}", api_key: "${{OTLP_TEST_KEY}}"}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
telemetry:
  service_name: proxy-e2e
  resource_attributes: {{team: llm}}
  traces: {{exporter: otlp, endpoint: "{endpoint}"}}
  metrics: {{exporter: otlp}}
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({"OTLP_TEST_KEY": KEY, "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"})
    # The collector's token from the standard variable; a ~/.netrc entry for its host must not replace it.
    env.update({"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20collector-token", "HOME": str(tmp_path)})
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password netrc-secret\n", encoding="utf-8")
    (tmp_path / ".netrc").chmod(0o600)
    command = [sys.executable, "-c", SERVE_SCRIPT, "--config", str(config), "serve", "--transport", "http"]
    stderr: list[str] = []
    async with await anyio.open_process([*command, "--port", "0", "--no-watch"], env=env) as process:
        urls: list[str] = []
        ready = anyio.Event()

        async def read_stderr() -> None:
            async for text in TextReceiveStream(process.stderr):
                stderr.append(text)
                for line in "".join(stderr).splitlines():
                    if not urls and line.startswith("{") and '"url"' in line:
                        urls.append(json.loads(line)["url"].removesuffix("/mcp"))
                        ready.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_stderr)
            with anyio.fail_after(20):
                await ready.wait()
            async with (
                aiohttp.ClientSession(urls[0]) as session,
                session.post(
                    "/v1/chat/completions",
                    json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                ) as reply,
            ):
                assert reply.status == 200, await reply.text()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await process.wait()
    log = "".join(stderr)
    assert code == 0, log
    assert "Traceback" not in log and KEY not in log
    (server,) = collector.named("POST /v1/chat/completions")  # the request span too (one per HTTP request)
    (route,) = collector.named("proxy.route")
    (attempt,) = collector.named("chat gpt-4o-mini")
    assert not collector.named("proxy.request")
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    assert route.parent_span_id == attempt.parent_span_id == server.span_id
    assert attributes(server)["proxy.route"] == "default" and attributes(server)["proxy.attempts"] == 1
    assert attempt.kind == attempt.SPAN_KIND_CLIENT and server.kind == server.SPAN_KIND_SERVER
    a = attributes(attempt)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.usage.output_tokens"] == 6
    assert (a["server.address"], a["server.port"]) == ("127.0.0.1", fake.port)
    assert fake.last_request.header("traceparent") == f"00-{TRACE_ID}-{attempt.span_id.hex()}-01"
    for name in ("proxy.startup", "proxy.drain", "proxy.shutdown"):
        assert collector.named(name), name
    resources = {json.dumps(resource, sort_keys=True) for resource, _ in collector.spans}
    (resource,) = [json.loads(text) for text in resources]
    assert resource["service.name"] == "proxy-e2e" and resource["team"] == "llm"
    assert resource["deployment.environment"] == "test"
    assert set(collector.authorizations) == {"Bearer collector-token"}
    metrics = {metric.name: metric for metric in collector.metrics}  # the last push, at shutdown
    duration = metrics["gen_ai.client.operation.duration"]
    assert sum(point.count for point in duration.histogram.data_points) == 1
    assert sum(point.count for point in metrics["llm_proxy.overhead"].histogram.data_points) == 1
