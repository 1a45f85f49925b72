"""How a request's outcome is written down besides the metrics: its request span (`proxy.spans`, only with traces
on) and its one info line (`proxy.logs.log_request`). The engine (proxy/engine.py) calls these once per
request, when it succeeds, fails or its client goes away."""

from __future__ import annotations

import logging

from proxy import logs, telemetry
from proxy.runtime import Runtime
from proxy.spans import RequestTrace, error_type
from proxy.types import ChatRequest, ChatResponse

__all__ = ["is_cancellation", "note_failure", "note_success", "start_trace"]

_request_log = logs.REQUEST_LOG
_INFO = logging.INFO


def start_trace(request: ChatRequest, runtime: Runtime, *, stream: bool) -> RequestTrace | None:
    tracing = telemetry.active()
    if tracing is None:
        return None
    return RequestTrace(tracing, request, stream=stream, runtime=runtime)


def note_success(response: ChatResponse, trace: RequestTrace | None, *, stream: bool) -> None:
    """The request's outcome on its span and in its log line."""
    if trace is not None:
        trace.succeeded(response)
    if _request_log.isEnabledFor(_INFO):
        usage = response.usage
        logs.log_request(
            model=response.route,
            status="ok",
            latency_ms=response.latency_ms,
            provider=response.provider or None,
            upstream_model=response.model or None,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cached=response.cached,
            stream=stream,
            attempts=len(response.attempts),
            trace_id=trace.trace_id if trace is not None else None,
        )


def is_cancellation(error: BaseException) -> bool:
    """Whether `error` ending a request means its client went away (cancellation, a closed stream), not a failure."""
    return not isinstance(error, Exception)


def note_failure(
    error: BaseException,
    request: ChatRequest,
    runtime: Runtime,
    started: float,
    trace: RequestTrace | None,
    *,
    stream: bool,
    truncated: bool = False,
) -> None:
    if trace is not None:
        trace.failed(error, truncated=truncated)
    if _request_log.isEnabledFor(_INFO):
        attempts = getattr(error, "attempts", None) or ()
        provider, _, model = attempts[-1].target.partition("/") if attempts else (None, "", None)
        status = "cancelled" if is_cancellation(error) else error_type(error)
        logs.log_request(
            model=request.model or runtime.config.defaults.model,
            status="truncated" if truncated else status,
            latency_ms=(runtime.clock() - started) * 1000,
            provider=provider,
            upstream_model=model,
            stream=stream,
            attempts=len(attempts),
            trace_id=trace.trace_id if trace is not None else None,
        )
