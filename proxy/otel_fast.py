"""A lean path for the proxy's per-request spans and for OTLP span export.

Why: the OTel SDK's `Tracer.start_span` checks every attribute and builds a general-purpose span (20-30 us each on the
reference machine) and the stock OTLP exporter builds one protobuf object per attribute (about 45 us per span).
At four spans per proxied request that more than doubled the CPU a request costs. The proxy's own spans hold only
values it builds itself (str, int, float, bool, tuples of str), so they can skip both:

- `Recorder.start()` makes a `FastSpan`, a plain API span over a dict that is also an SDK `ReadableSpan`; `end()`
  hands it to the provider's span processors, so batch, simple and in-memory exporters all work unchanged. The
  provider's sampler decides for a span whose parent is not one of ours (a root, a client's `traceparent`, the MCP
  SDK's span); a child of a `FastSpan` is recorded like its parent. Ids come from the provider's id generator. Not
  applied to these spans: span limits and processors' `on_start` (the batch and simple processors do nothing there).
  A provider that is not the SDK's gets ordinary spans from its tracer.
- `encode_spans()` writes finished spans (the proxy's and the SDK's alike) straight to an OTLP
  `ExportTraceServiceRequest` in protobuf bytes, the same message the stock encoder builds (a test compares them);
  `FastOTLPSpanExporter` sends those bytes with the stock OTLP/HTTP exporter's own client, so endpoint, headers, TLS,
  compression, timeout and retries stay the exporter's (`OTEL_EXPORTER_OTLP_*`). When the installed exporter has no
  such client (another version), it falls back to the stock `export()`.
"""

from __future__ import annotations

import collections
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = ["FastOTLPSpanExporter", "FastSpan", "Recorder", "encode_spans", "inject_current"]

log = logging.getLogger(__name__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
# The key under which a `Context` holds its span, found through the public API (the constant itself is private).
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_BAGGAGE_KEY = next(iter(baggage.set_baggage("k", "v", Context())))  # where a `Context` holds its baggage


def _batch_queue(processors: Any) -> Any:
    """A function putting a finished span into the queue of a lone `BatchSpanProcessor` among `processors`, else None.

    What the batch's `emit` does, minus its fork check: `os.getpid()` on every span, a system call that took ~9 % of
    the loaded proxy's Python time in py-spy samples here (four spans per request). A forked child is still covered:
    the processor re-initialises itself through `os.register_at_fork`, and this reads its (then new) queue and event
    on every call. A shut-down processor or a full queue take `emit` itself (its warning, its dropped count)."""
    if not (isinstance(processors, tuple) and len(processors) == 1 and type(processors[0]) is BatchSpanProcessor):
        return None
    batch = getattr(processors[0], "_batch_processor", None)
    emit = getattr(batch, "emit", None)
    if not callable(emit):
        return None
    try:
        limit, size = batch._max_queue_size, batch._max_export_batch_size
        queue, _, _ = batch._queue, batch._shutdown, batch._worker_awaken.is_set
    except AttributeError:
        return emit
    if type(queue) is not collections.deque or not isinstance(limit, int) or not isinstance(size, int):
        return emit

    def put(span: ReadableSpan) -> None:
        queue = batch._queue
        if batch._shutdown or len(queue) >= limit:
            emit(span)
            return
        queue.appendleft(span)
        if len(queue) >= size and not (awaken := batch._worker_awaken).is_set():
            awaken.set()

    return put


def _ratio_root_bound(sampler: Any) -> int | None:
    """For the default sampler (parent-based, a trace-id ratio at the root): the ratio's bound, so that a root span's
    decision is the one comparison the ratio sampler makes (same result, trace state and attributes)."""
    root = getattr(sampler, "_root", None)
    if type(sampler) is ParentBased and type(root) is TraceIdRatioBased:
        return root.bound
    return None


def _span_context(trace_id: int, span_id: int, state: Any) -> SpanContext:
    """A sampled, local `SpanContext` with ids known to be valid (the constructor would check them again)."""
    if state is None:
        state = DEFAULT_TRACE_STATE
    return tuple.__new__(SpanContext, (trace_id, span_id, False, _SAMPLED, state, True))  # type: ignore[return-value]


class FastSpan(trace.Span, ReadableSpan):
    """A recording span of the proxy's, and once ended its own `ReadableSpan` (as the SDK's `Span` is): its fields
    have the base class's names. Plain attributes and events, no links, so nothing is ever dropped (the base class
    would ask each container, three ABC checks per span). Changes after `end()` are ignored."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_recorder",
        "_start_time",
        "_status",
    )
    _links = ()
    _instrumentation_info = None
    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0

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
        self._start_time = time.time_ns()
        self._end_time: int | None = None

    @property
    def resource(self) -> Any:
        return self._recorder.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._recorder.scope

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, dict(attributes) if attributes else None, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        pass  # the proxy's spans have no links

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None or self._status.status_code is StatusCode.OK:  # OK is final, as in the SDK
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
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        self._recorder.finished(self)


class Recorder:
    """Starts `FastSpan`s for one SDK `TracerProvider` (its sampler, id generator, resource and span processors).

    A finished span goes to the provider's span processors; when the only one is a `BatchSpanProcessor`, straight
    into its queue (what its `on_end` does for a sampled span, which ours always are, minus two calls and checks)."""

    __slots__ = ("_ids", "_multi", "_queue_for", "_queue_put", "_root_bound", "_sampler", "resource", "scope")

    def __init__(self, provider: TracerProvider, scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._root_bound = _ratio_root_bound(provider.sampler)
        self._ids = provider.id_generator
        self.resource = provider.resource
        self._multi = provider._active_span_processor  # the SDK's one entry point for finished spans
        self._queue_for: Any = None  # the processors tuple `_queue_put` was found for
        self._queue_put: Any = None
        self.scope = scope

    def finished(self, span: FastSpan) -> None:
        processors = getattr(self._multi, "_span_processors", None)
        if processors is not self._queue_for:  # first span, or a processor was added since
            self._queue_for, self._queue_put = processors, _batch_queue(processors)
        if self._queue_put is not None:
            self._queue_put(span)
        else:
            self._multi.on_end(span)

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
        parent_span = (context if context is not None else get_current()).get(_SPAN_KEY)
        if type(parent_span) is FastSpan:  # ours, so recorded: so is its child
            parent = parent_span._context
            trace_id, state = parent.trace_id, parent.trace_state
        elif parent_span is None and self._root_bound is not None:  # a root under the default sampler
            trace_id = self._ids.generate_trace_id()
            if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._root_bound:
                span_id = self._ids.generate_span_id()
                return NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(0), DEFAULT_TRACE_STATE))
            span_context = _span_context(trace_id, self._ids.generate_span_id(), DEFAULT_TRACE_STATE)
            return FastSpan(self, name, span_context, None, kind, attributes or {})
        else:
            parent_span = trace.get_current_span(context)
            parent = parent_span.get_span_context()
            trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
            result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
            state = result.trace_state
            if not result.decision.is_sampled():
                return NonRecordingSpan(
                    SpanContext(trace_id, self._ids.generate_span_id(), False, TraceFlags(0), state)
                )
            if result.attributes:
                attributes = {**result.attributes, **(attributes or {})}
        span_context = _span_context(trace_id, self._ids.generate_span_id(), state)
        return FastSpan(self, name, span_context, parent if parent.is_valid else None, kind, attributes or {})


# --- trace context to the upstream ------------------------------------------------------------------------------

_default_textmap: list[Any] = [None, False]  # [the global propagator last seen, whether it is the default one]


def _is_default(textmap: Any) -> bool:
    """Whether `textmap` is the SDK's default: W3C trace context, then W3C baggage (`OTEL_PROPAGATORS` unset)."""
    propagators = getattr(textmap, "_propagators", None)
    return (
        isinstance(textmap, CompositePropagator)
        and isinstance(propagators, list)
        and [type(p) for p in propagators] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )


def inject_current(headers: dict[str, str]) -> None:
    """`opentelemetry.propagate.inject(headers)`, for the current span: with the default propagators and one of our
    spans current, the same `traceparent`/`tracestate` written directly (the generic path costs several us)."""
    textmap = propagate.get_global_textmap()
    if textmap is not _default_textmap[0]:
        _default_textmap[:] = [textmap, _is_default(textmap)]
    current = get_current()
    span = current.get(_SPAN_KEY)
    if not _default_textmap[1] or type(span) is not FastSpan:
        textmap.inject(headers)
        return
    context = span._context
    # Ours are sampled; %-formatting takes half the time of an f-string with format specs here.
    headers["traceparent"] = "00-%032x-%016x-01" % (context.trace_id, context.span_id)  # noqa: UP031
    state = context.trace_state
    if state is not DEFAULT_TRACE_STATE and state:
        headers["tracestate"] = state.to_header()
    if current.get(_BAGGAGE_KEY):
        textmap._propagators[1].inject(headers)


# --- OTLP protobuf encoding --------------------------------------------------------------------------------------

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_KIND = {
    kind: b"\x30" + bytes((number,))
    for kind, number in (
        (SpanKind.INTERNAL, 1),
        (SpanKind.SERVER, 2),
        (SpanKind.CLIENT, 3),
        (SpanKind.PRODUCER, 4),
        (SpanKind.CONSUMER, 5),
    )
}
# Encoded attributes, by tag, then key, then (type, value) for numbers and bools (True == 1 == 1.0) or the value for
# strings and tuples of strings: most repeat from one request to the next. A key's values stop being added once it
# has MAX_VALUES_PER_KEY of them (request ids, response ids: unique, so not worth keeping).
_encoded: dict[bytes, dict[str, dict[Any, bytes]]] = {}
MAX_VALUES_PER_KEY = 64
_names: dict[bytes, dict[str, bytes]] = {}  # span and event names by tag, encoded
MAX_NAMES = 1024
_SMALL = [bytes((n,)) for n in range(128)]
_STATUS_UNSET = b"\x7a\x00"
_FLAGS = (b"\x85\x01" + _fixed32(0x100), b"\x85\x01" + _fixed32(0x300))  # parent local / remote


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
    by_key = _encoded.get(tag)
    if by_key is None:
        by_key = _encoded[tag] = {}
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            lookup: Any = value
        elif kind is int or kind is bool:
            lookup = (kind, value)
        elif kind is float:
            lookup = (kind, value.hex())  # -0.0 == 0.0, but not in protobuf
        elif kind is tuple and all(type(item) is str for item in value):
            lookup = value
        else:
            lookup = None
        values = by_key.get(key)
        if lookup is not None and values is not None:
            encoded = values.get(lookup)
            if encoded is not None:
                out.append(encoded)
                continue
        try:
            body = _key_value(key, value)
        except TypeError as exc:
            log.warning("span attribute %s not exported: %s", key, exc)
            continue
        encoded = tag + _varint(len(body)) + body
        if lookup is not None:
            if values is None:
                values = by_key[key] = {}
            if len(values) < MAX_VALUES_PER_KEY:
                values[lookup] = encoded
        out.append(encoded)
    return b"".join(out)


def _name(tag: bytes, name: str) -> bytes:
    names = _names.get(tag)
    if names is None:
        names = _names[tag] = {}
    encoded = names.get(name)
    if encoded is None:
        encoded = _text(tag, name)
        if len(names) < MAX_NAMES:
            names[name] = encoded
    return encoded


def _flags(parent: SpanContext | None) -> int:
    return 0x300 if parent is not None and parent.is_remote else 0x100


def _trace_state(state: Any) -> str:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


def _head(context: SpanContext, parent: SpanContext | None, name: str, kind: SpanKind) -> list[bytes]:
    """A `Span` message's first fields: ids, trace state, parent, name, kind."""
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08" + context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        parts.append(_text(b"\x1a", _trace_state(context.trace_state)))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_name(b"\x2a", name))
    parts.append(_KIND[kind])
    return parts


def _status(status: Status) -> bytes:
    code = status.status_code.value
    if not code and not status.description:
        return _STATUS_UNSET
    body = _text(b"\x12", status.description) if status.description else b""
    if code:
        body += b"\x18" + _varint(code)
    return _field(b"\x7a", body)


def _finished(span: FastSpan) -> bytes:
    """`_span` for the proxy's own spans, from their fields (no links, nothing dropped)."""
    parent = span._parent
    parts = _head(span._context, parent, span._name, span._kind)
    parts.append(b"\x39" + _fixed64(span._start_time) + b"\x41" + _fixed64(span._end_time))
    parts.append(_attributes(b"\x4a", span._attributes))
    for event in span._events:
        body = b"\x09" + _fixed64(event.timestamp) + _name(b"\x12", event.name) + _attributes(b"\x1a", event.attributes)
        parts.append(_field(b"\x5a", body))
    parts.append(_status(span._status))
    parts.append(_FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    parent = span.parent
    parts = _head(span.context, parent, span.name, span.kind)
    if span.start_time:
        parts.append(b"\x39" + _fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _fixed64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp) + _name(b"\x12", event.name) + _attributes(b"\x1a", event.attributes)
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
    parts.append(_status(span.status))
    parts.append(_FLAGS[parent is not None and parent.is_remote])
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
    # Grouped by the resource's identity: hashing a `Resource` serializes it, too slow to do once per span; a run of
    # spans with the same scope object (the usual case) hashes it once.
    grouped: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    last_resource: Any = None
    last_scope: Any = None
    encoded: list[bytes] = []
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        if resource is not last_resource or scope is not last_scope:
            entry = grouped.get(id(resource))
            if entry is None:
                entry = grouped[id(resource)] = (resource, {})
            encoded = entry[1].setdefault(scope, [])
            last_resource, last_scope = resource, scope
        body = _finished(span) if type(span) is FastSpan else _span(span)
        encoded.append(b"\x12" + _varint(len(body)) + body)
    out = []
    for resource, scopes in grouped.values():
        body = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
        for scope, items in scopes.items():
            scope_spans = _field(b"\x0a", _scope(scope)) + b"".join(items)
            if scope is not None and scope.schema_url:
                scope_spans += _text(b"\x1a", scope.schema_url)
            body += _field(b"\x12", scope_spans)
        if resource.schema_url:
            body += _text(b"\x1a", resource.schema_url)
        out.append(_field(b"\x0a", body))
    return b"".join(out)


ENCODE_CHUNK = 128  # spans encoded per hold of the GIL by the exporter's thread


def _encode_yielding(spans: Sequence[ReadableSpan]) -> bytes:
    """`encode_spans` in chunks, letting the event loop run between them: a batch of 2,048 spans would otherwise hold
    the GIL for several switch intervals at a time (tail latency). Concatenated requests are one request whose
    `resource_spans` are the chunks' (protobuf merges repeated fields)."""
    if len(spans) <= ENCODE_CHUNK:
        return encode_spans(spans)
    parts = []
    for start in range(0, len(spans), ENCODE_CHUNK):
        parts.append(encode_spans(spans[start : start + ENCODE_CHUNK]))
        time.sleep(0)  # releases the GIL
    return b"".join(parts)


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
            data = _encode_yielding(spans)
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
