"""Structured logs (proxy/logs.py): JSON lines or text, the request id and trace id on every line, secrets masked
wherever they appear, and exactly one info line per client request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from mcp import Client
from opentelemetry.sdk.trace import TracerProvider

from proxy import logs, telemetry
from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.errors import ProxyError
from proxy.fronts.mcp_server import McpFront
from proxy.runtime import Runtime
from proxy.types import ChatRequest

SECRET = "test-logs-secret-value-7f3a9c"
CONFIG = """
version: 1
providers:
  good: {type: mock, mock: {reply: "fine thanks"}}
  down: {type: mock, mock: {fault: {status: 503}}}
models:
  default: {targets: [{provider: good, model: good-1}]}
  down: {targets: [{provider: down, model: down-1}]}
retry: {max_attempts: 1}
"""


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def capture() -> Iterator[callable]:
    """`capture(level, format, stream)` configures logging into `stream`; everything is put back afterwards."""
    root = logging.getLogger()
    level = root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}

    def configure(level: str = "info", format: str = "json", stream: io.StringIO | None = None) -> io.StringIO:
        stream = stream if stream is not None else io.StringIO()
        logs.configure(level, format, stream)
        return stream

    yield configure
    logs.unconfigure()
    logs.clear_secrets()
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def request_lines(stream: io.StringIO) -> list[dict]:
    return [line for line in lines(stream) if line["logger"] == "proxy.request"]


def test_a_json_line_carries_the_request_id_the_trace_id_and_the_extra_fields(capture):
    stream = capture("info", "json")
    provider = TracerProvider(shutdown_on_exit=False)
    token = logs.request_id.set("req_abc")
    try:
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logging.getLogger("proxy.test").info("hello %s", "world", extra={"answer": 42})
    finally:
        logs.request_id.reset(token)
        provider.shutdown()
    (line,) = lines(stream)
    context = span.get_span_context()
    assert line["message"] == "hello world"
    assert (line["level"], line["logger"], line["answer"]) == ("info", "proxy.test", 42)
    assert line["request_id"] == "req_abc"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["time"].endswith("Z")


def test_auto_is_text_on_a_terminal_and_json_otherwise(capture):
    tty = capture("info", "auto", Tty())
    token = logs.request_id.set("req_tty")
    try:
        logging.getLogger("proxy.test").warning("readable")
    finally:
        logs.request_id.reset(token)
    text = tty.getvalue()
    assert " WARNING proxy.test: readable [request_id=req_tty]" in text
    pipe = capture("info", "auto", io.StringIO())
    logging.getLogger("proxy.test").warning("structured")
    assert lines(pipe)[0]["message"] == "structured"


def test_the_level_filters(capture):
    stream = capture("warning", "json")
    logging.getLogger("proxy.test").info("hidden")
    logging.getLogger("proxy.test").error("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


@pytest.mark.parametrize("format", ["json", "text"])
def test_secrets_are_masked_in_messages_fields_and_tracebacks(capture, format):
    stream = capture("info", format)
    logs.add_secrets([SECRET, "abc"])  # too short to mask safely: ignored
    log = logging.getLogger("proxy.test")
    log.info("key %s in a message", SECRET, extra={"detail": f"x{SECRET}y"})
    log.info("sent Authorization: Bearer tok-1234567890 to the upstream")
    log.info("header x-api-key=hunter2hunter2 and api_key: 'zzz999zzz'")
    log.info("connecting to redis://user:p4ssw0rd@cache:6379/0 with sk-proj-ABCDEFGH12345")
    log.info("the abc of it")
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    for leaked in (SECRET, "tok-1234567890", "hunter2hunter2", "zzz999zzz", "p4ssw0rd", "ABCDEFGH12345"):
        assert leaked not in text
    assert "the abc of it" in text
    assert "redis://***@cache:6379/0" in text
    assert "Traceback" in text  # the traceback is kept, only masked


def test_secrets_of_a_config_are_its_keys_tokens_and_state_url():
    config = load_config_text(
        """
version: 1
providers:
  a: {type: openai, api_key: "${A_KEY}", headers: {x-extra: "${H}"}}
models:
  default: {targets: [{provider: a, model: m}]}
server: {auth: {bearer_tokens: ["${TOKEN}"]}}
""",
        env={"A_KEY": "key-value-1", "H": "header-value-2", "TOKEN": "token-value-3"},
    )
    assert set(logs.secrets_of(config)) >= {"key-value-1", "header-value-2", "token-value-3"}


async def test_one_info_line_per_request_with_model_provider_status_latency_tokens_and_cache(capture):
    stream = capture("info", "json")
    engine = Engine(Runtime.build(load_config_text(CONFIG)))
    first = await engine.complete(ChatRequest.from_prompt("how are you", temperature=0))
    await engine.complete(ChatRequest.from_prompt("how are you", temperature=0))  # a cache hit
    with pytest.raises(ProxyError):
        await engine.complete(ChatRequest.from_prompt("anyone?", model="down"))
    ok, hit, failed = request_lines(stream)
    assert ok["model"] == "default" and ok["provider"] == "good" and ok["upstream_model"] == first.model
    assert (ok["status"], ok["cached"], ok["attempts"], ok["stream"]) == ("ok", False, 1, False)
    assert (ok["input_tokens"], ok["output_tokens"]) == (first.usage.input_tokens, first.usage.output_tokens)
    assert ok["latency_ms"] == pytest.approx(first.latency_ms, abs=0.01)
    assert (hit["status"], hit["cached"], hit["attempts"]) == ("ok", True, 0)
    assert failed["model"] == "down" and failed["status"] != "ok" and failed["provider"] == "down"
    assert failed["level"] == "info"
    for line in (ok, hit, failed):
        assert "how are you" not in json.dumps(line) and "fine thanks" not in json.dumps(line)


async def test_a_stream_logs_one_line_when_it_ends(capture):
    stream = capture("info", "json")
    engine = Engine(Runtime.build(load_config_text(CONFIG)))
    chunks = engine.stream(ChatRequest.from_prompt("stream please"))
    async for _ in chunks:
        assert not request_lines(stream)  # nothing until the end
    (line,) = request_lines(stream)
    assert (line["status"], line["stream"], line["provider"]) == ("ok", True, "good")


async def test_an_mcp_call_logs_its_request_id_and_with_traces_on_its_trace_id(capture):
    stream = capture("info", "json")
    provider = TracerProvider(shutdown_on_exit=False)
    previous = telemetry.install(telemetry.Tracing(provider))
    try:
        engine = Engine(Runtime.build(load_config_text(CONFIG)))
        async with Client(McpFront(engine).server) as client:
            await client.call_tool("complete_text", {"prompt": "one"})
            await client.call_tool("complete_text", {"prompt": "two"})
    finally:
        telemetry.install(previous)
        provider.shutdown()
    first, second = request_lines(stream)
    assert first["request_id"].startswith("req_") and second["request_id"].startswith("req_")
    assert first["request_id"] != second["request_id"]
    assert len(first["trace_id"]) == 32 and first["trace_id"] != second["trace_id"]
