"""A fake OpenAI Chat Completions server (and OpenAI-compatible personas: ollama, vllm, llamacpp), plus builders.

Routes: `POST /v1/chat/completions`, `GET /v1/models`; anything else is a 404 in the persona's error shape (the
`openai` persona answers as the real API does: `Invalid URL (METHOD /path)`, type `invalid_request_error`, no code).
`base_url` is `http://127.0.0.1:PORT/v1`, as SDK clients expect. Every request is recorded in `.requests`.

With an empty script the answer is `DEFAULT_OPENAI_TEXT` ("Hello from the fake OpenAI.", streamed in three pieces
when the request has `"stream": true`). The `openai` persona rejects a request without an API key (no
`Authorization` header, or one naming no key) as the real API does: 401, `You didn't provide an API key...`,
`invalid_request_error`, no code. Any key is accepted unless `api_key=` is given; a wrong one is a 401 with code
`invalid_api_key`. Personas send no `x-request-id` / `x-ratelimit-*` / `openai-*` headers (like the real servers)
and check the key only when `api_key=` is given.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import openai_wire
from tests.fakes.replies import ErrorReply, ModelReply, Reply, ScriptedReply, ToolCall
from tests.fakes.server import FakeServer, RecordedRequest

DEFAULT_OPENAI_TEXT = "Hello from the fake OpenAI."
DEFAULT_OPENAI_REPLY = ModelReply(text=("Hello", " from the fake", " OpenAI."))
NO_API_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth"
    " (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the"
    " API from your browser and are prompted for a username and password. You can obtain an API key from"
    " https://platform.openai.com/account/api-keys."
)


@dataclass(frozen=True)
class NullCode(ErrorReply):
    """An error the real OpenAI API answers with `code: null`, not the code its status otherwise carries (which
    `openai_wire.error_body` fills in for a None `code`)."""


@dataclass(frozen=True)
class InvalidUrl(NullCode):
    """The 404 for a route the fake does not serve (not `model_not_found`)."""


@dataclass(frozen=True)
class MissingApiKey(NullCode):
    """The 401 for a request without an API key (not `invalid_api_key`, which is for a wrong key)."""


class OpenAIFake(FakeServer):
    """Scriptable fake of an OpenAI-compatible server. `persona` is one of `openai_wire.PERSONAS`."""

    def __init__(
        self,
        persona: str = "openai",
        *,
        api_key: str | None = None,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        default_reply: ScriptedReply = DEFAULT_OPENAI_REPLY,
        default_headers: Mapping[str, str | None] | None = None,
    ) -> None:
        self.persona = openai_wire.PERSONAS[persona]
        self.models = tuple(models)
        super().__init__(api_key=api_key, default_reply=default_reply, default_headers=default_headers)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self.answer)
        router.add_get("/v1/models", self._models)

    # --- handlers --------------------------------------------------------------------------------------------
    def reject(self, record: RecordedRequest) -> ErrorReply | None:
        return self._authentication_error(record) or self._validation_error(record)

    def not_found(self, request: web.Request) -> ErrorReply:
        return InvalidUrl(404, type="invalid_request_error", message=f"Invalid URL ({request.method} {request.path})")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record = await self.record(request)
        rejection = self._authentication_error(record)
        if rejection is not None:
            return await self.respond(request, record, rejection)
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": self.persona.owned_by} for m in self.models
        ]
        return await self.respond(request, record, Reply(json={"object": "list", "data": data}))

    def _authentication_error(self, record: RecordedRequest) -> ErrorReply | None:
        authorization = record.header("authorization")
        if authorization is None or authorization.strip() in ("", "Bearer"):  # no key (`Bearer ` names none)
            if not self.persona.requires_api_key and self.api_key is None:
                return None
            return MissingApiKey(401, type="invalid_request_error", message=NO_API_KEY)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return ErrorReply(401, type="invalid_request_error", code="invalid_api_key")
        return None

    @staticmethod
    def _validation_error(record: RecordedRequest) -> ErrorReply | None:
        body = record.json
        if not isinstance(body, dict):
            return ErrorReply(
                400, type="invalid_request_error", message="We could not parse the JSON body of your request."
            )
        if not body.get("model"):
            return ErrorReply(400, type="invalid_request_error", message="you must provide a model parameter")
        if not isinstance(body.get("messages"), list):
            return ErrorReply(
                400,
                type="invalid_request_error",
                param="messages",
                code="missing_required_parameter",
                message="Missing required parameter: 'messages'.",
            )
        return None

    # --- rendering -------------------------------------------------------------------------------------------
    def standard_headers(self) -> dict[str, str | None]:
        if not self.persona.openai_headers:
            return {}
        remaining = max(0, 500 - len(self.requests))
        return {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-organization": "fake-org",
            "openai-processing-ms": "12",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-remaining-tokens": "29950",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "6m0s",
        }

    def error_json(self, error: ErrorReply, headers: Mapping[str, str]) -> Any:
        body = openai_wire.error_body(self.persona, error)
        if isinstance(error, NullCode) and self.persona.name == "openai":
            body["error"]["code"] = None
        return body

    def message_json(self, reply: ModelReply, request_json: dict[str, Any]) -> Any:
        return openai_wire.completion_body(self.persona, reply, request_json)

    def stream_frames(self, reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
        return openai_wire.stream_frames(self.persona, reply, request_json)


# --- builders --------------------------------------------------------------------------------------------------
def openai_text(*pieces: str, **options: Any) -> ModelReply:
    """A text answer; each piece is one streamed chunk. `options`: any `ModelReply` field (usage, faults...)."""
    return ModelReply(text=pieces, **options)


def openai_tool_call(
    name: str,
    arguments: str | Mapping[str, Any] = "{}",
    *,
    id: str | None = None,
    fragments: int | Sequence[str] = 3,
    **options: Any,
) -> ModelReply:
    """One tool call, streamed as fragmented `arguments` deltas. Several calls: `tool_reply(ToolCall(...), ...)`."""
    return ModelReply(tool_calls=(ToolCall(name, arguments, id=id, fragments=fragments),), **options)


def openai_error(
    status: int,
    type: str | None = None,
    code: str | int | None = None,
    message: str | None = None,
    *,
    param: str | None = None,
    retry_after: str | float | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str | None] | None = None,
    delay_headers: float = 0.0,
) -> ErrorReply:
    """An error in OpenAI's `{"error":{message,type,param,code}}` shape (persona shapes for compat personas)."""
    return ErrorReply(
        status,
        type=type,
        message=message,
        code=code,
        param=param,
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        should_retry=should_retry,
        headers=dict(headers or {}),
        delay_headers=delay_headers,
    )
