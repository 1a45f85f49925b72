"""OpenAI wire helpers shared by the codec (`proxy.providers.openai`) and its stream decoder (`openai_stream`).

Error bodies -> `ErrorInfo` (`error_info`) -> an `UpstreamError` class (`classify`: a 4xx/5xx status decides
through `http_provider.error_for_status`, the one status table, and the body's `code`/`type` only refine a bad
request; without such a status the `code`/`type` decide; never by message text); reply pieces
(`decode_tool_calls`, `message_text`); and small readers for headers, bounded body excerpts and loosely typed JSON
values. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamRateLimited,
    UpstreamServerError,
)
from proxy.providers.http_provider import error_for_status
from proxy.types import ToolCall

EXCERPT_CHARS = 200
MAX_MESSAGE_CHARS = 1000

# Codes that refine a bad request.
_BAD_REQUEST_CODES: Mapping[str, type[UpstreamError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "content_filter": ContentFiltered,
    "content_policy_violation": ContentFiltered,
    "exceed_context_size_error": ContextLengthExceeded,  # llama.cpp says it in `type`, with `code: 400`
}
# When the status says nothing (an error inside a 200 stream): classify by `code`, then `type`.
_CODE_OR_TYPE_ERRORS: Mapping[str, type[UpstreamError]] = {
    **_BAD_REQUEST_CODES,
    "rate_limit_exceeded": UpstreamRateLimited,
    "insufficient_quota": UpstreamRateLimited,
    "rate_limit_error": UpstreamRateLimited,
    "tokens": UpstreamRateLimited,
    "requests": UpstreamRateLimited,
    "invalid_api_key": UpstreamAuthError,
    "authentication_error": UpstreamAuthError,
    "permission_error": UpstreamPermissionError,
    "model_not_found": UpstreamNotFound,
    "not_found_error": UpstreamNotFound,
    "NotFoundError": UpstreamNotFound,
    "invalid_request_error": UpstreamBadRequest,
    "BadRequestError": UpstreamBadRequest,
    "overloaded_error": UpstreamOverloaded,
    "server_error": UpstreamServerError,
    "api_error": UpstreamServerError,
    "InternalServerError": UpstreamServerError,
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body said: its message, `type` and `code` (stringified), and an HTTP status it claimed."""

    message: str
    type: str | None = None
    code: str | None = None
    status_hint: int | None = None  # vLLM and llama.cpp put the HTTP status in an integer `code`


# --- decoding helpers -----------------------------------------------------------------------------------


def decode_tool_calls(raw: object) -> tuple[ToolCall, ...]:
    if not isinstance(raw, list):
        return ()
    calls = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        function = item.get("function")
        function = function if isinstance(function, dict) else {}
        calls.append(
            ToolCall(
                id=_str_or_none(item.get("id")) or f"call_{position}",
                name=_str_or_none(function.get("name")) or "",
                arguments=_arguments_text(function.get("arguments")) or "{}",
            )
        )
    return tuple(calls)


def message_text(message: Mapping[str, Any]) -> str | None:
    """A reply message's text: `content` (a string or text parts), else its `refusal`, else None."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    refusal = message.get("refusal")
    return refusal if isinstance(refusal, str) else None


def error_info(payload: object) -> ErrorInfo:
    """Read `{"error": {...}}`, `{"error": "text"}`, flat `{"object": "error", "message": ...}` or `{"detail": ...}`."""
    if not isinstance(payload, dict):
        return ErrorInfo("")
    error = payload.get("error")
    if isinstance(error, str):
        return ErrorInfo(_clip(error), _str_or_none(payload.get("type")), _code_text(payload.get("code")))
    source = error if isinstance(error, dict) else payload
    message = source.get("message")
    if message is None:
        message = source.get("detail")
    if message is None:
        message = ""
    elif not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)  # e.g. a list of validation problems
    code = source.get("code")
    status_hint = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599 else None
    return ErrorInfo(_clip(message), _str_or_none(source.get("type")), _code_text(code), status_hint)


def classify(status: int | None, error_type: str | None, code: str | None) -> type[UpstreamError]:
    """The error class for a status and the body's `type`/`code`. No message text is looked at."""
    if status is not None and 400 <= status < 600:
        error_class = error_for_status(status)
        if error_class is UpstreamBadRequest:
            return _BAD_REQUEST_CODES.get(code or "") or _BAD_REQUEST_CODES.get(error_type or "", UpstreamBadRequest)
        return error_class
    return _CODE_OR_TYPE_ERRORS.get(code or "") or _CODE_OR_TYPE_ERRORS.get(error_type or "") or UpstreamServerError


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header by lowercase `name`, whatever case `headers` uses."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def excerpt(body: bytes | str) -> str:
    """The first ~200 characters of a body, whitespace collapsed."""
    text = body[: EXCERPT_CHARS * 8].decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text[: EXCERPT_CHARS * 8].split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _arguments_text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if raw is None:
        return ""
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)  # some servers send an object


def _code_text(code: object) -> str | None:
    return None if code is None or code == "" else str(code)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
