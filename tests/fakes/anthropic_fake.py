"""A fake Anthropic Messages server, plus builders.

Route: `POST /v1/messages`; anything else is a 404 `not_found_error`. `base_url` is `http://127.0.0.1:PORT` (the
Anthropic SDK appends `/v1/messages` itself). Every request is recorded in `.requests`.

Like the real API it answers 401 `authentication_error` without `x-api-key` or `Authorization: Bearer <key>` (the
2.x SDK sends its api_key as a Bearer token), 400
`invalid_request_error` without `anthropic-version` or without `model` / `max_tokens` / `messages`, puts a
`request-id` header and `anthropic-ratelimit-*` headers (RFC 3339 resets) on every response, and `request_id` in
error bodies. Any key is accepted unless `api_key=` is given. With an empty script the answer is
`DEFAULT_ANTHROPIC_TEXT` ("Hello from the fake Anthropic.", streamed in three `text_delta`s when `"stream": true`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from tests.fakes import anthropic_wire
from tests.fakes.replies import ErrorReply, ModelReply, ScriptedReply, ToolCall
from tests.fakes.server import FakeServer, RecordedRequest

DEFAULT_ANTHROPIC_TEXT = "Hello from the fake Anthropic."
DEFAULT_ANTHROPIC_REPLY = ModelReply(text=("Hello", " from the fake", " Anthropic."))


class AnthropicFake(FakeServer):
    """Scriptable fake of the Anthropic Messages API."""

    api_prefix = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        default_reply: ScriptedReply = DEFAULT_ANTHROPIC_REPLY,
        default_headers: Mapping[str, str | None] | None = None,
    ) -> None:
        super().__init__(api_key=api_key, default_reply=default_reply, default_headers=default_headers)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self.answer)

    def reject(self, record: RecordedRequest) -> ErrorReply | None:
        return self._header_error(record) or self._validation_error(record)

    def not_found(self, request: web.Request) -> ErrorReply:
        return ErrorReply(404, message="Not Found")

    def _header_error(self, record: RecordedRequest) -> ErrorReply | None:
        authorization = record.header("authorization") or ""
        api_key = record.header("x-api-key") or (authorization[7:] if authorization.startswith("Bearer ") else None)
        if api_key is None:
            return ErrorReply(401, type="authentication_error", message="x-api-key header is required")
        if self.api_key is not None and api_key != self.api_key:
            return ErrorReply(401, type="authentication_error", message="invalid x-api-key")
        if record.header("anthropic-version") is None:
            return ErrorReply(400, type="invalid_request_error", message="anthropic-version: header is required")
        return None

    @staticmethod
    def _validation_error(record: RecordedRequest) -> ErrorReply | None:
        body = record.json
        if not isinstance(body, dict):
            return ErrorReply(400, type="invalid_request_error", message="The request body is not valid JSON.")
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return ErrorReply(400, type="invalid_request_error", message=f"{field}: Field required")
        return None

    # --- rendering hooks -------------------------------------------------------------------------------------
    def standard_headers(self) -> dict[str, str | None]:
        return anthropic_wire.standard_headers(len(self.requests))

    def error_json(self, error: ErrorReply, headers: Mapping[str, str]) -> Any:
        request_id = next((value for name, value in headers.items() if name.lower() == "request-id"), None)
        return anthropic_wire.error_body(error, request_id)

    def message_json(self, reply: ModelReply, request_json: dict[str, Any]) -> Any:
        return anthropic_wire.message_body(reply, request_json)

    def stream_frames(self, reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
        return anthropic_wire.stream_frames(reply, request_json)


# --- builders --------------------------------------------------------------------------------------------------
def anthropic_text(*pieces: str, **options: Any) -> ModelReply:
    """A text answer; each piece is one `text_delta`. `options`: any `ModelReply` field (usage, faults...)."""
    return ModelReply(text=pieces, **options)


def anthropic_tool_use(
    name: str,
    input: str | Mapping[str, Any] = "{}",
    *,
    id: str | None = None,
    fragments: int | Sequence[str] = 3,
    **options: Any,
) -> ModelReply:
    """One `tool_use` block, streamed as `input_json_delta` fragments. Several: `tool_reply(ToolCall(...), ...)`."""
    return ModelReply(tool_calls=(ToolCall(name, input, id=id, fragments=fragments),), **options)


def anthropic_error(
    status: int,
    type: str | None = None,
    message: str | None = None,
    *,
    retry_after: str | float | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str | None] | None = None,
    delay_headers: float = 0.0,
) -> ErrorReply:
    """An error in Anthropic's `{"type":"error","error":{type,message},"request_id"}` shape. Type and message default
    from the status (529 overloaded_error, 413 request_too_large, ...)."""
    return ErrorReply(
        status,
        type=type,
        message=message,
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        should_retry=should_retry,
        headers=dict(headers or {}),
        delay_headers=delay_headers,
    )
