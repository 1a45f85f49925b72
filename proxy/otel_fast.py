"""A lean path for the proxy's per-request spans and for OTLP span export.

Why: the OTel SDK's `Tracer.start_span` checks every attribute and builds a general-purpose span (20-30 us each on the
reference machine) and the stock OTLP exporter builds one protobuf object per attribute (about 45 us per span).
At four spans per proxied request that more than doubled the CPU a request costs. The proxy's own spans hold only
values it builds itself (str, int, float, bool, tuples of str), so they can skip both:

- `Recorder.start()` makes a `FastSpan`, a plain API span over a dict; `end()` hands one SDK `ReadableSpan` to the
  provider's span processor, so batch, simple and in-memory exporters all work unchanged. The provider's sampler
  decides for a span whose parent is not one of ours (a root, a client's `traceparent`, the MCP SDK's span); a child
  of a `FastSpan` is recorded like its parent. Ids come from the provider's id generator. Not applied to these
  spans: span limits and processors' `on_start` (the batch and simple processors do nothing there). A provider that
  is not the SDK's gets ordinary spans from its tracer.
- `encode_spans()` writes finished spans (the proxy's and the SDK's alike) straight to an OTLP
  `ExportTraceServiceRequest` in protobuf bytes, the same message the stock encoder builds (a test compares them);
  `FastOTLPSpanExporter` sends those bytes with the stock OTLP/HTTP exporter's own client, so endpoint, headers, TLS,
  compression, timeout and retries stay the exporter's (`OTEL_EXPORTER_OTLP_*`). When the installed exporter has no
  such client (another version), it falls back to the stock `export()`.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

__all__ = ["FastOTLPSpanExporter", "FastSpan", "Recorder", "encode_spans"]

log = logging.getLogger(__name__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class FastSpan(trace.Span):
    """A recording span of the proxy's; see the module docstring."""

    __slots__ = (
        "_attributes",
        "_context",
        "_ended",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_recorder",
        "_start",
        "_status",
    )

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list[Event] = []
        self._status = _UNSET
        self._start = time.time_ns()
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = value

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        self._events.append(Event(name, dict(attributes) if attributes else None, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        pass  # the proxy's spans have no links

    def update_name(self, name: str) -> None:
        self._name = name

    def is_recording(self) -> bool:
        return not self._ended

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._status.status_code is StatusCode.OK:  # final, as in the SDK
            return
        self._status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The type only: an exception's message may quote a prompt.
        self.add_event("exception", {"exception.type": type(exception).__qualname__, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        recorder = self._recorder
        finished = ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self._parent,
            resource=recorder.resource,
            attributes=self._attributes,
            events=tuple(self._events),
            kind=self._kind,
            status=self._status,
            start_time=self._start,
            end_time=end_time or time.time_ns(),
            instrumentation_scope=recorder.scope,
        )
        recorder.processor.on_end(finished)


class Recorder:
    """Starts `FastSpan`s for one SDK `TracerProvider` (its sampler, id generator, resource and span processor)."""

    __slots__ = ("_ids", "_sampler", "processor", "resource", "scope")

    def __init__(self, provider: TracerProvider, scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self.resource = provider.resource
        self.processor = provider._active_span_processor  # the SDK's one entry point for finished spans
        self.scope = scope

    @staticmethod
    def for_provider(provider: trace.TracerProvider, scope: InstrumentationScope) -> Recorder | None:
        """A recorder for an SDK provider; None for any other (its tracer makes ordinary spans)."""
        if isinstance(provider, TracerProvider) and hasattr(provider, "_active_span_processor"):
            return Recorder(provider, scope)
        return None

    def start(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
    ) -> trace.Span:
        """A span under `context`'s span (default: the current one); takes ownership of `attributes`."""
        parent_span = trace.get_current_span(context)
        parent = parent_span.get_span_context()
        if type(parent_span) is FastSpan:  # ours, so recorded: so is its child
            trace_id, state = parent.trace_id, parent.trace_state
        else:
            trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
            result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
            state = result.trace_state
            if not result.decision.is_sampled():
                return NonRecordingSpan(
                    SpanContext(trace_id, self._ids.generate_span_id(), False, TraceFlags(0), state)
                )
            if result.attributes:
                attributes = {**result.attributes, **(attributes or {})}
        span_context = SpanContext(trace_id, self._ids.generate_span_id(), False, _SAMPLED, state)
        return FastSpan(self, name, span_context, parent if parent.is_valid else None, kind, attributes or {})


# --- OTLP protobuf encoding --------------------------------------------------------------------------------------

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_pairs: dict[tuple[str, type, Any], bytes] = {}  # (key, type, value) -> an encoded `KeyValue`: most repeat
MAX_CACHED_PAIRS = 8192  # then the cache starts over (request ids and the like fill it; the common pairs return)
_SMALL = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + _varint(len(data)) + data


def _value(value: Any) -> bytes:
    """An `AnyValue`'s content, as the stock encoder writes it (same type tests, same order)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _text(b"\x0a", value)
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode a {type(value).__name__} attribute value")


def _key_value(key: str, value: Any) -> bytes:
    """A `KeyValue` message's content."""
    return _text(b"\x0a", key) + _field(b"\x12", _value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated `KeyValue` fields under `tag`."""
    if not attributes:
        return b""
    out = []
    pairs = _pairs
    for key, value in attributes.items():
        kind = type(value)
        cacheable = kind is str or kind is bool or kind is int
        if cacheable:
            encoded = pairs.get((key, kind, value))  # the type too: True == 1
            if encoded is not None:
                out.append(tag + encoded)
                continue
        try:
            body = _key_value(key, value)
        except TypeError as exc:
            log.warning("span attribute %s not exported: %s", key, exc)
            continue
        encoded = _varint(len(body)) + body
        if cacheable:
            if len(pairs) >= MAX_CACHED_PAIRS:
                pairs.clear()
            pairs[(key, kind, value)] = encoded
        out.append(tag + encoded)
    return b"".join(out)


def _flags(parent: SpanContext | None) -> int:
    return 0x300 if parent is not None and parent.is_remote else 0x100


def _trace_state(state: Any) -> str:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big"), b"\x12\x08" + context.span_id.to_bytes(8, "big")]
    state = _trace_state(context.trace_state)
    if state:
        parts.append(_text(b"\x1a", state))
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_text(b"\x2a", span.name))
    parts.append(b"\x30" + _varint(_KIND[span.kind]))
    if span.start_time:
        parts.append(b"\x39" + _fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _fixed64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp) + _text(b"\x12", event.name) + _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big") + b"\x12\x08"
        body += link.context.span_id.to_bytes(8, "big") + _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        parts.append(_field(b"\x6a", body + b"\x35" + _fixed32(_flags(link.context))))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    body = _text(b"\x12", status.description) if status.description else b""
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    parts.append(_field(b"\x7a", body))
    parts.append(b"\x85\x01" + _fixed32(_flags(parent)))
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    body = _text(b"\x0a", scope.name) if scope.name else b""
    if scope.version:
        body += _text(b"\x12", scope.version)
    return body + _attributes(b"\x1a", scope.attributes)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An OTLP `ExportTraceServiceRequest` for `spans`, in protobuf bytes (grouped by resource, then scope)."""
    # Grouped by the resource's identity: hashing a `Resource` serializes it, too slow to do once per span.
    grouped: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    for span in spans:
        entry = grouped.get(id(span.resource))
        if entry is None:
            entry = grouped[id(span.resource)] = (span.resource, {})
        entry[1].setdefault(span.instrumentation_scope or None, []).append(_field(b"\x12", _span(span)))
    out = []
    for resource, scopes in grouped.values():
        body = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
        for scope, encoded in scopes.items():
            scope_spans = _field(b"\x0a", _scope(scope)) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _text(b"\x1a", scope.schema_url)
            body += _field(b"\x12", scope_spans)
        if resource.schema_url:
            body += _text(b"\x1a", resource.schema_url)
        out.append(_field(b"\x0a", body))
    return b"".join(out)


class FastOTLPSpanExporter(SpanExporter):
    """The stock OTLP/HTTP span exporter with `encode_spans` as its encoder (see the module docstring)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        client = getattr(inner, "_client", None)
        post = getattr(client, "export", None)
        self.fast = callable(post)
        self._post = post

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.fast:
            return self._inner.export(spans)
        try:
            data = encode_spans(spans)
        except Exception:
            log.exception("could not encode %d spans; exporting them the stock way", len(spans))
            return self._inner.export(spans)
        result = self._post(data)  # type: ignore[misc]
        if getattr(result, "success", False):
            return SpanExportResult.SUCCESS
        log.warning("span export failed: %s", getattr(result, "reason", None) or getattr(result, "status_code", None))
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
