"""The lean span path (proxy/otel_fast.py) and its encoder (proxy/otlp_encode.py): `encode_spans` writes exactly
the message the stock OTLP encoder builds, for the proxy's spans and the SDK's alike; `FastSpan`s follow the
provider's sampler and their parents; the installed OTLP exporter offers the client the fast exporter sends with."""

from __future__ import annotations

import contextvars
import json
import logging
import time

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from proxy import otel_fast, otlp_encode
from proxy.otel_fast import AttributeBlock, FastSpan, traced_headers
from proxy.otlp_encode import FastOTLPSpanExporter, encode_spans
from proxy.telemetry import Tracing

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1), TraceState([("v", "1")])
)


def provider_with(sampler=None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    resource = Resource.create({"service.name": "fast-test", "count": 3, "ratio": 0.5, "flag": True})
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_encoding_matches_the_stock_encoder():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    sdk = provider.get_tracer("other-library", "9.9", schema_url="https://example.com/schema")
    remote = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    attributes = {"http.request.method": "POST", "n": -5, "one": 1, "yes": True, "zero": 0.0, "tags": ("a", "b")}
    server = tracing.start_span("POST /x", remote, SpanKind.SERVER, attributes)
    inside = trace.set_span_in_context(server)
    attributes = {"tuple": ("a", "é"), "f": 1.25, "b": False, "one": True, "yes": 1}  # same keys, other types
    attributes |= {"zero": -0.0, "tags": (1, 2), "n": -5.0}  # equal to the server span's values, encoded differently
    child = tracing.start_span("chat m", inside, SpanKind.CLIENT, attributes)
    child.add_event("proxy.retry", {"proxy.attempt": 1, "error.type": "timeout"})
    child.set_status(Status(StatusCode.ERROR, "UpstreamTimeout"))
    child.end()
    server.set_attributes({"big": 2**62, "empty": "", "nested": {"k": "v", "n": [1, 2]}})
    server.end()
    with sdk.start_as_current_span("sdk span", links=[Link(REMOTE, {"why": "test"})], kind=SpanKind.PRODUCER) as span:
        span.set_attribute("bytes", b"\x00\x01")
        span.add_event("plain")
        span.set_status(StatusCode.OK)
    sdk.start_span("consumer", kind=SpanKind.CONSUMER).end()
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    for _ in range(2):  # the second time from the encoder's cache of repeated attributes
        assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == stock_encode(spans)
    provider.shutdown()


def test_fast_spans_follow_the_sampler_and_their_parents():
    provider, exporter = provider_with(ParentBased(TraceIdRatioBased(0.0)))
    tracing = Tracing(provider)
    root = tracing.start_span("root")
    assert not root.is_recording() and not isinstance(root, FastSpan)  # ratio 0: dropped at the root
    sampled_parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))  # a client's sampled traceparent
    server = tracing.start_span("server", sampled_parent, SpanKind.SERVER)
    assert isinstance(server, FastSpan)
    child = tracing.start_span("child", trace.set_span_in_context(server))
    assert child.get_span_context().trace_id == REMOTE.trace_id
    child.end()
    server.end()
    unsampled = SpanContext(REMOTE.trace_id, REMOTE.span_id, True, TraceFlags(0))
    dropped = tracing.start_span("dropped", trace.set_span_in_context(NonRecordingSpan(unsampled)))
    assert not dropped.is_recording()
    names = {span.name: span for span in exporter.get_finished_spans()}
    assert set(names) == {"server", "child"}
    assert names["server"].parent == REMOTE and names["child"].parent.span_id == server.get_span_context().span_id
    assert names["child"].context.trace_state == REMOTE.trace_state
    provider.shutdown()
    off, _ = provider_with(ALWAYS_OFF)
    assert not Tracing(off).start_span("never").is_recording()
    off.shutdown()


def test_a_fast_span_records_only_an_exceptions_type():
    provider, exporter = provider_with()
    span = Tracing(provider).start_span("work")
    span.record_exception(ValueError("the prompt was: secret words"))
    span.set_status(StatusCode.ERROR, "first")
    span.set_status(Status(StatusCode.UNSET))  # never set, as in the SDK: it cannot take back an ERROR
    span.set_status(StatusCode.UNSET)
    assert span._status.status_code is StatusCode.ERROR
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR)  # OK is final
    span.end()
    span.end()  # once only
    (finished,) = exporter.get_finished_spans()
    assert [(e.name, dict(e.attributes)) for e in finished.events] == [("exception", {"exception.type": "ValueError"})]
    assert finished.status.status_code is StatusCode.OK
    span.set_attribute("late", True)  # after end: ignored, as the SDK's spans do
    span.add_event("late")
    assert "late" not in finished.attributes and len(finished.events) == 1
    provider.shutdown()


def test_a_lone_batch_processor_gets_spans_straight_into_its_queue():
    provider = TracerProvider(shutdown_on_exit=False)
    batched = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(batched))
    tracing = Tracing(provider)
    tracing.start_span("first").end()
    recorder = tracing.start_span.__self__
    assert recorder._batch is not None  # else every span takes the processors' longer path
    also = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(also))  # added later: both see the next span
    tracing.start_span("second").end()
    provider.force_flush()
    assert [span.name for span in batched.get_finished_spans()] == ["first", "second"]
    assert [span.name for span in also.get_finished_spans()] == ["second"]
    provider.shutdown()


def test_a_provider_whose_span_processor_has_no_processors_tuple_gets_every_span_through_on_end():
    class Collect:
        def __init__(self) -> None:
            self.ended: list[str] = []

        def on_start(self, span, parent_context=None) -> None:
            pass

        def on_end(self, span) -> None:
            self.ended.append(span.name)

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    collect = Collect()
    provider = TracerProvider(shutdown_on_exit=False, active_span_processor=collect)
    tracing = Tracing(provider)
    parent = tracing.start_span("parent")
    tracing.record_child("proxy.route", parent, time.time_ns())
    tracing.start_child("chat m", parent, SpanKind.CLIENT).end()
    parent.end()
    assert collect.ended == ["proxy.route", "chat m", "parent"]


def test_the_installed_exporter_gives_the_fast_path_its_client():
    exporter = FastOTLPSpanExporter(OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces"))
    assert exporter.fast  # else every export takes the stock (slower) path
    exporter.shutdown()


def test_the_fast_export_keeps_the_stock_exports_size_limit_and_shutdown(caplog):
    provider, memory = provider_with()
    Tracing(provider).start_span("s", None, SpanKind.INTERNAL, {"note": "x" * 200}).end()
    spans = memory.get_finished_spans()
    inner = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    inner._max_request_size = 100  # the stock exporter's request size limit (64 MiB by default)
    exporter = FastOTLPSpanExporter(inner)
    posted = []
    exporter._post = posted.append
    assert exporter.export(spans) is SpanExportResult.FAILURE and not posted
    assert "max_request_size" in caplog.text
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE and not posted
    provider.shutdown()


def test_the_trace_context_sent_upstream_is_what_the_propagators_write():
    provider, _ = provider_with()
    tracing = Tracing(provider)
    remote = trace.set_span_in_context(NonRecordingSpan(REMOTE))  # brings a tracestate along
    span = tracing.start_span("chat m", baggage.set_baggage("tenant", "a b", remote), SpanKind.CLIENT)
    with_baggage = baggage.set_baggage("tenant", "a b", trace.set_span_in_context(span))
    for context in (trace.set_span_in_context(span), with_baggage):
        token = otel_context.attach(context)
        try:
            fast = traced_headers({})
            stock: dict[str, str] = {}
            propagate.inject(stock)
        finally:
            otel_context.detach(token)
        assert fast == stock and fast["traceparent"].endswith(f"{span.get_span_context().span_id:016x}-01")
    assert "baggage" in fast and "tracestate" in fast
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())  # OTEL_PROPAGATORS=tracecontext: its way
    try:
        token = otel_context.attach(with_baggage)
        try:
            only = traced_headers({})
        finally:
            otel_context.detach(token)
        assert set(only) == {"traceparent", "tracestate"}
    finally:
        propagate.set_global_textmap(default)
    span.end()
    provider.shutdown()


def test_trace_headers_come_from_any_valid_current_span_and_not_without_one():
    assert traced_headers({"authorization": "Bearer k"}) is None  # no span current: the call's own headers
    provider, _ = provider_with()
    sdk = provider.get_tracer("other-library")
    with sdk.start_as_current_span("an SDK span") as span:  # not one of ours: the propagators write it
        traced = traced_headers({"authorization": "Bearer k"})
        stock = {"authorization": "Bearer k"}
        propagate.inject(stock)
    assert traced == stock and f"{span.get_span_context().span_id:016x}" in traced["traceparent"]
    token = otel_context.attach(trace.set_span_in_context(trace.INVALID_SPAN))
    try:
        assert traced_headers({}) is None
    finally:
        otel_context.detach(token)
    provider.shutdown()


class FixedIds(RandomIdGenerator):
    """Trace ids from a list, so a ratio sampler's decision is known."""

    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids = trace_ids

    def generate_trace_id(self) -> int:
        return self.trace_ids.pop(0)


def test_a_root_span_is_sampled_exactly_as_the_ratio_sampler_decides():
    sampler = ParentBased(TraceIdRatioBased(0.5))
    ids = [1, 2**64 - 2, 2**63 - 1, 2**63 + 1]  # the low 64 bits against the ratio's bound, 2**63
    expected = [sampler.should_sample(None, trace_id, "root").decision.is_sampled() for trace_id in ids]
    assert expected == [True, False, True, False]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=FixedIds(list(ids)), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    spans = [tracing.start_span("root", attributes={"n": n}) for n in range(len(ids))]
    assert [span.is_recording() for span in spans] == expected
    assert [span.get_span_context().trace_id for span in spans] == ids
    for span in spans:
        span.end()
    finished = exporter.get_finished_spans()
    assert [dict(span.attributes) for span in finished] == [{"n": 0}, {"n": 2}]
    assert all(span.parent is None and not span.context.trace_state for span in finished)
    provider.shutdown()


def test_the_queue_path_keeps_the_batch_processors_own_rules_for_a_full_queue_and_after_shutdown(caplog):
    provider = TracerProvider(shutdown_on_exit=False)
    exported = InMemorySpanExporter()
    processor = BatchSpanProcessor(exported, max_queue_size=2, max_export_batch_size=2, schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    tracing = Tracing(provider)
    batch = processor._batch_processor
    wake = batch._worker_awaken.set
    batch._worker_awaken.set = lambda: None  # keep the worker asleep, so the queue fills
    for name in ("one", "two", "three"):
        tracing.start_span(name).end()
    assert len(batch._queue) == 2 and "Queue full" in caplog.text  # the processor's warning: a span was dropped
    batch._worker_awaken.set = wake
    provider.shutdown()
    tracing.start_span("late").end()  # after shutdown: dropped, as the processor does, no error
    assert not batch._queue and "late" not in [span.name for span in exported.get_finished_spans()]


def test_a_span_with_an_attribute_block_reports_and_encodes_the_blocks_attributes_then_its_own():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    block = AttributeBlock({"gen_ai.operation.name": "chat", "proxy.target": "a/m", "server.port": 443})
    plain = tracing.start_span("chat m", None, SpanKind.CLIENT, {"proxy.attempt": 1}, block)
    plain.end()
    replaced = tracing.start_span("chat m", None, SpanKind.CLIENT, {"proxy.attempt": 2}, block)
    replaced.set_attribute("proxy.target", "b/m")  # an own attribute with a block's key wins
    replaced.end()
    first, second = exporter.get_finished_spans()
    assert list(first.attributes.items()) == [*block.mapping.items(), ("proxy.attempt", 1)]
    assert second.attributes["proxy.target"] == "b/m" and second.attributes["server.port"] == 443
    for _ in range(2):  # the second time with the block's bytes made
        assert ExportTraceServiceRequest.FromString(encode_spans([first, second])) == stock_encode([first, second])
    assert block.encoded is not None
    provider.shutdown()


def test_a_provider_that_is_not_the_sdks_gets_the_blocks_attributes_too():
    seen = {}

    class Tracer(trace.NoOpTracer):
        def start_span(self, name, context=None, kind=SpanKind.INTERNAL, attributes=None, **kwargs):
            seen[name] = dict(attributes or {})
            return super().start_span(name, context, kind, attributes, **kwargs)

    class Provider(trace.NoOpTracerProvider):
        def get_tracer(self, *args, **kwargs):
            return Tracer()

    tracing = Tracing(Provider())
    tracing.start_span("x", None, SpanKind.INTERNAL, {"own": 1}, AttributeBlock({"fixed": "v"})).end()
    assert seen == {"x": {"fixed": "v", "own": 1}}


def test_a_recorded_span_keeps_its_start_and_parent_on_every_provider():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    parent = tracing.start_span("parent", None, SpanKind.SERVER)
    started = time.time_ns() - 5_000
    tracing.record_child("proxy.route", parent, started, {"own": 1}, AttributeBlock({"fixed": "v"}))
    sdk_parent = provider.get_tracer("other").start_span("sdk parent")  # not one of ours: the general path
    tracing.record_child("proxy.route", sdk_parent, started, {"own": 2})
    sdk_parent.end()
    parent.end()
    fast, general = [s for s in exporter.get_finished_spans() if s.name == "proxy.route"]
    for span, under, own in ((fast, parent, 1), (general, sdk_parent, 2)):
        assert span.parent.span_id == under.get_span_context().span_id
        assert span.context.trace_id == under.get_span_context().trace_id
        assert span.start_time == started <= span.end_time and span.kind is SpanKind.INTERNAL
        assert span.attributes["own"] == own
    assert dict(fast.attributes) == {"fixed": "v", "own": 1}
    provider.shutdown()

    seen = {}

    class Tracer(trace.NoOpTracer):
        def start_span(self, name, context=None, kind=SpanKind.INTERNAL, attributes=None, start_time=None, **kw):
            seen[name] = (dict(attributes or {}), start_time, trace.get_current_span(context))
            return super().start_span(name, context, kind, attributes, **kw)

    class Provider(trace.NoOpTracerProvider):
        def get_tracer(self, *args, **kwargs):
            return Tracer()

    other = NonRecordingSpan(REMOTE)
    Tracing(Provider()).record_child("proxy.route", other, started, {"own": 3}, AttributeBlock({"fixed": "v"}))
    assert seen == {"proxy.route": ({"fixed": "v", "own": 3}, started, other)}


def _span_bytes(message: ExportTraceServiceRequest) -> list[bytes]:
    """Each span of `message` serialized alone: compares NaNs, which message equality cannot."""
    spans = [span for rs in message.resource_spans for ss in rs.scope_spans for span in ss.spans]
    return [span.SerializeToString(deterministic=True) for span in spans]


def test_values_equal_in_python_but_not_in_protobuf_are_encoded_apart():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    nan = float("nan")
    for value in (True, 1.0, 1, nan, -nan, 0.0, -0.0, False, 0, "1", ("1",)):
        tracing.start_span("s", None, SpanKind.INTERNAL, {"v": value}).end()
    spans = exporter.get_finished_spans()
    for _ in range(2):  # the second time from the cache
        assert _span_bytes(ExportTraceServiceRequest.FromString(encode_spans(spans))) == _span_bytes(
            stock_encode(spans)
        )
    provider.shutdown()


def test_the_encoders_cache_keeps_a_bounded_number_of_keys_and_values(monkeypatch):
    monkeypatch.setattr(otlp_encode, "_encoded", {})
    monkeypatch.setattr(otlp_encode, "MAX_KEYS", 3)
    monkeypatch.setattr(otlp_encode, "MAX_VALUES_PER_KEY", 4)
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    for n in range(10):  # per key: values of every type, more than a key keeps; more keys than a tag keeps
        attributes = {"s": str(n), "i": n, "f": n + 0.5, "b": bool(n % 2), f"k{n}": "v"}
        tracing.start_span("s", None, SpanKind.INTERNAL, attributes).end()
    tracing.start_span("s", None, SpanKind.INTERNAL, {"mixed": 1, "also": "x"}).end()
    spans = exporter.get_finished_spans()
    for _ in range(2):
        assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == stock_encode(spans)
    kept = otlp_encode._encoded[b"\x4a"]
    assert len(kept) == 3  # the first three keys
    for entry in kept.values():
        assert entry[4] == sum(map(len, entry[1:4])) <= 4
    provider.shutdown()


def test_tuples_are_cached_only_when_they_hold_strings():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    for value in (("a", "b"), (1, 2), (True, 2.0), ("a", "b"), (["unhashable"],)):
        tracing.start_span("s", None, SpanKind.INTERNAL, {"proxy.tags": value}).end()
    spans = exporter.get_finished_spans()
    for _ in range(2):  # (1, 2) == (True, 2.0): equal tuples, encoded apart
        assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == stock_encode(spans)
    provider.shutdown()


def test_the_console_exporters_json_has_the_blocks_attributes():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    block = AttributeBlock({"gen_ai.request.model": "m", "proxy.target": "a/m"})
    tracing.start_span("chat m", None, SpanKind.CLIENT, {"proxy.attempt": 1}, block).end()
    tracing.start_span("plain", None, SpanKind.INTERNAL, {"proxy.attempt": 2}).end()
    with_block, plain = exporter.get_finished_spans()
    shown = json.loads(with_block.to_json())
    assert shown["attributes"] == {"gen_ai.request.model": "m", "proxy.target": "a/m", "proxy.attempt": 1}
    assert shown["name"] == "chat m" and shown["kind"] == "SpanKind.CLIENT" and shown["end_time"]
    assert json.loads(plain.to_json())["attributes"] == {"proxy.attempt": 2}
    provider.shutdown()


def test_prompt_text_and_long_values_are_not_kept_by_the_encoders_cache():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    attributes = {"gen_ai.input.messages": '[{"role": "user", "parts": []}]', "proxy.note": "x" * 600, "short": "y"}
    tracing.start_span("chat m", None, SpanKind.CLIENT, attributes).end()
    spans = exporter.get_finished_spans()
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == stock_encode(spans)
    kept = {
        key: {value for values in entry[1:4] for value in values}
        for key, entry in otlp_encode._encoded[b"\x4a"].items()
    }
    assert not kept["gen_ai.input.messages"] and not kept["proxy.note"]  # content, and too long
    assert kept["short"] == {"y"}
    provider.shutdown()


def test_an_integer_beyond_int64_drops_its_attribute_as_the_stock_encoder_does():
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    attributes = {"big": 2**63, "small": -(2**63) - 1, "in_a_tuple": (1, 2**64), "edges": (2**63 - 1, -(2**63))}
    tracing.start_span("s", None, SpanKind.INTERNAL, attributes).end()
    spans = exporter.get_finished_spans()
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert decoded == stock_encode(spans)
    assert [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes] == ["edges"]
    provider.shutdown()


def test_a_lone_surrogate_in_captured_text_is_replaced_not_a_lost_batch():
    # "\ud800" is valid JSON (an escaped lone surrogate), so it reaches prompts and answers; UTF-8 cannot hold it
    provider, exporter = provider_with()
    tracing = Tracing(provider)
    tracing.start_span("chat m", None, SpanKind.CLIENT, {"gen_ai.output.messages": "a\ud800b", "ok": "x"}).end()
    tracing.start_span("next", None, SpanKind.INTERNAL, {"n": 1}).end()
    decoded = ExportTraceServiceRequest.FromString(encode_spans(exporter.get_finished_spans()))
    spans = decoded.resource_spans[0].scope_spans[0].spans
    assert [span.name for span in spans] == ["chat m", "next"]
    assert {kv.key: kv.value.string_value for kv in spans[0].attributes} == {"gen_ai.output.messages": "a?b", "ok": "x"}
    provider.shutdown()


@pytest.mark.parametrize("api_only", [False, True])
def test_enter_span_makes_a_span_current_as_the_api_does(monkeypatch, api_only, caplog):
    if api_only:  # another runtime context (OTEL_PYTHON_CONTEXT): the API's own attach and detach
        monkeypatch.setattr(otel_fast, "_CURRENT", None)
    provider, _ = provider_with()
    tracing = Tracing(provider)
    outer, inner = tracing.start_span("outer"), tracing.start_span("inner")
    with trace.use_span(outer):
        baggage_token = otel_context.attach(baggage.set_baggage("team", "llm"))
        token = otel_fast.enter_span(inner)
        assert trace.get_current_span() is inner
        assert baggage.get_baggage("team") == "llm"  # the rest of the context is kept
        assert otel_fast.current_context().get(otel_fast.SPAN_KEY) is inner
        otel_fast.leave_span(token)
        assert trace.get_current_span() is outer
        otel_context.detach(baggage_token)
    stray = contextvars.copy_context().run(otel_fast.enter_span, inner)  # a token made in another context
    reused = otel_fast.enter_span(inner)
    otel_fast.leave_span(reused)
    with caplog.at_level(logging.ERROR):
        otel_fast.leave_span(stray)  # logged, not raised (as `context.detach` does)
        otel_fast.leave_span(reused)  # used twice: the same
    detached = [r for r in caplog.records if "ailed to detach" in r.getMessage()]
    assert len(detached) == 2
    assert trace.get_current_span() is not inner
    provider.shutdown()
