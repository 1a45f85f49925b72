"""The spans of one client request, made only when traces are on (`proxy.telemetry.active()` is not None):

    tools/call complete_text   SERVER: the MCP SDK's own
      proxy.request            INTERNAL: the request as the engine saw it, its outcome
        proxy.route            INTERNAL: one per model plan reached: strategy, candidate order, unavailable targets
        chat {model}           CLIENT: one per upstream attempt, the GenAI semantic-convention attributes

Over HTTP the request span is the front's SERVER span `POST /v1/chat/completions` (ProxyMiddleware offers it in
`telemetry.server_span`; the first request trace under it takes the offer, and adopts the span if it is the current
one and not ended): one span per HTTP request, as DESIGN.md says, instead of a SERVER span and an INTERNAL one of
the same length (which cost a fifth of tracing's CPU). The middleware ends it and sets the answer's status code; a
failure answered with a 4xx leaves its status unset (HTTP semantic conventions), `error.type` says what went wrong.
Anywhere else (MCP, the CLI, a second engine request under one HTTP request) the request span is a new
`proxy.request` under the current span.

Events on the request span make the walk visible: `proxy.cache.hit`, `proxy.ratelimit.wait`, `proxy.target.skipped`
(breaker open, disabled, cannot fit, rate limited), `proxy.retry` (with the backoff), `proxy.fallback`,
`proxy.breaker.open` (a failure tripped a breaker). Attempt spans carry the GenAI attributes
(PROTOCOLS.md section 6) plus `proxy.attempt`, `proxy.fallback_index` (targets tried before this one),
`proxy.ratelimit.wait_ms`, `proxy.provider`/`proxy.target` (config names), `proxy.stream.truncated`.

Nothing here records prompt or answer text unless `capture_content` is on (then `gen_ai.input.messages`,
`gen_ai.system_instructions`, `gen_ai.output.messages` as JSON strings). The same goes for error messages, which
quote the upstream's and so may echo the prompt: a failed span's status says only the error's class (and HTTP
status) unless content is captured, and even then passes through `proxy.logs.redact`.

Spans are ended explicitly and never made current across an `await` of the caller's, so a stream read from several
tasks keeps a consistent tree; the dispatch makes an attempt span current only while its call runs (so the
transport sends its `traceparent`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from proxy.errors import ProxyError
from proxy.logs import redact, request_id
from proxy.metrics import genai_provider_name
from proxy.otel_fast import SPAN_KEY, AttributeBlock, FastSpan, current_context, enter_span, leave_span
from proxy.policies.retry import error_label
from proxy.runtime import ModelPlan, PlannedTarget, Runtime
from proxy.telemetry import Tracing, server_span
from proxy.types import ChatRequest, ChatResponse, Message, Usage

__all__ = ["RequestTrace", "error_type"]

MAX_STATUS_TEXT = 500
MAX_CACHED_ORDERS = 64  # candidate orders (their labels) kept per model plan
_servers: dict[str, tuple[str, int] | None] = {}
_CLIENT = SpanKind.CLIENT  # an enum member read through its class costs a descriptor call


def error_type(error: BaseException) -> str:
    """`error.type`: the proxy's error kind (`timeout`, `rate_limited`, `server`...), else the class name."""
    return error_label(error) if isinstance(error, ProxyError) else type(error).__qualname__


def _server(provider: object) -> tuple[str, int] | None:
    """`server.address`/`server.port` of an HTTP provider (from its codec's URL), None for in-process ones."""
    url = getattr(getattr(provider, "codec", None), "url", None)
    if not isinstance(url, str):
        return None
    found = _servers.get(url)
    if found is None and url not in _servers:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        found = _servers[url] = (parts.hostname, port) if parts.hostname else None
    return found


def _target_attributes(target: PlannedTarget, request: ChatRequest) -> dict[str, Any]:
    """An attempt span's attributes that depend only on its target (and whether the request streams)."""
    assert target.bound is not None
    provider = target.bound.provider
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": genai_provider_name(provider.type),
        "gen_ai.request.model": target.model,
        "gen_ai.request.stream": request.stream,
        "proxy.provider": target.provider,
        "proxy.target": target.label,
    }
    server = _server(provider)
    if server is not None:
        attributes["server.address"], attributes["server.port"] = server
    return attributes


def _parts(message: Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = message.text()
    if text:
        parts.append({"type": "text", "content": text})
    for call in message.tool_calls:
        parts.append({"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments})
    if message.role == "tool":
        parts = [{"type": "tool_call_response", "id": message.tool_call_id, "response": text}]
    return parts


def _input_messages(request: ChatRequest) -> dict[str, str]:
    system = [{"type": "text", "content": m.text()} for m in request.messages if m.role == "system"]
    messages = [{"role": m.role, "parts": _parts(m)} for m in request.messages if m.role != "system"]
    found = {"gen_ai.input.messages": json.dumps(messages, ensure_ascii=False)}
    if system:
        found["gen_ai.system_instructions"] = json.dumps(system, ensure_ascii=False)
    return found


def _output_messages(response: ChatResponse) -> str:
    parts: list[dict[str, Any]] = [{"type": "text", "content": response.text}] if response.text else []
    parts += [{"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls]
    message = {"role": "assistant", "parts": parts, "finish_reason": response.finish_reason or "stop"}
    return json.dumps([message], ensure_ascii=False)


def _usage(attributes: dict[str, Any], usage: Usage | None) -> None:
    if usage is None:
        return
    attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
    attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.cache_creation_input_tokens:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation_input_tokens
    if usage.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens


def _fail(
    span: trace.Span, error: BaseException, capture: bool, *, server: bool = False, truncated: bool = False
) -> None:
    """Record `error` on `span`. On the HTTP server span (`server`) the front sets the answer's status code, and a 4xx
    answer (unless the stream was cut after its 200) leaves the span's status unset (HTTP semantic conventions): the
    client's mistake or a limit, not ours."""
    span.set_attribute("error.type", error_type(error))
    status = getattr(error, "status", None)
    if server:
        if isinstance(status, int) and status < 500 and not truncated:
            return
    elif isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
    if capture and isinstance(error, ProxyError):
        text = redact(error.message[:MAX_STATUS_TEXT])
    else:
        text = type(error).__name__ + (f" (HTTP {status})" if isinstance(status, int) else "")
    span.set_status(Status(StatusCode.ERROR, text))


class RequestTrace:
    """The request span of one client request and the spans and events under it (module docstring): the HTTP
    server span when the front offers it (`telemetry.server_span`) and it is the current span, else a new
    `proxy.request` span under the current one."""

    __slots__ = ("capture", "child", "owned", "record", "span")

    def __init__(self, tracing: Tracing, request: ChatRequest, *, stream: bool, runtime: Runtime) -> None:
        self.child = tracing.start_child
        self.record = tracing.record_child
        self.capture = tracing.capture_content
        block = runtime.span_blocks.get(stream)
        if block is None:
            fixed = {"proxy.stream": stream, "proxy.config.version": runtime.config.version_hash}
            block = runtime.span_blocks[stream] = AttributeBlock(fixed)
        offered = server_span.get()
        if offered and current_context().get(SPAN_KEY) is (server := offered.pop()) and server.is_recording():
            self.owned = False
            self.span = server
            if type(server) is FastSpan and server.extend_block(block, runtime.server_span_blocks):  # still recording
                if request.model:
                    server._attributes["proxy.model.requested"] = request.model  # it has the request id already
                return
            server.set_attributes(block.mapping)
            if request.model:
                server.set_attribute("proxy.model.requested", request.model)
            return
        attributes: dict[str, Any] = {}
        if request.model:
            attributes["proxy.model.requested"] = request.model
        rid = request_id.get()
        if rid:
            attributes["proxy.request_id"] = rid
        self.owned = True
        self.span = tracing.start_span("proxy.request", None, SpanKind.INTERNAL, attributes, block)  # under the current

    @property
    def trace_id(self) -> str | None:
        span = self.span
        if type(span) is FastSpan:  # valid: read from its context tuple, not through properties
            return "%032x" % span._context[0]  # noqa: UP031 (twice as fast as an f-string here)
        context = span.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    # --- routing ----------------------------------------------------------------------------------------------

    def route(self, started: int, plan: ModelPlan, position: int, order: list[int], available: list[bool]) -> None:
        """The routing span of `plan` (the chain's `position`th), begun at `started` (`time.time_ns()`) and made now
        that routing is done: its candidate order and the targets unavailable."""
        fallback = position > 0
        if not fallback:
            span = self.span
            if type(span) is FastSpan and span._end_time is None:
                span._attributes["proxy.route"] = plan.model.name
            else:
                span.set_attribute("proxy.route", plan.model.name)
        block = plan.span_blocks.get(fallback)
        if block is None:
            attributes = {"proxy.route": plan.model.name, "proxy.routing.strategy": plan.model.strategy}
            if fallback:
                attributes["proxy.routing.fallback_model"] = True
            block = plan.span_blocks[fallback] = AttributeBlock(attributes)
        key = tuple(order)
        candidates = plan.span_orders.get(key)  # the labels of an order seen before (few: one per rotation)
        if candidates is None:
            candidates = tuple([plan.targets[index].label for index in order])
            if len(plan.span_orders) < MAX_CACHED_ORDERS:
                plan.span_orders[key] = candidates
        attributes = {"proxy.routing.candidates": candidates}
        if not all(available):
            unavailable = tuple(t.label for t, ok in zip(plan.targets, available, strict=True) if not ok)
            attributes["proxy.routing.unavailable"] = unavailable
        self.record("proxy.route", self.span, started, attributes, block)

    # --- attempts ---------------------------------------------------------------------------------------------

    def start_attempt(
        self, target: PlannedTarget, request: ChatRequest, *, attempt: int, fallback_index: int, waited: float
    ) -> trace.Span:
        """The CLIENT span of one upstream call; make it current (`enter`) while the call is sent."""
        named = target.span_blocks.get(request.stream)
        if named is None:
            block = AttributeBlock(_target_attributes(target, request))
            named = target.span_blocks[request.stream] = (f"chat {target.model}", block)
        name, block = named
        attributes: dict[str, Any] = {
            "proxy.attempt": attempt,
            "proxy.fallback_index": fallback_index,
            "proxy.ratelimit.wait_ms": waited * 1000.0,
        }
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.top_p is not None:
            attributes["gen_ai.request.top_p"] = request.top_p
        if request.seed is not None:
            attributes["gen_ai.request.seed"] = request.seed
        if request.stop:
            attributes["gen_ai.request.stop_sequences"] = tuple(request.stop)
        if self.capture:
            attributes.update(_input_messages(request))
        return self.child(name, self.span, _CLIENT, attributes, block)

    enter = staticmethod(enter_span)
    leave = staticmethod(leave_span)

    def attempt_succeeded(self, span: trace.Span, response: ChatResponse | None, usage: Usage | None) -> None:
        fast = type(span) is FastSpan and span._end_time is None  # its attributes written in place
        attributes: dict[str, Any] = span._attributes if fast else {}  # type: ignore[attr-defined]
        if response is not None:
            if response.model:
                attributes["gen_ai.response.model"] = response.model
            if response.id:
                attributes["gen_ai.response.id"] = response.id
            if response.finish_reason:
                attributes["gen_ai.response.finish_reasons"] = (response.finish_reason,)
            if self.capture:
                attributes["gen_ai.output.messages"] = _output_messages(response)
        _usage(attributes, usage)
        if not fast:
            span.set_attributes(attributes)
        span.end()

    def attempt_failed(
        self, span: trace.Span, error: BaseException, *, truncated: bool = False, breaker_opened: bool = False
    ) -> None:
        if truncated:
            span.set_attribute("proxy.stream.truncated", True)
        if breaker_opened:
            span.add_event("proxy.breaker.open")
        _fail(span, error, self.capture)
        span.end()

    # --- events on the request span -----------------------------------------------------------------------------

    def cache_hit(self, *, shared: bool = False) -> None:
        self.span.set_attribute("proxy.cache.hit", True)
        self.span.add_event("proxy.cache.hit", {"proxy.cache.shared": shared})

    def skipped(self, label: str, reason: str) -> None:
        self.span.add_event("proxy.target.skipped", {"proxy.target": label, "proxy.skip.reason": reason})

    def ratelimit_wait(self, label: str, waited: float, admitted: bool) -> None:
        attributes = {"proxy.target": label, "proxy.ratelimit.wait_ms": waited * 1000.0, "proxy.admitted": admitted}
        self.span.add_event("proxy.ratelimit.wait", attributes)

    def retry(self, label: str, attempt: int, error: ProxyError, delay: float) -> None:
        attributes = {
            "proxy.target": label,
            "proxy.attempt": attempt,
            "error.type": error_type(error),
            "proxy.backoff_ms": delay * 1000.0,
        }
        self.span.add_event("proxy.retry", attributes)

    def fallback(self, label: str, error: ProxyError) -> None:
        self.span.add_event("proxy.fallback", {"proxy.target": label, "error.type": error_type(error)})

    def breaker_opened(self, label: str) -> None:
        self.span.add_event("proxy.breaker.open", {"proxy.target": label})

    # --- the outcome ------------------------------------------------------------------------------------------

    def succeeded(self, response: ChatResponse) -> None:
        """The answer: who gave it (the attempt span has the details), or, for a cache hit, its usage."""
        span = self.span
        fast = type(span) is FastSpan and span._end_time is None  # its attributes written in place
        attributes: dict[str, Any] = span._attributes if fast else {}  # type: ignore[attr-defined]
        attributes["proxy.route"] = response.route
        attributes["proxy.cache.hit"] = response.cached
        attributes["proxy.attempts"] = len(response.attempts)
        attributes["proxy.provider"] = response.provider
        if response.cached:
            attributes["gen_ai.response.model"] = response.model
            _usage(attributes, response.usage)
        elif response.cost:
            attributes["proxy.cost_usd"] = response.cost
        if not fast:
            span.set_attributes(attributes)
        if self.owned:
            span.end()

    def failed(self, error: BaseException, *, truncated: bool = False) -> None:
        span = self.span
        if truncated:
            span.set_attribute("proxy.stream.truncated", True)
        attempts = getattr(error, "attempts", None)
        if attempts is not None:
            span.set_attribute("proxy.attempts", len(attempts))
        if isinstance(error, Exception):
            _fail(span, error, self.capture, server=not self.owned, truncated=truncated)
        else:  # cancelled (GeneratorExit, CancelledError): the client went away
            span.set_attribute("proxy.cancelled", True)
        if self.owned:
            span.end()
