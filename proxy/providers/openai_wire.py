"""OpenAI wire helpers shared by the codec (`proxy.providers.openai`) and its stream decoder (`openai_stream`).

Error bodies -> `ErrorInfo` (`error_info`) -> an `UpstreamError` class (`classify`: a 4xx/5xx status decides
through `http_provider.error_for_status`, the one status table, and the body's `code`/`type` only refine a bad
request; without such a status the `code`/`type` decide; never by message text); reply pieces
(`decode_tool_calls`, `message_text`, `token_count`); and small readers for bounded body excerpts and loosely
typed JSON values. Pure functions, no I/O.

Reply pieces are checked, not guessed at: a present field of the wrong type (`content` a number, `tool_calls` an
object, a tool call without a function name, arguments that are a number, a token count that is a string or
negative) raises `ShapeError` naming the field, which the codec reports as an `UpstreamProtocolError`. Absent and
null fields are fine (they mean "none" or "unknown").
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
from proxy.json_kinds import json_kind
from proxy.providers.http_provider import ShapeError, error_for_status
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
    """A reply message's `tool_calls` (None: none). Raises `ShapeError` for a call that cannot be used."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ShapeError(f"`tool_calls` is {json_kind(raw)}, not an array")
    calls = []
    for position, item in enumerate(raw):
        where = f"tool_calls[{position}]"
        if not isinstance(item, dict):
            raise ShapeError(f"`{where}` is {json_kind(item)}, not an object")
        function = item.get("function")
        if not isinstance(function, dict):
            raise ShapeError(f"`{where}` has no `function` object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ShapeError(f"`{where}` has no function name")
        calls.append(
            ToolCall(
                id=_str_or_none(item.get("id")) or f"call_{position}",
                name=name,
                arguments=_arguments_text(function.get("arguments"), where) or "{}",
            )
        )
    return tuple(calls)


def message_text(message: Mapping[str, Any]) -> str | None:
    """A reply message's text: `content` (a string or text parts), else its `refusal`, else None."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for position, part in enumerate(content):
            if not isinstance(part, dict):
                raise ShapeError(f"`content[{position}]` is {json_kind(part)}, not an object")
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
            elif text is not None:
                raise ShapeError(f"`content[{position}].text` is {json_kind(text)}, not a string")
        return "".join(texts)
    if content is not None:
        raise ShapeError(f"`content` is {json_kind(content)}, not a string")
    refusal = message.get("refusal")
    if refusal is not None and not isinstance(refusal, str):
        raise ShapeError(f"`refusal` is {json_kind(refusal)}, not a string")
    return refusal


def token_count(usage: Mapping[str, Any], key: str, where: str = "usage") -> int:
    """`usage[key]` as a count: absent or null is 0, `12.0` is 12; anything but a non-negative whole number raises
    `ShapeError` naming the field, `` `{where}.{key}` ``, and showing its value. The Anthropic codec reads its
    counters with it too."""
    value = usage.get(key)
    if value is None:
        return 0
    if type(value) is float and value.is_integer():  # `12.0`: some servers write counts as floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(f"`{where}.{key}` is {_shown(value)}, not a count of tokens")
    return value


def _shown(value: object) -> str:
    """A bad scalar shown as it was sent (`"12"`, `-3`), else its JSON type."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = json.dumps(value)
        return text if len(text) <= 40 else json_kind(value)
    return json_kind(value)


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
    """The error class for a status and the body's `type`/`code`. No message text is looked at. Any status but a
    2xx decides through the status table (a 3xx redirect is a protocol error); a 2xx or None lets the body decide."""
    if status is not None and not 200 <= status < 300:
        error_class = error_for_status(status)
        if error_class is UpstreamBadRequest:
            return _BAD_REQUEST_CODES.get(code or "") or _BAD_REQUEST_CODES.get(error_type or "", UpstreamBadRequest)
        return error_class
    return _CODE_OR_TYPE_ERRORS.get(code or "") or _CODE_OR_TYPE_ERRORS.get(error_type or "") or UpstreamServerError


def excerpt(body: bytes | str) -> str:
    """The first ~200 characters of a body, whitespace collapsed."""
    text = body[: EXCERPT_CHARS * 8].decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text[: EXCERPT_CHARS * 8].split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _arguments_text(raw: object, where: str = "tool_calls[]") -> str:
    if isinstance(raw, str):
        return raw
    if raw is None:
        return ""
    if isinstance(raw, dict | list):
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)  # some servers send an object
    raise ShapeError(f"`{where}.function.arguments` is {json_kind(raw)}, not JSON text")


def _code_text(code: object) -> str | None:
    return None if code is None or code == "" else str(code)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
