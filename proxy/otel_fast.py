"""A lean path for the proxy's per-request spans.

Why: the OTel SDK's `Tracer.start_span` checks every attribute and builds a general-purpose span (20-30 us each on the
reference machine); at four spans per proxied request that more than doubled the CPU a request costs. The proxy's
own spans hold only values it builds itself (str, int, float, bool, tuples of str), so they can skip it:

- `Recorder.start()` makes a `FastSpan`, a plain API span over a dict that is also an SDK `ReadableSpan`; `end()`
  hands it to the provider's span processors, so batch, simple, in-memory and console exporters all work unchanged. The
  provider's sampler decides for a span whose parent is not one of ours (a root, a client's `traceparent`, the MCP
  SDK's span); a child of a `FastSpan` is recorded like its parent. Ids come from the provider's id generator. Not
  applied to these spans: span limits and processors' `on_start` (the batch and simple processors do nothing there).
  A provider that is not the SDK's gets ordinary spans from its tracer. `Recorder.child()` starts a span under a
  given one without building a `Context` for it; `Recorder.record()` makes and finishes one in a single call.
- An `AttributeBlock` holds the attributes that never change for one target, plan, route or config version; a span
  started with one reports them before its own, and the encoder writes the block's bytes made once.
- `traced_headers()` writes the current span's `traceparent` directly when the propagators are the default ones.

Their OTLP encoding is proxy/otlp_encode.py.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
from collections.abc import Mapping
from contextvars import ContextVar
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = [
    "SPAN_KEY",
    "AttributeBlock",
    "FastSpan",
    "Recorder",
    "current_context",
    "enter_span",
    "leave_span",
    "traced_headers",
]

log = logging.getLogger(__name__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_INTERNAL = SpanKind.INTERNAL  # an enum member read through its class costs a descriptor call
# The key under which a `Context` holds its span, found through the public API (the constant itself is private).
SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_BAGGAGE_KEY = next(iter(baggage.set_baggage("k", "v", Context())))  # where a `Context` holds its baggage
# The context variable behind the OTel API's current context, when the runtime context is the default one
# (contextvars); None otherwise (`OTEL_PYTHON_CONTEXT` named another), and then the API's own calls are used.
_runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_CURRENT: ContextVar[Context] | None = getattr(_runtime, "_current_context", None)
if not isinstance(_CURRENT, ContextVar):
    _CURRENT = None
# The current `Context`: `opentelemetry.context.get_current` minus its two layers of calls, when it can.
current_context = get_current if _CURRENT is None else _CURRENT.get
_set_item = dict.__setitem__


def _lone_batch(processors: Any) -> Any:
    """The batch behind a lone `BatchSpanProcessor` among `processors`, when it has the fields `Recorder.finished`
    uses; else None."""
    if not (isinstance(processors, tuple) and len(processors) == 1 and type(processors[0]) is BatchSpanProcessor):
        return None
    batch = getattr(processors[0], "_batch_processor", None)
    try:
        fields = (batch._queue, batch._shutdown, batch._worker_awaken.is_set, batch.emit)  # type: ignore[union-attr]
        limit, size = batch._max_queue_size, batch._max_export_batch_size  # type: ignore[union-attr]
    except AttributeError:
        return None
    if type(fields[0]) is not collections.deque or not isinstance(limit, int) or not isinstance(size, int):
        return None
    return batch


def _lone_enqueue(processors: Any) -> Any:
    """The `enqueue` of a lone `EncodingSpanProcessor` among `processors`, else None."""
    from proxy.span_batches import EncodingSpanProcessor  # it imports this module (through otlp_encode)

    if isinstance(processors, tuple) and len(processors) == 1 and type(processors[0]) is EncodingSpanProcessor:
        return processors[0].enqueue
    return None


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


class AttributeBlock:
    """Span attributes that repeat unchanged from one request to the next (a target's GenAI attributes, a route's
    name and strategy), made once. A `FastSpan` started with one reports them first, then its own (an own attribute
    with the same key wins), and the encoder writes the block's bytes once made (`encoded`, filled by
    proxy/otlp_encode.py) instead of encoding each attribute again."""

    __slots__ = ("encoded", "keys", "mapping")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.mapping: dict[str, Any] = dict(attributes)
        self.keys = frozenset(self.mapping)
        self.encoded: bytes | None = None


_NO_EVENTS: tuple[Event, ...] = ()
MAX_BLOCK_PAIRS = 256  # combined blocks kept per cache (FastSpan.extend_block)
_MISSING = object()


class FastSpan(trace.Span, ReadableSpan):
    """A recording span of the proxy's, and once ended its own `ReadableSpan` (as the SDK's `Span` is): its fields
    have the base class's names. Plain attributes and events, no links, so nothing is ever dropped (the base class
    would ask each container, three ABC checks per span). Changes after `end()` are ignored."""

    __slots__ = (
        "_attributes",
        "_block",
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
        block: AttributeBlock | None = None,
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._block = block
        self._events: list[Event] | tuple[Event, ...] = _NO_EVENTS  # a list from the first event on
        self._status = _UNSET
        self._start_time = time_ns()
        self._end_time: int | None = None

    @property
    def resource(self) -> Any:
        return self._recorder.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._recorder.scope

    @property
    def attributes(self) -> Mapping[str, Any]:
        block = self._block
        return MappingProxyType(self._attributes if block is None else {**block.mapping, **self._attributes})

    def get_span_context(self) -> SpanContext:
        return self._context

    def to_json(self, indent: int | None = 4) -> str:
        """The SDK's JSON (the console exporter's), with the block's attributes: the base class reads the span's own
        attributes field only."""
        if self._block is None:
            return super().to_json(indent)
        whole = ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self._parent,
            resource=self.resource,
            attributes=self.attributes,
            events=self._events,
            kind=self._kind,
            status=self._status,
            start_time=self._start_time,
            end_time=self._end_time,
            instrumentation_scope=self.instrumentation_scope,
        )
        return whole.to_json(indent)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def extend_block(self, extra: AttributeBlock, cache: dict[Any, Any]) -> bool:
        """Add `extra`'s attributes to the span's block: a block of both, made once per pair and kept in `cache`
        (bounded); False when the span has ended."""
        if self._end_time is not None:
            return False
        base = self._block
        if base is None:
            self._block = extra
            return True
        combined = cache.get((base, extra))
        if combined is None:
            if len(cache) >= MAX_BLOCK_PAIRS:
                cache.clear()
            combined = cache[base, extra] = AttributeBlock({**base.mapping, **extra.mapping})
        self._block = combined
        return True

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            if self._events is _NO_EVENTS:
                self._events = []
            self._events.append(Event(name, dict(attributes) if attributes else None, timestamp or time_ns()))  # type: ignore[union-attr]

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        pass  # the proxy's spans have no links

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET is never set (it cannot take back an ERROR)
        code = status.status_code if isinstance(status, Status) else status
        if self._end_time is not None or self._status.status_code is StatusCode.OK or code is StatusCode.UNSET:
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
        self._end_time = end_time or time_ns()
        recorder = self._recorder
        # `Recorder.finished` minus a call, for the usual processor; `_batch_for` read before `_enqueue`, the reverse
        # of the order `finished` writes them in, so a span ended during a change never takes a stale `_enqueue`
        if recorder._processors._span_processors is recorder._batch_for and (enqueue := recorder._enqueue) is not None:
            enqueue(self)
        else:
            recorder.finished(self)


class _NoProcessors:
    """`Recorder._processors` when the provider's multi-processor has no `_span_processors`: every span goes to its
    `on_end`."""

    _span_processors = None


class Recorder:
    """Starts `FastSpan`s for one SDK `TracerProvider` (its sampler, id generator, resource and span processors).

    A finished span goes to the provider's span processors; when the only one is a `BatchSpanProcessor`, straight
    into its queue (what its `on_end` does for a sampled span, which ours always are, minus two calls and checks)."""

    __slots__ = (
        "_batch",
        "_batch_for",
        "_enqueue",
        "_ids",
        "_multi",
        "_processors",
        "_root_bound",
        "_sampler",
        "_span_id",
        "_trace_id",
        "resource",
        "scope",
    )

    def __init__(self, provider: TracerProvider, scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._root_bound = _ratio_root_bound(provider.sampler)
        self._ids = provider.id_generator
        # The default generator's ids, minus its call and loop (a zero id, invalid, is drawn again by the generator).
        default = type(self._ids) is RandomIdGenerator
        self._span_id = functools.partial(random.getrandbits, 64) if default else self._ids.generate_span_id
        self._trace_id = functools.partial(random.getrandbits, 128) if default else self._ids.generate_trace_id
        self.resource = provider.resource
        self._multi = provider._active_span_processor  # the SDK's one entry point for finished spans
        # What holds the tuple of processors (`_span_processors`): the SDK's multi-processor, or a stand-in with none
        self._processors = self._multi if hasattr(self._multi, "_span_processors") else _NoProcessors
        self._batch_for: Any = None  # the processors tuple `_batch` was found for
        self._batch: Any = None
        self._enqueue: Any = None
        self.scope = scope

    def finished(self, span: FastSpan) -> None:
        """Hand `span` to the provider's processors. A lone `EncodingSpanProcessor` (proxy/span_batches.py) gets it
        through its `enqueue` (our spans are sampled). A lone `BatchSpanProcessor` gets it straight into its queue:
        what its `emit` does, minus its fork check (`os.getpid()`, a system call on every span). A forked child is
        still covered: the processor re-initialises itself through `os.register_at_fork`, and the queue and event
        are read from it on every call. A full queue or a shut-down processor take `emit` itself (its warning, its
        dropped count)."""
        processors = self._processors._span_processors
        if processors is not self._batch_for:  # first span, or a processor was added
            self._batch = _lone_batch(processors)
            self._enqueue = _lone_enqueue(processors)
            self._batch_for = processors
        enqueue = self._enqueue
        if enqueue is not None:
            enqueue(span)
            return
        batch = self._batch
        if batch is None:
            self._multi.on_end(span)
            return
        queue = batch._queue
        if batch._shutdown or len(queue) >= batch._max_queue_size:
            batch.emit(span)
            return
        queue.appendleft(span)
        if len(queue) >= batch._max_export_batch_size and not (awaken := batch._worker_awaken).is_set():
            awaken.set()

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
        block: AttributeBlock | None = None,
    ) -> trace.Span:
        """A span under `context`'s span (default: the current one) with `block`'s attributes, then `attributes`
        (taking ownership of the dict)."""
        parent_span = (context if context is not None else current_context()).get(SPAN_KEY)
        if type(parent_span) is FastSpan:  # ours, so recorded: so is its child
            return self.child(name, parent_span, kind, attributes, block)
        if parent_span is None and self._root_bound is not None:  # a root under the default sampler
            trace_id = self._trace_id() or self._ids.generate_trace_id()  # 0 is invalid: drawn again
            if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._root_bound:
                span_id = self._ids.generate_span_id()
                return NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(0), DEFAULT_TRACE_STATE))
            span_id = self._span_id() or self._ids.generate_span_id()
            span_context = tuple.__new__(SpanContext, (trace_id, span_id, False, _SAMPLED, DEFAULT_TRACE_STATE, True))
            return FastSpan(self, name, span_context, None, kind, attributes or {}, block)
        parent = trace.get_current_span(context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
        seen = attributes if block is None else {**block.mapping, **(attributes or {})}
        result = self._sampler.should_sample(context, trace_id, name, kind, seen)
        state = result.trace_state
        if not result.decision.is_sampled():
            return NonRecordingSpan(SpanContext(trace_id, self._ids.generate_span_id(), False, TraceFlags(0), state))
        if result.attributes:  # samplers echo the attributes they were given: keep only what they add
            given = seen or {}
            added = {key: value for key, value in result.attributes.items() if given.get(key, _MISSING) != value}
            if added:
                attributes = {**added, **(attributes or {})}
        span_context = _span_context(trace_id, self._ids.generate_span_id(), state)
        return FastSpan(self, name, span_context, parent if parent.is_valid else None, kind, attributes or {}, block)

    def record(
        self,
        name: str,
        parent: trace.Span,
        started: int,
        attributes: dict[str, Any] | None = None,
        block: AttributeBlock | None = None,
    ) -> None:
        """An INTERNAL span under `parent` that began at `started` (`time.time_ns()`) and ends now, made and finished
        in one call (a span nothing happens under, such as a routing decision)."""
        span = self.child(name, parent, _INTERNAL, attributes, block)
        if type(span) is FastSpan:
            span._start_time = started
        span.end()

    def child(
        self,
        name: str,
        parent: trace.Span,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        block: AttributeBlock | None = None,
    ) -> trace.Span:
        """`start` under `parent`, without making a `Context` for it when it is one of ours."""
        if type(parent) is not FastSpan:
            return self.start(name, trace.set_span_in_context(parent), kind, attributes, block)
        context = parent._context
        span_id = self._span_id() or self._ids.generate_span_id()  # 0 is the invalid id (one chance in 2**64)
        ours = tuple.__new__(SpanContext, (context[0], span_id, False, _SAMPLED, context[4], True))  # _span_context
        return FastSpan(self, name, ours, context, kind, attributes or {}, block)  # type: ignore[arg-type]


# --- the current span ----------------------------------------------------------------------------------------------


def enter_span(span: trace.Span) -> object:
    """Make `span` the current span: `context.attach(trace.set_span_in_context(span))`, without the API's layers of
    calls (a third of the cost) when the runtime context is the default one. Undo with `leave_span`."""
    if _CURRENT is None:
        return otel_context.attach(trace.set_span_in_context(span))
    values = Context(_CURRENT.get())  # one copy (the API makes two: a dict, then the Context of it)
    _set_item(values, SPAN_KEY, span)  # as a dict: a Context refuses item assignment
    return _CURRENT.set(values)


def leave_span(token: object) -> None:
    """Undo `enter_span`: `context.detach(token)`, which logs (not raises) a token it cannot reset."""
    if _CURRENT is None:
        otel_context.detach(token)  # type: ignore[arg-type]
        return
    try:
        _CURRENT.reset(token)  # type: ignore[arg-type]
    except Exception:  # a token from another context, or used twice: logged, as `context.detach` does
        log.exception("failed to detach the span's context")


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


def traced_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """A copy of `headers` with the current span's trace context, as `opentelemetry.propagate.inject` writes it; None
    when no valid span is current. With the default propagators and one of our spans current, the same
    `traceparent`/`tracestate` are written directly (the generic path costs several us)."""
    current = current_context()
    span = current.get(SPAN_KEY)
    if type(span) is not FastSpan:
        if span is None or not span.get_span_context().is_valid:
            return None
        traced = dict(headers)
        propagate.inject(traced, current)
        return traced
    textmap = propagate.get_global_textmap()
    if textmap is not _default_textmap[0]:
        _default_textmap[:] = [textmap, _is_default(textmap)]
    traced = dict(headers)
    if not _default_textmap[1]:
        textmap.inject(traced, current)
        return traced
    trace_id, span_id, _, _, state, _ = span._context  # a tuple: unpacked, not read through its properties
    # Ours are sampled; %-formatting takes half the time of an f-string with format specs here.
    traced["traceparent"] = "00-%032x-%016x-01" % (trace_id, span_id)  # noqa: UP031
    if state is not DEFAULT_TRACE_STATE and state:
        traced["tracestate"] = state.to_header()
    if current.get(_BAGGAGE_KEY):
        textmap._propagators[1].inject(traced, current)
    return traced
