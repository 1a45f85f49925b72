"""Structured logs: JSON lines on stderr (or readable text on a terminal), each carrying the trace id and the
request id, with secrets masked, plus the one info line the engine writes per request.

    logs.configure("info", "auto")                 # llm-proxy serve, at start (and when a reload changes it)
    logs.add_secrets(logs.secrets_of(config))      # every key and token of the config, masked in every line
    token = logs.request_id.set("req_...")         # fronts: the id the lines of this request carry
    logs.log_request(model=..., status="ok", ...)  # the engine, once per client request

A JSON line: `{"time": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "proxy.request", "message": "...",
"request_id": "req_...", "trace_id": "<32 hex>", "span_id": "<16 hex>", ...the record's extra fields}`; the ids
are left out when there are none. Text: `time LEVEL logger: message [request_id=... trace_id=...]`.
The trace id is the record's own (`extra={"trace_id": ...}`, as the request line passes it) or the current span's.

Redaction runs on the finished line (message, extra fields and traceback alike): the registered secret values,
`Bearer <token>`, `sk-...` keys, `api_key=`/`authorization:`-style pairs and passwords in URLs become `***`.
`redact()` is public: the tracing module passes span status messages through it too.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import IO, Any

from opentelemetry import trace

from proxy.config.model import Config

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "add_secrets",
    "configure",
    "log_request",
    "redact",
    "request_id",
    "secrets_of",
]

request_id: ContextVar[str | None] = ContextVar("llm_proxy_request_id", default=None)

REQUEST_LOG = logging.getLogger("proxy.request")
MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter registered values would mask ordinary words
QUIET_LOGGERS = ("mcp", "httpx2", "httpcore2", "uvicorn.error", "sse_starlette", "watchfiles")

# (a cheap test that must pass first, the pattern, its replacement): the patterns run only where they could match.
_PATTERNS = (
    (
        ("bearer",),
        re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
        r"\1" + MASK,
    ),
    (
        ("sk-",),
        re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),
        "sk-" + MASK,
    ),
    (
        ("key", "authorization", "access", "passw", "secret"),
        re.compile(
            r"(?i)\b((?:x-)?api[_-]?key|authorization|access[_-]?token|password|passwd|secret)"
            r"(\"?'?\s*[:=]\s*\"?'?)(?!\*\*\*)(?:bearer\s+)?[^\s\"',;}&]+"
        ),
        r"\1\2" + MASK,
    ),
    (
        ("@",),
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]+@"),
        r"\1" + MASK + "@",
    ),
)
_secrets: set[str] = set()
_secret_list: tuple[str, ...] = ()
_secret_pattern: re.Pattern[str] | None = None


def add_secrets(values: Iterable[str | None]) -> None:
    """Mask these values in every line from now on (keys rotated away stay masked: lines may still name them)."""
    global _secret_pattern, _secret_list
    new = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    _secrets.update(new)
    ordered = sorted(_secrets, key=len, reverse=True)  # a longer secret containing a shorter one goes first
    _secret_list = tuple(ordered)
    _secret_pattern = re.compile("|".join(re.escape(value) for value in ordered))


def clear_secrets() -> None:
    """Forget the registered values (tests)."""
    global _secret_pattern, _secret_list
    _secrets.clear()
    _secret_list = ()
    _secret_pattern = None


def secrets_of(config: Config) -> list[str]:
    """Every secret value in `config`: provider keys and secret headers, bearer tokens, the state URL."""
    values: list[str] = []
    for provider in config.providers.values():
        if provider.api_key is not None:
            values.append(provider.api_key.reveal())
        values.extend(secret.reveal() for secret in provider.headers.values())
    values.extend(token.reveal() for token in config.server.bearer_tokens)
    if config.state.url is not None:
        values.append(config.state.url.reveal())
    return values


def redact(text: str) -> str:
    """`text` with the registered secrets and anything shaped like a credential replaced by `***`."""
    for value in _secret_list:
        if value in text:
            text = _secret_pattern.sub(MASK, text)  # type: ignore[union-attr]
            break
    lowered = text.lower()
    for needles, pattern, replacement in _PATTERNS:
        for needle in needles:
            if needle in lowered:
                text = pattern.sub(replacement, text)
                break
    return text


# --- formatting ---------------------------------------------------------------------------------------------

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SKIP = _STANDARD | {"request_id", "trace_id", "span_id"}
# A record's own attributes come first in its __dict__, then `extra=`'s: skip the former without looking at them.
_OWN = len(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__)


def _ids(record: logging.LogRecord) -> dict[str, str]:
    ids: dict[str, str] = {}
    rid = getattr(record, "request_id", None) or request_id.get()
    if rid:
        ids["request_id"] = rid
    trace_id = getattr(record, "trace_id", None)
    if trace_id:
        ids["trace_id"] = trace_id
        span_id = getattr(record, "span_id", None)
        if span_id:
            ids["span_id"] = span_id
        return ids
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        ids["trace_id"] = format(context.trace_id, "032x")
        ids["span_id"] = format(context.span_id, "016x")
    return ids


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    if _second[0] != seconds:
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_second[1]}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in itertools.islice(record.__dict__.items(), _OWN, None)
        if key not in _SKIP and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_ids(record))
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(line, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id=... trace_id=...]`, traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        ids = _ids(record)
        ids.pop("span_id", None)
        tail = " [" + " ".join(f"{key}={value}" for key, value in ids.items()) + "]" if ids else ""
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return redact(text)


_handler: logging.Handler | None = None


def configure(level: str = "info", format: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to `stream` (default: stderr, never stdout: stdout is the MCP protocol on stdio) at
    `level`, as JSON lines or text (`auto`: text on a terminal, JSON otherwise). The SDKs' per-request chatter
    shows only at debug. Calling it again replaces the handler it installed."""
    global _handler
    stream = stream if stream is not None else sys.stderr
    if format == "auto":
        isatty = getattr(stream, "isatty", None)
        format = "text" if isatty is not None and isatty() else "json"
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if format == "text" else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(quiet, root.level))
    _handler = handler
    return handler


def unconfigure() -> None:
    """Remove the handler `configure` installed (tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None


# --- the request line ---------------------------------------------------------------------------------------


def log_request(
    *,
    model: str | None,
    status: str,
    latency_ms: float,
    provider: str | None = None,
    upstream_model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached: bool = False,
    stream: bool = False,
    attempts: int = 0,
    trace_id: str | None = None,
) -> None:
    """The one info line per client request (never the prompt or the answer). `status` is `ok`, an error kind,
    `truncated` or `cancelled`."""
    if not REQUEST_LOG.isEnabledFor(logging.INFO):
        return
    target = f"{provider}/{upstream_model}" if provider else "-"
    REQUEST_LOG.info(
        "%s %s -> %s %s in %.1f ms, tokens %d+%d%s",
        "stream" if stream else "request",
        model,
        target,
        status,
        latency_ms,
        input_tokens,
        output_tokens,
        ", from cache" if cached else "",
        extra={
            "event": "request",
            "model": model,
            "provider": provider,
            "upstream_model": upstream_model,
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached": cached,
            "stream": stream,
            "attempts": attempts,
            "trace_id": trace_id,
        },
    )
