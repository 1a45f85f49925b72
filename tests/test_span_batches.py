"""The span processor in front of the OTLP/HTTP exporter (proxy/span_batches.py): spans are encoded a chunk at a time
as they come and sent one export request per `send_size` spans; fewer are sent once the schedule delay has passed;
`force_flush` and `shutdown` send the rest; a full queue or a shut-down processor drops spans and says so; a span
that cannot be encoded goes the stock way; a failing send does not stop the worker; `llm-proxy serve` with the OTLP
exporter uses it, and the `OTEL_BSP_*` variables set it up; a forked child starts its own worker; chunks make one
request, the same as the stock encoder's, and the worker pauses between them."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from proxy import span_batches, telemetry
from proxy.config.model import TelemetryConfig, TracesConfig
from proxy.span_batches import ENCODE_CHUNK, EncodingSpanProcessor, settings_from_env
from proxy.telemetry import Tracing


class Sender:
    """Stands for FastOTLPSpanExporter: records what would be posted."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[int, list[str]]] = []  # (count, span names decoded from the bytes)
        self.data: list[bytes] = []
        self.stock: list[int] = []
        self.fail_first = fail_first
        self.shut = False
        self.lock = threading.Lock()

    def send(self, data: bytes, count: int) -> bool:
        self.data.append(data)
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("the collector's client broke")
        request = ExportTraceServiceRequest.FromString(data)
        names = [s.name for r in request.resource_spans for scope in r.scope_spans for s in scope.spans]
        with self.lock:
            self.sent.append((count, names))
        return True

    def export_stock(self, spans: list[ReadableSpan]) -> None:
        self.stock.append(len(spans))

    def shutdown(self) -> None:
        self.shut = True


def eventually(condition: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[EncodingSpanProcessor, Sender, Tracing]]]:
    made: list[EncodingSpanProcessor] = []

    def build(sender: Sender | None = None, **settings: int) -> tuple[EncodingSpanProcessor, Sender, Tracing]:
        sender = sender or Sender()
        processor = EncodingSpanProcessor(sender, **{"schedule_delay_ms": 60_000, **settings})  # type: ignore[arg-type]
        made.append(processor)
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(processor)
        return processor, sender, Tracing(provider)

    yield build
    for processor in made:
        processor.shutdown()


def finish(tracing: Tracing, count: int, name: str = "s") -> None:
    for n in range(count):
        tracing.start_span(f"{name}{n}").end()


def test_spans_are_encoded_as_they_come_and_sent_once_per_send_size(make):
    processor, sender, tracing = make(send_size=2 * ENCODE_CHUNK)
    finish(tracing, ENCODE_CHUNK)
    eventually(lambda: not processor._queue)  # a whole chunk: encoded at once...
    assert processor._pending_spans == ENCODE_CHUNK and not sender.sent  # ...and held until there are send_size
    finish(tracing, ENCODE_CHUNK + 10, "t")
    eventually(lambda: sender.sent)
    [(count, names)] = sender.sent
    assert count == len(names) == 2 * ENCODE_CHUNK
    assert names[:2] == ["s0", "s1"] and names[-1] == f"t{ENCODE_CHUNK - 1}"  # in the order they ended
    assert processor.force_flush()
    assert sender.sent[1][0] == 10 and sender.sent[1][1][0] == f"t{ENCODE_CHUNK}"


def test_a_few_spans_go_out_once_the_schedule_delay_has_passed(make):
    _, sender, tracing = make(schedule_delay_ms=50)
    finish(tracing, 3)
    eventually(lambda: sender.sent, within=5)
    assert sender.sent == [(3, ["s0", "s1", "s2"])]
    finish(tracing, 2, "later")
    eventually(lambda: len(sender.sent) == 2)
    assert sender.sent[1] == (2, ["later0", "later1"])


def test_shutdown_sends_the_rest_then_drops_spans_with_a_warning(make, caplog):
    processor, sender, tracing = make()
    finish(tracing, 5)
    processor.shutdown()
    assert sender.sent == [(5, ["s0", "s1", "s2", "s3", "s4"])] and sender.shut
    assert not processor._worker.is_alive()
    with caplog.at_level(logging.WARNING, logger="proxy.span_batches"):
        finish(tracing, 3, "late")
    assert processor.dropped == 3
    assert [r.getMessage() for r in caplog.records] == ["span dropped (1 so far): the processor is shut down"]
    assert not processor.force_flush()


def test_a_full_queue_drops_new_spans_and_says_so_once(make, caplog):
    processor, sender, tracing = make(queue_size=10)
    with caplog.at_level(logging.WARNING, logger="proxy.span_batches"), processor._lock:  # the worker held up
        finish(tracing, 15)
    assert processor.dropped == 5
    assert [r.getMessage() for r in caplog.records] == ["span dropped (1 so far): 10 spans are waiting already"]
    assert processor.force_flush()
    assert sender.sent == [(10, [f"s{n}" for n in range(10)])]  # the first ten kept


def test_unsampled_spans_are_not_exported(make):
    processor, sender, _ = make()
    unsampled = SpanContext(1, 2, False, TraceFlags(0))
    processor.on_end(ReadableSpan(name="not sampled", context=unsampled))
    processor.on_end(ReadableSpan(name="sampled", context=SpanContext(1, 3, False, TraceFlags(1))))
    processor.force_flush()
    assert sender.sent == [(1, ["sampled"])]


def test_spans_that_cannot_be_encoded_go_the_stock_way(make, monkeypatch, caplog):
    processor, sender, tracing = make()

    def broken(spans: object) -> bytes:
        raise ValueError("an encoder bug")

    monkeypatch.setattr(span_batches, "encode_spans", broken)
    finish(tracing, 4)
    with caplog.at_level(logging.ERROR, logger="proxy.span_batches"):
        assert processor.force_flush()
    assert sender.stock == [4] and not sender.sent
    assert "could not encode 4 spans" in caplog.text


def test_a_failing_send_does_not_stop_the_worker(make, caplog):
    processor, sender, tracing = make(Sender(fail_first=1), send_size=ENCODE_CHUNK)
    with caplog.at_level(logging.ERROR, logger="proxy.span_batches"):
        finish(tracing, ENCODE_CHUNK)
        eventually(lambda: "span export failed" in caplog.text)
    finish(tracing, ENCODE_CHUNK, "again")
    eventually(lambda: sender.sent)
    assert sender.sent[0][0] == ENCODE_CHUNK and sender.sent[0][1][0] == "again0"
    assert processor._worker.is_alive()


def test_settings_come_from_the_otel_bsp_variables(caplog):
    assert settings_from_env({}) == {"schedule_delay_ms": 5000, "queue_size": 8192, "send_size": 2048}
    env = {"OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64"}
    assert settings_from_env(env) == {"schedule_delay_ms": 250, "queue_size": 100, "send_size": 64}
    with caplog.at_level(logging.WARNING, logger="proxy.span_batches"):
        bad = settings_from_env({"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"})
    assert bad == {"schedule_delay_ms": 5000, "queue_size": 8192, "send_size": 2048}
    assert "OTEL_BSP_SCHEDULE_DELAY='soon' is not a positive whole number; using 5000" in caplog.text
    assert "OTEL_BSP_MAX_QUEUE_SIZE='-1'" in caplog.text


def test_serve_uses_it_for_otlp_over_http_and_the_sdk_batch_processor_otherwise(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")
    for exporter, kind in (("otlp", EncodingSpanProcessor), ("console", BatchSpanProcessor)):
        config = TelemetryConfig(traces=TracesConfig(exporter=exporter, endpoint="http://127.0.0.1:9"))
        setup = telemetry.Telemetry(telemetry.settings_from(config, {}))
        try:
            [processor] = setup._provider._active_span_processor._span_processors  # type: ignore[union-attr]
            assert type(processor) is kind
            if kind is EncodingSpanProcessor:
                assert processor.send_size == 512
        finally:
            setup.shutdown()


def test_small_settings_make_small_chunks_and_no_export_request_holds_more_than_its_batch(make):
    processor, sender, tracing = make(queue_size=100, send_size=64)
    assert processor.chunk == 50  # at most half the queue, so a wake-up comes before it is full
    for group in range(4):
        finish(tracing, 50, f"g{group}-")
        eventually(lambda: len(processor._queue) < processor.chunk)  # whole chunks encoded
    assert processor.force_flush()
    assert processor.dropped == 0
    assert sum(count for count, _ in sender.sent) == 200
    assert all(count == len(names) <= 64 for count, names in sender.sent)


def test_a_stock_export_that_raises_does_not_stop_the_worker(make, monkeypatch, caplog):
    class Fragile(Sender):
        def export_stock(self, spans: list[ReadableSpan]) -> None:
            raise OSError("the stock exporter broke too")

    processor, sender, tracing = make(Fragile(), send_size=ENCODE_CHUNK)
    real = span_batches.encode_spans
    monkeypatch.setattr(span_batches, "encode_spans", lambda spans: (_ for _ in ()).throw(ValueError("bug")))
    with caplog.at_level(logging.ERROR, logger="proxy.span_batches"):
        finish(tracing, ENCODE_CHUNK)
        eventually(lambda: "the stock export of 128 spans failed too" in caplog.text)
    monkeypatch.setattr(span_batches, "encode_spans", real)
    finish(tracing, ENCODE_CHUNK, "after")
    eventually(lambda: sender.sent)
    assert processor._worker.is_alive() and sender.sent[0][1][0] == "after0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_worker_and_sends_only_its_own_spans(make):
    processor, sender, tracing = make()
    finish(tracing, 3, "parent")  # queued in the parent (the delay is a minute), not sent yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's queue was replaced, its worker is new
        code = 1
        try:
            finish(tracing, 2, "child")
            flushed = processor.force_flush()
            os.write(write, json.dumps([flushed, sender.sent, processor._worker.is_alive()]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    flushed, sent, alive = json.loads(report)
    assert flushed and alive and sent == [[2, ["child0", "child1"]]]
    assert processor.force_flush()
    assert sender.sent == [(3, ["parent0", "parent1", "parent2"])]


def test_chunks_encoded_apart_make_one_request_equal_to_the_stock_encoders(make):
    processor, sender, tracing = make()
    memory = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(memory))  # the same spans, for the stock encoder
    with processor._lock:  # the worker waits: the whole batch is encoded below, in chunks
        finish(tracing, 2 * ENCODE_CHUNK + 44)
        processor._encode(everything=True)
        assert len(processor._pending) == 3
        processor._send()
    spans = memory.get_finished_spans()
    message = ExportTraceServiceRequest.FromString(sender.data[0])
    decoded = [span for rs in message.resource_spans for ss in rs.scope_spans for span in ss.spans]
    assert len(message.resource_spans) == 3  # one per chunk, merged by protobuf into one request
    assert [span.name for span in decoded] == [span.name for span in spans]
    memory.clear()
    finish(tracing, 5, "few")
    assert processor.force_flush()
    assert ExportTraceServiceRequest.FromString(sender.data[1]) == stock_encode(memory.get_finished_spans())


def test_between_chunks_the_worker_pauses_in_proportion_to_the_chunk_so_the_loop_runs_undisturbed(make, monkeypatch):
    processor, _, tracing = make()
    pauses: list[float] = []
    monkeypatch.setattr(span_batches.time, "sleep", pauses.append)
    with processor._lock:  # the worker waits; the test encodes as it would, paced
        finish(tracing, 3 * ENCODE_CHUNK)
        processor._encode(everything=True, paced=True)
        assert len(pauses) == 2  # between chunks, not before the first or after the last
        assert all(0 < pause <= span_batches.MAX_PAUSE for pause in pauses)
        pauses.clear()
        monkeypatch.setattr(span_batches, "ENCODE_PACE", 1e9)  # a long chunk: the pause is capped
        finish(tracing, 3 * ENCODE_CHUNK)
        processor._encode(everything=True, paced=True)
        assert pauses == [span_batches.MAX_PAUSE, span_batches.MAX_PAUSE]
        processor._encode(everything=True)  # force_flush and shutdown: no pause in the caller's thread
        assert len(pauses) == 2


def test_a_processor_added_later_sees_the_next_spans_too(make):
    processor, sender, tracing = make()
    tracing.start_span("first").end()
    assert tracing.start_span.__self__._enqueue == processor.enqueue  # the direct path is taken...
    memory = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.start_span("second").end()  # ...until the processors change
    tracing.start_span("third").end()
    assert processor.force_flush()
    assert sender.sent == [(3, ["first", "second", "third"])]
    assert [span.name for span in memory.get_finished_spans()] == ["second", "third"]
