"""Traces of real requests, captured with the SDK's `InMemorySpanExporter`: the span tree and its attributes for a
plain call, a call that retried then fell back, a cache hit, a stream, a truncated stream, an MCP tool call (under
the SDK's own `tools/call` span, over HTTP too), an HTTP request (its server span is the request span) honouring
the client's `traceparent` (and sending one upstream), a failed HTTP request; and with traces off, no span and no
`traceparent` at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import pytest
from mcp import Client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy import telemetry
from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.errors import StreamInterrupted
from proxy.fronts import openai_api
from proxy.fronts.http_app import _mark_error
from proxy.fronts.mcp_server import McpFront
from proxy.otel_fast import enter_span, leave_span
from proxy.runtime import Runtime
from proxy.spans import RequestTrace
from proxy.types import ChatRequest, ChatResponse, Usage
from tests.fakes import ModelReply, OpenAIFake
from tests.http_server import engine_app, serve_mcp_http

KEY = "test-telemetry-upstream-key-0123"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

CONFIG = """
version: 1
providers:
  good: {type: mock, mock: {reply: "the answer is four", chunk_size: 1}}
  flaky: {type: mock, mock: {fault: {status: 503}}}
  cut: {type: mock, mock: {reply: "alpha beta gamma delta epsilon", fault: {cut_after: 2}}}
models:
  default: {targets: [{provider: good, model: good-1}]}
  shaky: {targets: [{provider: flaky, model: flaky-1}, {provider: good, model: good-1}]}
  cut: {targets: [{provider: cut, model: cut-1}]}
retry: {max_attempts: 2, initial_backoff: 1ms, max_backoff: 1ms, jitter: none}
"""


def make_engine(text: str = CONFIG, env: dict[str, str] | None = None) -> Engine:
    return Engine(Runtime.build(load_config_text(text, env=env or {})))


@contextmanager
def traced(*, capture_content: bool = False) -> Iterator[InMemorySpanExporter]:
    """Traces on, into memory, inside the block."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = telemetry.install(telemetry.Tracing(provider, capture_content=capture_content))
    try:
        yield exporter
    finally:
        telemetry.install(previous)
        provider.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Traces on, into memory, for this test only."""
    with traced() as exporter:
        yield exporter


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = by_name(exporter, name)
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def events(span: ReadableSpan) -> list[tuple[str, dict]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


async def test_a_plain_call_is_a_request_span_with_a_routing_span_and_one_client_span(spans):
    engine = make_engine()
    response = await engine.complete(ChatRequest.from_prompt("what is 2+2?", max_tokens=50, temperature=0.5))
    request = one(spans, "proxy.request")
    route = one(spans, "proxy.route")
    attempt = one(spans, "chat good-1")
    assert request.parent is None  # nothing was current: a root
    assert parent_of(route) == parent_of(attempt) == request.context.span_id
    assert {route.context.trace_id, attempt.context.trace_id} == {request.context.trace_id}
    assert request.kind is SpanKind.INTERNAL and attempt.kind is SpanKind.CLIENT
    a = dict(attempt.attributes)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "mock"
    assert a["gen_ai.request.model"] == "good-1"
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.stream"] is False
    assert a["gen_ai.response.model"] == response.model
    assert a["gen_ai.response.finish_reasons"] == (response.finish_reason,)
    assert a["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == response.usage.output_tokens
    assert (a["proxy.attempt"], a["proxy.fallback_index"], a["proxy.ratelimit.wait_ms"]) == (1, 0, 0.0)
    assert (a["proxy.provider"], a["proxy.target"]) == ("good", "good/good-1")
    assert "server.address" not in a  # an in-process provider has no server
    assert "error.type" not in a and attempt.status.status_code is StatusCode.UNSET
    r = dict(request.attributes)
    assert r["proxy.route"] == "default" and r["proxy.cache.hit"] is False
    assert r["proxy.config.version"] == engine.runtime.config.version_hash
    assert r["proxy.provider"] == "good" and "gen_ai.usage.output_tokens" not in r  # on the attempt span
    assert dict(route.attributes)["proxy.routing.candidates"] == ("good/good-1",)
    assert dict(route.attributes)["proxy.routing.strategy"] == "fallback"
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # capture_content is off


async def test_each_route_span_names_its_own_candidate_order(spans):
    """Round robin turns the order from one request to the next; each routing span lists the order it used (the
    labels of an order are kept once made, so a stale one would show here)."""
    turns = "  turns: {strategy: round_robin, targets: [{provider: good, model: a}, {provider: good, model: b}, "
    turns += "{provider: good, model: c}]}\n"
    engine = make_engine(CONFIG.replace("models:\n", "models:\n" + turns))
    answered = [(await engine.complete(ChatRequest.from_prompt(f"n{n}", model="turns"))).model for n in range(6)]
    routes = sorted(by_name(spans, "proxy.route"), key=lambda span: span.start_time)
    firsts = [dict(route.attributes)["proxy.routing.candidates"][0] for route in routes]
    assert firsts == [f"good/{model}" for model in answered]
    assert len(set(firsts)) == 3
    for route in routes:
        candidates = dict(route.attributes)["proxy.routing.candidates"]
        assert sorted(candidates) == ["good/a", "good/b", "good/c"]


async def test_retries_then_a_fallback_show_as_attempt_spans_and_events(spans):
    engine = make_engine()
    response = await engine.complete(ChatRequest.from_prompt("hello", model="shaky"))
    assert response.provider == "good"
    request = one(spans, "proxy.request")
    failed = sorted(by_name(spans, "chat flaky-1"), key=lambda span: span.start_time)
    answered = one(spans, "chat good-1")
    assert [dict(s.attributes)["proxy.attempt"] for s in failed] == [1, 2]
    for span in failed:
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes)["error.type"] == "overloaded"
        assert dict(span.attributes)["proxy.fallback_index"] == 0
        assert parent_of(span) == request.context.span_id
    assert dict(answered.attributes)["proxy.fallback_index"] == 1
    assert dict(answered.attributes)["proxy.attempt"] == 1
    assert failed[0].end_time <= failed[1].start_time <= failed[1].end_time <= answered.start_time
    names = [name for name, _ in events(request)]
    assert names == ["proxy.retry", "proxy.fallback"]
    retry, fallback = (attributes for _, attributes in events(request))
    assert retry == {
        "proxy.target": "flaky/flaky-1",
        "proxy.attempt": 1,
        "error.type": "overloaded",
        "proxy.backoff_ms": 1.0,
    }
    assert fallback == {"proxy.target": "flaky/flaky-1", "error.type": "overloaded"}
    assert dict(request.attributes)["proxy.attempts"] == 3
    assert request.status.status_code is StatusCode.UNSET


async def test_an_open_breaker_is_a_skip_event_and_every_failure_is_an_error_span(spans):
    text = CONFIG.replace("flaky: {type: mock,", "flaky: {type: mock, breaker: {failures: 1, cooldown: 60s},")
    engine = make_engine(text)
    await engine.complete(ChatRequest.from_prompt("hello", model="shaky"))  # trips flaky's breaker
    first = one(spans, "proxy.request")
    assert ("proxy.breaker.open", {"proxy.target": "flaky/flaky-1"}) in events(first)
    spans.clear()
    await engine.complete(ChatRequest.from_prompt("again", model="shaky"))
    second = one(spans, "proxy.request")
    assert ("proxy.target.skipped", {"proxy.target": "flaky/flaky-1", "proxy.skip.reason": "breaker_open"}) in events(
        second
    )
    assert not by_name(spans, "chat flaky-1")
    assert dict(one(spans, "proxy.route").attributes)["proxy.routing.unavailable"] == ("flaky/flaky-1",)


async def test_a_cache_hit_has_no_attempt_span(spans):
    engine = make_engine()
    request = ChatRequest.from_prompt("cache me", temperature=0)
    await engine.complete(request)
    spans.clear()
    hit = await engine.complete(request)
    assert hit.cached
    span = one(spans, "proxy.request")
    assert not [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert dict(span.attributes)["proxy.cache.hit"] is True
    assert dict(span.attributes)["gen_ai.usage.output_tokens"] == hit.usage.output_tokens
    assert events(span) == [("proxy.cache.hit", {"proxy.cache.shared": False})]


async def test_a_stream_has_one_client_span_lasting_until_its_end(spans):
    engine = make_engine()
    stream = engine.stream(ChatRequest.from_prompt("stream it"))
    chunks = [chunk async for chunk in stream]
    assert "".join(c.text for c in chunks) == "the answer is four"
    request = one(spans, "proxy.request")
    attempt = one(spans, "chat good-1")
    a = dict(attempt.attributes)
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == stream.response.usage.output_tokens
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert dict(request.attributes)["proxy.stream"] is True
    assert parent_of(attempt) == request.context.span_id
    assert attempt.end_time <= request.end_time


async def test_a_truncated_stream_is_marked_on_both_spans(spans):
    engine = make_engine()
    stream = engine.stream(ChatRequest.from_prompt("cut it", model="cut"))
    received = []
    with pytest.raises(StreamInterrupted):
        async for chunk in stream:
            received.append(chunk.text)
    assert "".join(received).strip() == "alpha beta"
    request = one(spans, "proxy.request")
    attempt = one(spans, "chat cut-1")
    for span in (request, attempt):
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes)["proxy.stream.truncated"] is True
    assert dict(attempt.attributes)["error.type"] == "interrupted"
    assert "alpha" not in (request.status.description or "")  # the partial answer stays out of the trace


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_mcp_tool_call_nests_under_the_sdk_span(spans, mode):
    engine = make_engine()
    async with Client(McpFront(engine).server, mode=mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "hi over mcp"})
    assert not result.is_error
    tool = one(spans, "tools/call complete_text")
    request = one(spans, "proxy.request")
    attempt = one(spans, "chat good-1")
    assert tool.kind is SpanKind.SERVER
    assert parent_of(request) == tool.context.span_id
    assert parent_of(attempt) == request.context.span_id
    assert request.context.trace_id == tool.context.trace_id
    assert dict(request.attributes)["proxy.request_id"].startswith("req_")


async def test_http_honours_traceparent_and_sends_one_upstream(spans, start_fake):
    fake = await start_fake(OpenAIFake(api_key=KEY))
    fake.script(ModelReply(text=("Hi", " there")))
    config = f"""
version: 1
providers:
  openai: {{type: openai, base_url: "{fake.base_url}", api_key: "${{KEY}}"}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
"""
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"traceparent": traceparent, "x-request-id": "req-from-client"}
    async with (
        engine_app(config, api_routes=openai_api.routes, env={"KEY": KEY}) as (base_url, _),
        aiohttp.ClientSession(base_url) as session,
        session.post("/v1/chat/completions", json=body, headers=headers) as reply,
    ):
        assert reply.status == 200
        await reply.read()
    server = one(spans, "POST /v1/chat/completions")
    route = one(spans, "proxy.route")
    attempt = one(spans, "chat gpt-4o-mini")
    assert not by_name(spans, "proxy.request")  # the server span is the request span: one span per HTTP request
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(parent_of(server), "016x") == PARENT_ID
    assert parent_of(route) == parent_of(attempt) == server.context.span_id
    s = dict(server.attributes)
    assert (s["http.request.method"], s["http.route"], s["http.response.status_code"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert s["proxy.request_id"] == "req-from-client"
    assert (s["proxy.route"], s["proxy.provider"], s["proxy.attempts"], s["proxy.cache.hit"]) == (
        "default",
        "openai",
        1,
        False,
    )
    assert (s["proxy.model.requested"], s["proxy.stream"]) == ("default", False)
    assert s["proxy.config.version"]
    assert server.status.status_code is StatusCode.UNSET
    a = dict(attempt.attributes)
    assert (a["server.address"], a["server.port"]) == ("127.0.0.1", fake.port)
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.response.id"]
    sent = fake.last_request.header("traceparent")
    assert sent == f"00-{TRACE_ID}-{format(attempt.context.span_id, '016x')}-01"


HTTP_FAILURES = """
version: 1
providers:
  down: {type: mock, mock: {fault: {status: 503}}}
  picky: {type: mock, mock: {fault: {status: 400, message: "bad request: temperature"}}}
models:
  down: {targets: [{provider: down, model: down-1}]}
  picky: {targets: [{provider: picky, model: picky-1}]}
defaults: {model: down}
retry: {max_attempts: 1}
"""


@pytest.mark.parametrize(("model", "error_status"), [("down", True), ("picky", False)])
async def test_a_failed_http_request_is_recorded_on_its_server_span(spans, model, error_status):
    """The engine's error kind on the server span; an ERROR status for a 5xx answer, none for a 4xx (HTTP
    semantic conventions: the client's side of things); the status code is the proxy's answer's."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        engine_app(HTTP_FAILURES, api_routes=openai_api.routes) as (base_url, _),
        aiohttp.ClientSession(base_url) as session,
        session.post("/v1/chat/completions", json=body) as reply,
    ):
        answered = reply.status
        await reply.read()
    server = one(spans, "POST /v1/chat/completions")
    attempt = one(spans, f"chat {model}-1")
    assert not by_name(spans, "proxy.request")
    s = dict(server.attributes)
    assert s["http.response.status_code"] == answered
    assert (answered >= 500) is error_status
    assert s["error.type"] == ("AllTargetsFailed" if error_status else "bad_request")  # the engine's, not the code
    assert dict(attempt.attributes)["error.type"] == ("overloaded" if error_status else "bad_request")
    assert s["proxy.attempts"] == 1
    if error_status:
        assert server.status.status_code is StatusCode.ERROR
        assert server.status.description and "temperature" not in server.status.description
    else:
        assert server.status.status_code is StatusCode.UNSET


async def test_a_truncated_http_stream_marks_its_server_span(spans):
    """The answer started (200), then the upstream cut the stream: the server span says so, with an ERROR status."""
    body = {"model": "cut", "stream": True, "messages": [{"role": "user", "content": "cut it"}]}
    async with (
        engine_app(CONFIG, api_routes=openai_api.routes) as (base_url, _),
        aiohttp.ClientSession(base_url) as session,
        session.post("/v1/chat/completions", json=body) as reply,
    ):
        assert reply.status == 200
        text = (await reply.read()).decode()
    assert "alpha" in text and "[DONE]" not in text
    server = one(spans, "POST /v1/chat/completions")
    s = dict(server.attributes)
    assert s["proxy.stream.truncated"] is True and s["proxy.stream"] is True
    assert s["http.response.status_code"] == 200  # what the client got, not the error's status
    assert server.status.status_code is StatusCode.ERROR
    assert "alpha" not in (server.status.description or "")
    assert dict(one(spans, "chat cut-1").attributes)["proxy.stream.truncated"] is True


def test_only_the_first_request_trace_takes_the_offered_server_span_and_only_while_it_is_current(spans):
    """The offer (`telemetry.server_span`) is taken once; a second engine request under the same HTTP request, an
    offer whose span is not the current one, or one whose span has ended, each get their own `proxy.request`."""
    engine = make_engine()
    tracing = telemetry.active()
    request = ChatRequest.from_prompt("hi")

    def offered(span: object) -> list:
        offer = [span]
        telemetry.server_span.set(offer)
        return offer

    server = tracing.start_span("POST /v1/chat/completions", None, SpanKind.SERVER)
    token = enter_span(server)
    try:
        offered(server)
        first = RequestTrace(tracing, request, stream=False, runtime=engine.runtime)
        second = RequestTrace(tracing, request, stream=False, runtime=engine.runtime)
        assert first.span is server and not first.owned
        assert second.span is not server and second.owned
        assert parent_of(second.span) == server.get_span_context().span_id

        other = tracing.start_span("elsewhere")
        offer = offered(other)  # offered, but the current span is the server's
        third = RequestTrace(tracing, request, stream=False, runtime=engine.runtime)
        assert third.owned and third.span is not other and not offer  # the offer is used up either way

        server.end()
        offered(server)  # a task that kept the context after the exchange ended
        late = RequestTrace(tracing, request, stream=False, runtime=engine.runtime)
        assert late.owned and late.span is not server
    finally:
        leave_span(token)
        telemetry.server_span.set(None)


def test_outcomes_leave_a_span_that_has_ended_as_it_was(spans):
    """The outcomes write straight into a live span's attributes; once a span has ended (and may be being encoded
    on the exporter's thread) they change nothing."""
    engine = make_engine()
    tracing = telemetry.active()
    request = ChatRequest.from_prompt("hi", max_tokens=5)
    trace = RequestTrace(tracing, request, stream=False, runtime=engine.runtime)
    plan = engine.runtime.plans["default"]
    target = plan.targets[0]
    attempt = trace.start_attempt(target, request, attempt=1, fallback_index=0, waited=0.0)
    attempt.end()
    trace.span.end()
    before = {span.name: dict(span.attributes) for span in spans.get_finished_spans()}
    answer = ChatResponse(text="x", model="late-model", id="late-id", route="late-route", provider="late")
    trace.attempt_succeeded(attempt, answer, Usage(1, 2))
    trace.succeeded(answer)
    trace.route(time.time_ns(), plan, 0, [0], [True])  # a routing span of its own, nothing on the ended request span
    after = {span.name: dict(span.attributes) for span in spans.get_finished_spans()}
    assert after == before | {"proxy.route": after["proxy.route"]}
    assert "gen_ai.response.id" not in after["chat good-1"] and "proxy.route" not in after["proxy.request"]


def test_the_front_keeps_the_engines_error_type_when_it_answers_with_a_5xx(spans):
    tracing = telemetry.active()
    span = tracing.start_span("POST /v1/chat/completions", None, SpanKind.SERVER)
    span.set_attribute("error.type", "bad_request")  # the engine's, on a 4xx failure: status left unset
    _mark_error(span, "500")  # then the front failed and answered 500
    span.end()
    server = one(spans, "POST /v1/chat/completions")
    assert dict(server.attributes)["error.type"] == "bad_request"
    assert server.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_over_http_keeps_the_request_span_under_the_sdk_span(spans, mode):
    """Over `/mcp` the server span is the HTTP exchange and the SDK's `tools/call` span sits between it and the
    engine: `proxy.request` is made under the SDK's span, not merged into the HTTP one."""
    async with serve_mcp_http(load_config_text(CONFIG, env={})) as (url, _), Client(url, mode=mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "hi over http"})
    assert not result.is_error
    tool = one(spans, "tools/call complete_text")
    request = one(spans, "proxy.request")
    attempt = one(spans, "chat good-1")
    assert parent_of(request) == tool.context.span_id
    assert parent_of(attempt) == request.context.span_id
    assert tool.kind is SpanKind.SERVER
    posts = by_name(spans, "POST /mcp")
    assert posts  # the HTTP exchanges were traced, and none took the engine's request as its own
    assert not [span for span in posts if "proxy.route" in dict(span.attributes)]


async def test_with_traces_off_nothing_is_recorded_and_no_traceparent_is_sent(start_fake):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("a test")  # a provider exists, but it is not the active one
    previous = telemetry.install(None)
    try:
        fake = await start_fake(OpenAIFake(api_key=KEY))
        fake.script(ModelReply(text=("ok",)))
        config = f"""
version: 1
providers:
  openai: {{type: openai, base_url: "{fake.base_url}", api_key: "${{KEY}}"}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
"""
        engine = make_engine(config, {"KEY": KEY})
        try:
            async with Client(McpFront(engine).server) as client:
                await client.call_tool("complete_text", {"prompt": "hi"})
        finally:
            await engine.aclose()
        assert fake.last_request.header("traceparent") is None
        assert exporter.get_finished_spans() == ()
    finally:
        telemetry.install(previous)
        provider.shutdown()
