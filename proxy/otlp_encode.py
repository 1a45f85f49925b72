"""OTLP span export without the stock encoder: finished spans written straight to an `ExportTraceServiceRequest`.

Why: the stock OTLP exporter builds one protobuf object per attribute (about 45 us per span on the reference
machine). `encode_spans()` writes the same message in protobuf bytes from the spans' fields (the proxy's `FastSpan`s
and the SDK's spans alike; a test compares the two encoders), caching the encodings of attributes that repeat from
one request to the next. `FastOTLPSpanExporter` sends those bytes with the stock OTLP/HTTP exporter's own client, so
endpoint, headers, TLS, compression, timeout and retries stay the exporter's (`OTEL_EXPORTER_OTLP_*`). When the
installed exporter has no such client (another version), it falls back to the stock `export()`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from math import copysign
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from proxy.otel_fast import _UNSET, FastSpan

__all__ = ["FastOTLPSpanExporter", "encode_spans"]

log = logging.getLogger(__name__)

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_times = struct.Struct("<BQBQ").pack  # a span's start and end: two fixed64 fields
_root_ids = struct.Struct(">2sQQ2sQ").pack  # trace id (two big-endian halves), span id
_child_ids = struct.Struct(">2sQQ2sQ2sQ").pack  # and the parent's span id
_LOW64 = (1 << 64) - 1
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
# Encoded attributes, by tag, then key (`_key_entry`: the key's own field, then its values by type, as True == 1 ==
# 1.0): most repeat from one request to the next. A key's values stop being added once it has MAX_VALUES_PER_KEY of
# them, of all types together (request ids, response ids: unique, so not worth keeping); a tag keeps MAX_KEYS keys.
# Never kept: prompt and answer text (`capture_content`), which must not outlive its request in memory, and any
# encoding over MAX_CACHED_BYTES.
_encoded: dict[bytes, dict[str, list[Any]]] = {}
MAX_KEYS = 1024  # keys kept per tag (the proxy's own are a few dozen)
MAX_VALUES_PER_KEY = 64
MAX_CACHED_BYTES = 512
_ZEROS = (object(), object())  # the cache keys of 0.0 and -0.0
_NOTHING: dict[Any, bytes] = {}  # the values of a key not kept (never written: its entry counts as full)
_CONTENT_KEYS = frozenset({"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"})
_names: dict[bytes, dict[str, bytes]] = {}  # span and event names by tag, encoded
_name_kinds: dict[str, tuple[SpanKind, bytes]] = {}  # by name (hashing a SpanKind calls Python code), with the kind
MAX_NAMES = 1024
_SMALL = [bytes((n,)) for n in range(128)]
_STATUS_UNSET = b"\x7a\x00"
_FLAGS = (b"\x85\x01" + _fixed32(0x100), b"\x85\x01" + _fixed32(0x300))  # parent local / remote
_UNSET_TAILS = (_STATUS_UNSET + _FLAGS[0], _STATUS_UNSET + _FLAGS[1])  # a span's last fields, status unset


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:  # lengths of spans and most messages: two bytes
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (valid in JSON, so in prompts and answers): protobuf wants UTF-8
        data = text.encode("utf-8", "replace")
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
        if not -(1 << 63) <= value < 1 << 63:  # the stock encoder drops such an attribute too
            raise TypeError(f"integer {value} is beyond int64")
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


def _key_entry(by_key: dict[str, list[Any]], key: str) -> list[Any]:
    """`key`'s cache entry: [its `KeyValue.key` field, {str, tuple-of-str and bool values}, {int values},
    {float values}, how many values it holds] (a bool never equals a str or tuple; an int and a float can equal a
    bool, so they are apart). Once the tag holds MAX_KEYS keys, an entry that keeps nothing and is not kept."""
    if len(by_key) >= MAX_KEYS:
        return [_text(b"\x0a", key), _NOTHING, _NOTHING, _NOTHING, MAX_VALUES_PER_KEY]
    entry = by_key[key] = [_text(b"\x0a", key), {}, {}, {}, 0]
    return entry


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated `KeyValue` fields under `tag`."""
    if not attributes:
        return b""
    by_key = _encoded.get(tag)
    if by_key is None:
        by_key = _encoded[tag] = {}
    out = []
    for key, value in attributes.items():
        entry = by_key.get(key) or _key_entry(by_key, key)
        kind, lookup = type(value), value
        if kind is str or kind is bool:
            values = entry[1]
            encoded = values.get(value)
        elif kind is int:
            values = entry[2]
            encoded = values.get(value)
        elif kind is float:
            values = entry[3]
            if not value:  # -0.0 == 0.0, but not in protobuf
                lookup = _ZEROS[copysign(1.0, value) < 0]
            encoded = values.get(lookup)
        elif kind is tuple:  # only tuples of str are kept, and only a tuple of str equals one
            values = entry[1]
            try:
                encoded = values.get(value)
            except TypeError:  # a tuple holding something unhashable
                encoded = values = None
        else:
            encoded = values = None
        if encoded is not None:
            out.append(encoded)
            continue
        try:
            body = entry[0] + _field(b"\x12", _value(value))
        except TypeError as exc:
            log.warning("span attribute %s not exported: %s", key, exc)
            continue
        encoded = tag + _varint(len(body)) + body
        if (
            values is not None
            and entry[4] < MAX_VALUES_PER_KEY
            and len(encoded) <= MAX_CACHED_BYTES
            and key not in _CONTENT_KEYS
            and (kind is not tuple or all(type(item) is str for item in value))
        ):
            values[lookup] = encoded
            entry[4] += 1
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


def _name_kind(name: str, kind: SpanKind) -> bytes:
    """A span's name and kind fields, encoded (cached: the proxy's span names repeat, each with its one kind)."""
    cached = _name_kinds.get(name)
    if cached is not None and cached[0] is kind:
        return cached[1]
    encoded = _text(b"\x2a", name) + _KIND[kind]
    if cached is None and len(_name_kinds) < MAX_NAMES:
        _name_kinds[name] = (kind, encoded)
    return encoded


def _head(context: SpanContext, parent: SpanContext | None, name: str, kind: SpanKind) -> list[bytes]:
    """A `Span` message's first fields: ids, trace state, parent, name, kind."""
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08" + context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        parts.append(_text(b"\x1a", _trace_state(context.trace_state)))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_name_kind(name, kind))
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
    """A `Span` field (tag, length, message) for one of the proxy's own spans, from its fields: no links, nothing
    dropped, its attribute block's bytes made once (`AttributeBlock`), ids and times packed in one call each."""
    context, parent = span._context, span._parent
    trace_id, span_id, _, _, state, _ = context  # a SpanContext is a tuple: unpacked, not through its properties
    if state is not DEFAULT_TRACE_STATE and state:  # a client's tracestate (rare): the general head
        parts = _head(context, parent, span._name, span._kind)
    else:
        high, low = trace_id >> 64, trace_id & _LOW64
        if parent is None:
            ids = _root_ids(b"\x0a\x10", high, low, b"\x12\x08", span_id)
        else:
            ids = _child_ids(b"\x0a\x10", high, low, b"\x12\x08", span_id, b"\x22\x08", parent[1])
        name, kind = span._name, span._kind
        cached = _name_kinds.get(name)
        parts = [ids, cached[1] if cached is not None and cached[0] is kind else _name_kind(name, kind)]
    parts.append(_times(0x39, span._start_time, 0x41, span._end_time))
    block, attributes = span._block, span._attributes
    if block is None:
        parts.append(_attributes(b"\x4a", attributes))
    elif attributes and not block.keys.isdisjoint(attributes):  # an own attribute replaces one of the block's
        parts.append(_attributes(b"\x4a", {**block.mapping, **attributes}))
    else:
        encoded = block.encoded
        if encoded is None:
            encoded = block.encoded = _attributes(b"\x4a", block.mapping)
        parts.append(encoded)
        if attributes:
            parts.append(_attributes(b"\x4a", attributes))
    for event in span._events:
        body = b"\x09" + _fixed64(event.timestamp) + _name(b"\x12", event.name) + _attributes(b"\x1a", event.attributes)
        parts.append(_field(b"\x5a", body))
    status, remote = span._status, parent is not None and parent[2]  # parent.is_remote, without the property
    if status is _UNSET:
        parts.append(_UNSET_TAILS[remote])
    else:
        parts.append(_status(status))
        parts.append(_FLAGS[remote])
    parts[0] = b"\x12" + _varint(sum(map(len, parts))) + parts[0]
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
        if type(span) is FastSpan:
            encoded.append(_finished(span))
        else:
            body = _span(span)
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


class FastOTLPSpanExporter(SpanExporter):
    """The stock OTLP/HTTP span exporter with `encode_spans` as its encoder (see the module docstring). `send()` posts
    bytes already encoded: proxy/span_batches.py, which serves it, encodes as spans come, in paced chunks. `export()`
    (the `SpanExporter` interface, for any other processor) encodes a batch at once, then sends."""

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
        return SpanExportResult.SUCCESS if self.send(data, len(spans)) else SpanExportResult.FAILURE

    def export_stock(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The stock exporter's own `export()` (encoder included), for spans `encode_spans` could not write."""
        return self._inner.export(spans)

    def send(self, data: bytes, count: int) -> bool:
        """Post `data`, an encoded `ExportTraceServiceRequest` of `count` spans, with the stock exporter's client and
        checks; False (and a warning) when it was not delivered."""
        if getattr(self._inner, "_shutdown", False):  # the stock export's own checks, where it has them
            log.warning("span exporter already shut down: %d spans not exported", count)
            return False
        limit = getattr(self._inner, "_max_request_size", 0)
        if isinstance(limit, int) and 0 < limit < len(data):
            log.warning("%d spans not exported: %d bytes exceed the exporter's max_request_size", count, len(data))
            return False
        result = self._post(data)  # type: ignore[misc]
        if getattr(result, "success", False):
            return True
        log.warning("span export failed: %s", getattr(result, "reason", None) or getattr(result, "status_code", None))
        return False

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
