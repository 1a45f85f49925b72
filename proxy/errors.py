"""The one error tree of the proxy.

Every failure the proxy can report is a `ProxyError`. Foreign exceptions (aiohttp, YAML, jsonschema, MCP,
Starlette) are translated into this tree at exactly one place each: the config loader, the upstream transport
and the fronts. Core code catches named classes from here, never bare `Exception`.

```
ProxyError(message)                              status_code, retryable
├── ConfigError(issues)                          the config file is invalid (startup, validate, reload)
├── RequestError                                 400: the client's request is wrong
│   ├── UnknownModel(name, known)                the model name is not in the config
│   └── TemplateError(template)                  a template failed to render
├── RateLimited(retry_after)                     429: our own bucket is empty
├── ProviderUnavailable(provider, reason)        503: the target's provider is disabled (or its breaker is open)
├── UpstreamError(provider, status, ...)         a provider failed; `kind` says how (table-driven policy)
│   ├── UpstreamConnectError                     kind=connect         retryable
│   ├── UpstreamTimeout(phase)                   kind=timeout         retryable (phase: connect|first_token|total)
│   ├── UpstreamRateLimited                      kind=rate_limited    retryable (429)
│   ├── UpstreamOverloaded                       kind=overloaded      retryable (529, 503)
│   ├── UpstreamServerError                      kind=server          retryable (500, 502, 504, other 5xx, 408, 409)
│   ├── UpstreamAuthError                        kind=auth            401: fall back, do not retry
│   ├── UpstreamPermissionError                  kind=permission      403: fall back, do not retry
│   ├── UpstreamNotFound                         kind=not_found       404: fall back, do not retry
│   ├── UpstreamBadRequest                       kind=bad_request     400/413/422: fail fast
│   │   ├── ContextLengthExceeded                kind=context_length  reroute to a larger context window
│   │   └── ContentFiltered                      kind=content_filter  fail fast
│   ├── UpstreamProtocolError                    kind=malformed       the reply is not the protocol (bad JSON/SSE)
│   └── StreamInterrupted(partial_text)          kind=interrupted     the stream ended before its terminal event
└── AllTargetsFailed(failures)                   every target of a model failed; lists each one's error
```
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ProxyError(Exception):
    """Base of every error the proxy reports. `status_code` is the HTTP status a front should use."""

    status_code: int = 500
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    line: int | None
    column: int | None
    path: str  # JSON-path-like: `providers.openai.limits.requests_per_minute`, `models.fast.targets[1]`
    message: str
    layer: str = "schema"  # yaml | env | schema | semantic | io

    def format(self) -> str:
        """`file:line:col: path: message`, leaving out what is unknown."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        path = f"{self.path}: " if self.path else ""
        return f"{where}: {path}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "layer": self.layer,
        }


class ConfigError(ProxyError):
    """The config is invalid. Carries every problem found, not just the first."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        lines = [issue.format() for issue in self.issues]
        count = len(lines)
        head = f"{count} problem{'s' if count != 1 else ''} in the config"
        super().__init__(head + ":\n" + "\n".join(lines) if lines else head)


# --- the client's request -------------------------------------------------------------------------------


class RequestError(ProxyError):
    """The client's request is wrong (bad arguments, unknown model, a template that cannot render)."""

    status_code = 400

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(RequestError):
    status_code = 404

    def __init__(self, name: str, known: Sequence[str], *, hint: str | None = None) -> None:
        self.name = name
        self.known = tuple(known)
        listing = ", ".join(f"`{k}`" for k in self.known) or "(none)"
        suffix = f"; {hint}" if hint else ""
        super().__init__(f"unknown model `{name}`; known models: {listing}{suffix}", param="model")


class TemplateError(RequestError):
    def __init__(self, message: str, *, template: str) -> None:
        super().__init__(message, param="template")
        self.template = template


class RateLimited(ProxyError):
    """Our own rate limit refused the request; `retry_after` is in seconds."""

    status_code = 429
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(ProxyError):
    """A target was skipped without a call: its provider is disabled (e.g. its key variable is unset)."""

    status_code = 503

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"provider `{provider}` is unavailable: {reason}")
        self.provider = provider
        self.reason = reason


# --- upstream providers ---------------------------------------------------------------------------------


class ErrorKind(enum.StrEnum):
    """How an upstream call failed. The retry/fallback policy is a table keyed by this."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER = "server"
    AUTH = "auth"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    MALFORMED = "malformed"
    INTERRUPTED = "interrupted"


class UpstreamError(ProxyError):
    """A provider failed. Subclasses fix `kind`; fields carry what the provider said."""

    kind: ErrorKind = ErrorKind.SERVER
    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        error_type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.error_type = error_type
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def describe(self) -> str:
        """One line for humans: `provider: kind (status): message`."""
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.provider}: {self.kind.value}{status}: {self.message}"


class UpstreamConnectError(UpstreamError):
    kind = ErrorKind.CONNECT
    retryable = True


class UpstreamTimeout(UpstreamError):
    kind = ErrorKind.TIMEOUT
    retryable = True
    status_code = 504

    def __init__(self, message: str, *, provider: str, phase: str, **kwargs: object) -> None:
        super().__init__(message, provider=provider, **kwargs)  # type: ignore[arg-type]
        self.phase = phase  # connect | first_token | total


class UpstreamRateLimited(UpstreamError):
    kind = ErrorKind.RATE_LIMITED
    retryable = True
    status_code = 429


class UpstreamOverloaded(UpstreamError):
    kind = ErrorKind.OVERLOADED
    retryable = True
    status_code = 503


class UpstreamServerError(UpstreamError):
    kind = ErrorKind.SERVER
    retryable = True


class UpstreamAuthError(UpstreamError):
    kind = ErrorKind.AUTH
    status_code = 502  # the proxy's credentials are wrong, not the client's


class UpstreamPermissionError(UpstreamError):
    kind = ErrorKind.PERMISSION
    status_code = 502


class UpstreamNotFound(UpstreamError):
    kind = ErrorKind.NOT_FOUND
    status_code = 502


class UpstreamBadRequest(UpstreamError):
    kind = ErrorKind.BAD_REQUEST
    status_code = 400


class ContextLengthExceeded(UpstreamBadRequest):
    kind = ErrorKind.CONTEXT_LENGTH


class ContentFiltered(UpstreamBadRequest):
    kind = ErrorKind.CONTENT_FILTER


class UpstreamProtocolError(UpstreamError):
    kind = ErrorKind.MALFORMED


class StreamInterrupted(UpstreamError):
    """The upstream stream stopped before its terminal event; `partial_text` is what had arrived."""

    kind = ErrorKind.INTERRUPTED
    retryable = True

    def __init__(self, message: str, *, provider: str, partial_text: str = "", **kwargs: object) -> None:
        super().__init__(message, provider=provider, **kwargs)  # type: ignore[arg-type]
        self.partial_text = partial_text


class AllTargetsFailed(ProxyError):
    """Every target of a model failed. `failures` is (target label, error) in the order tried."""

    status_code = 502

    def __init__(self, model: str, failures: Sequence[tuple[str, ProxyError]]) -> None:
        self.model = model
        self.failures = tuple(failures)
        reasons = "; ".join(f"{label}: {err}" for label, err in self.failures) or "no target was available"
        super().__init__(f"all targets of model `{model}` failed: {reasons}")
        statuses = {err.status_code for _, err in self.failures}
        if len(statuses) == 1:
            self.status_code = statuses.pop()
        self.attempts: tuple[Any, ...] = ()  # the engine sets the attempt history (`proxy.types.Attempt`s)

    @property
    def retry_after(self) -> float | None:
        """The soonest any failed target said it could take the request again (rate limits), else None."""
        waits = [w for _, err in self.failures if (w := getattr(err, "retry_after", None)) is not None]
        return min(waits) if waits else None
