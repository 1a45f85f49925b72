"""What the fronts may log about a failure whose message they send on to the client: its class, kind and status.

    log.warning("stream failed after its first chunk: %s", failure_summary(error))
    # -> "StreamInterrupted (kind interrupted, status 502, provider ant) from UpstreamOverloaded (kind overloaded,
    #    status 503, upstream status 529, provider ant)"

Never the message: an upstream's error text can quote the prompt (or worse), and the client already has it. Only
values the proxy chose are written: the exception class, an upstream failure's `ErrorKind`, the HTTP
status (the proxy's, and the upstream's when it gave one) and the provider's name in the config.
"""

from __future__ import annotations

from proxy.errors import ProxyError, UpstreamError


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    if not isinstance(error, ProxyError):
        return name
    details = [f"status {error.status_code}"]
    if isinstance(error, UpstreamError):
        details.insert(0, f"kind {error.kind.value}")
        if isinstance(error.status, int) and error.status != error.status_code:
            details.append(f"upstream status {error.status}")
        details.append(f"provider {error.provider}")
    return f"{name} ({', '.join(details)})"


def failure_summary(error: BaseException) -> str:
    """`error` (and its direct cause) as class, kind, status and provider; see the module docstring."""
    summary = _describe(error)
    cause = error.__cause__
    if cause is not None and cause is not error:
        summary += f" from {_describe(cause)}"
    return summary
