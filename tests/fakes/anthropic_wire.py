"""Byte shapes of the Anthropic Messages API (PROTOCOLS.md §3.2-3.5): the `message` body, the named-event SSE
stream, the error body and the rate-limit headers. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.replies import ErrorReply, ModelReply, ToolCall
from tests.fakes.server import arrange_frames, sse_frame

PING_FRAME = b'event: ping\ndata: {"type": "ping"}\n\n'
MALFORMED_FRAME = b"event: content_block_delta\ndata: {not json\n\n"
UNKNOWN_FRAME = b'event: future_event\ndata: {"type":"future_event","detail":"clients must ignore this"}\n\n'

# status -> (type, message)
_ERROR_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def _base62(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def request_id() -> str:
    return "req_011C" + _base62(20)


def message_id() -> str:
    return "msg_01" + _base62(22)


def tool_use_id(call: ToolCall, index: int) -> str:
    return call.id or f"toolu_fake_{index}"


def stop_reason(reply: ModelReply) -> str:
    return reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ratelimit_headers(requests_made: int, now: datetime | None = None) -> dict[str, str]:
    """`anthropic-ratelimit-*` headers; resets are RFC 3339 timestamps, token counts rounded to thousands."""
    now = now or datetime.now(UTC)
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset_in in (
        ("requests", 50, max(0, 50 - requests_made), 1),
        ("tokens", 100000, 99000, 1),
        ("input-tokens", 80000, 79000, 1),
        ("output-tokens", 20000, 20000, 1),
    ):
        prefix = f"anthropic-ratelimit-{kind}"
        headers[f"{prefix}-limit"] = str(limit)
        headers[f"{prefix}-remaining"] = str(remaining)
        headers[f"{prefix}-reset"] = rfc3339(now + timedelta(seconds=reset_in))
    return headers


def standard_headers(requests_made: int) -> dict[str, str | None]:
    return {"request-id": request_id(), "anthropic-organization-id": str(uuid.uuid4())} | ratelimit_headers(
        requests_made
    )


def error_body(error: ErrorReply, request_id_value: str | None) -> dict[str, Any]:
    """`{"type":"error","error":{type,message},"request_id"}`; None fields get defaults for the status."""
    fallback = ("api_error", "Internal server error") if error.status >= 500 else ("invalid_request_error", "Error")
    kind, message = _ERROR_DEFAULTS.get(error.status, fallback)
    body: dict[str, Any] = {"type": "error", "error": {"type": error.type or kind, "message": error.message or message}}
    if request_id_value is not None:
        body["request_id"] = request_id_value
    return body


def _usage(reply: ModelReply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_creation_tokens,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _model(reply: ModelReply, request_json: dict[str, Any]) -> str:
    return reply.model or str(request_json.get("model", "claude-sonnet-4-20250514"))


def message_body(reply: ModelReply, request_json: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming `message`."""
    content: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        content.append({"type": "text", "text": reply.full_text})
    for i, call in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": tool_use_id(call, i), "name": call.name, "input": _input(call)})
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": _model(reply, request_json),
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": None,
        "usage": _usage(reply, reply.output_tokens),
    }


def _input(call: ToolCall) -> Any:
    return json.loads(call.arguments_json)


def stream_events(reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
    """The named events of a streamed answer, without faults and without `message_stop`."""
    message = message_body(reply, request_json) | {"content": [], "stop_reason": None, "usage": _usage(reply, 1)}
    events = [sse_frame({"type": "message_start", "message": message}, "message_start")]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if reply.text or not reply.tool_calls:
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": piece} for piece in reply.text]))
    for i, call in enumerate(reply.tool_calls):
        start = {"type": "tool_use", "id": tool_use_id(call, i), "name": call.name, "input": {}}
        pieces = ["", *call.argument_fragments()]
        blocks.append((start, [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]))
    for index, (start, deltas) in enumerate(blocks):
        events.append(
            sse_frame({"type": "content_block_start", "index": index, "content_block": start}, "content_block_start")
        )
        if index == 0:
            events.append(PING_FRAME)
        for delta in deltas:
            events.append(
                sse_frame({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
            )
        events.append(sse_frame({"type": "content_block_stop", "index": index}, "content_block_stop"))
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(reply), "stop_sequence": None},
        "usage": {"output_tokens": reply.output_tokens},
    }
    events.append(sse_frame(message_delta, "message_delta"))
    return events


def stream_frames(reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
    """The full SSE body of a streamed answer, with the reply's faults applied."""
    error = {
        "type": "error",
        "error": {"type": reply.error_type or "overloaded_error", "message": reply.error_message or "Overloaded"},
    }
    return arrange_frames(
        stream_events(reply, request_json),
        [sse_frame({"type": "message_stop"}, "message_stop")],
        reply,
        error_frame=sse_frame(error, "error"),
        malformed_frame=MALFORMED_FRAME,
        unknown_frame=UNKNOWN_FRAME,
    )
