"""The Anthropic Messages API over the engine: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

    routes = [Route("/v1/messages", ...), Route("/v1/messages/count_tokens", ...)]   # for build_app(api_routes=...)

`/v1/messages` validates the body (`anthropic_inbound`), asks the engine, and answers Anthropic's `message`
object or its SSE stream (`anthropic_outbound`; its `model` is the name the client asked for, as in the OpenAI
front), with `x-llm-proxy-provider/-model/-cache` (the model id of the target that answered) and `request-id`
(the proxy's request id, which the Anthropic SDK exposes as `_request_id`). Errors use Anthropic's shape and types,
with `retry-after` when the client should come back later. `Cache-Control: no-cache` (or `no-store`) on the
request bypasses the response cache.

Streams: the response starts only once the engine has the first chunk, so a failure before any output (all
targets failed, rate limited, unknown model) is a plain HTTP error. After that an upstream failure is an
`event: error` and the stream ends without `message_stop`.

The client going away (its connection closes) cancels the upstream call at once, as in the OpenAI front
(`http_common.until_disconnect`): the engine call of a plain request and the wait for a stream's first chunk are
cancelled (the answer is a 499 nobody reads), and `SseResponse` cancels its writer and closes the engine stream.

`/v1/messages/count_tokens` answers `{"input_tokens": N}` from the proxy's offline estimate
(`proxy.tokens.estimate_prompt_tokens`), not from a provider: it costs nothing and is roughly right (~10%).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy.engine import Engine, EngineStream
from proxy.errors import ProxyError, RequestError
from proxy.fronts.anthropic_inbound import parse_messages_body
from proxy.fronts.anthropic_outbound import (
    MessageEvents,
    error_event,
    error_type_for,
    json_bytes,
    message_id,
    message_json,
)
from proxy.fronts.failure_log import failure_summary
from proxy.fronts.http_app import request_id_of
from proxy.fronts.http_common import (
    CLIENT_CLOSED,
    BodyError,
    ClientGone,
    answer_headers,
    body_error_response,
    first_chunk,
    proxy_error_response,
    read_json_object,
    until_disconnect,
)
from proxy.tokens import estimate_prompt_tokens
from proxy.types import ChatRequest, StreamChunk

log = logging.getLogger(__name__)


class MessageResponse(JSONResponse):
    """A JSON answer that a lone surrogate in the model's text cannot break (see `json_bytes`)."""

    def render(self, content: object) -> bytes:
        return json_bytes(content)


def bypasses_cache(request: Request) -> bool:
    """`Cache-Control: no-cache` or `no-store` on the request."""
    directives = {part.strip().lower() for part in request.headers.get("cache-control", "").split(",")}
    return bool(directives & {"no-cache", "no-store"})


def _with_request_id(response: Response, request: Request) -> Response:
    response.headers["request-id"] = request_id_of(request)
    return response


async def _read_request(request: Request, *, count_only: bool) -> ChatRequest | Response:
    """The body as a `ChatRequest`, or the error response saying what is wrong with it."""
    try:
        body = await read_json_object(request)
    except BodyError as exc:
        return _with_request_id(body_error_response("anthropic", exc), request)
    except ClientDisconnect:  # gone before its body was whole: nobody to answer (a 500 and a traceback before)
        return _with_request_id(Response(status_code=CLIENT_CLOSED), request)
    try:
        return parse_messages_body(body, count_only=count_only)
    except RequestError as exc:
        return _with_request_id(proxy_error_response("anthropic", exc), request)


async def create_message(request: Request) -> Response:
    """`POST /v1/messages`."""
    chat = await _read_request(request, count_only=False)
    if isinstance(chat, Response):
        return chat
    engine: Engine = request.app.state.engine
    if chat.stream:
        return await _start_stream(request, engine, chat)
    try:
        response = await until_disconnect(request.receive, engine.complete(chat, bypass_cache=bypasses_cache(request)))
    except ProxyError as exc:
        return _with_request_id(proxy_error_response("anthropic", exc), request)
    except ClientGone:
        return _with_request_id(Response(status_code=CLIENT_CLOSED), request)
    headers = answer_headers(response.provider, response.model, response.cached)
    body = message_json(response, model=chat.model or response.route)
    return _with_request_id(MessageResponse(body, headers=headers), request)


async def count_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`: the offline estimate of the request's input tokens."""
    chat = await _read_request(request, count_only=True)
    if isinstance(chat, Response):
        return chat
    engine: Engine = request.app.state.engine
    try:
        engine.runtime.resolve(chat.model)  # an unknown model is a 404, as for /v1/messages
    except ProxyError as exc:
        return _with_request_id(proxy_error_response("anthropic", exc), request)
    return _with_request_id(JSONResponse({"input_tokens": estimate_prompt_tokens(chat)}), request)


# --- streaming -------------------------------------------------------------------------------------------------


async def _start_stream(request: Request, engine: Engine, chat: ChatRequest) -> Response:
    """Wait for the first chunk (errors before it are plain HTTP errors), then answer with the SSE stream."""
    stream = engine.stream(chat, bypass_cache=bypasses_cache(request))
    try:
        first = await until_disconnect(request.receive, first_chunk(stream))
    except ProxyError as exc:
        await stream.aclose()
        return _with_request_id(proxy_error_response("anthropic", exc), request)
    except ClientGone:
        await stream.aclose()
        return _with_request_id(Response(status_code=CLIENT_CLOSED), request)
    except BaseException:
        await stream.aclose()
        raise
    events = MessageEvents(
        message_id=message_id(first.id if first else None),
        model=chat.model or stream.route or "",  # the name asked for; the header names the upstream model
        input_tokens=estimate_prompt_tokens(chat),
    )
    headers = {**answer_headers(stream.provider, stream.model, stream.cached), "request-id": request_id_of(request)}
    return SseResponse(_events(stream, first, events, request_id_of(request)), headers=headers)


async def _events(
    stream: EngineStream, first: StreamChunk | None, events: MessageEvents, request_id: str
) -> AsyncGenerator[bytes, None]:
    """The SSE bytes of one answer; closing this generator closes the engine stream (and the upstream call)."""
    try:
        yield events.start()
        if first is not None:
            if data := events.chunk(first):
                yield data
            async for chunk in stream:
                if data := events.chunk(chunk):
                    yield data
        yield events.finish()
    except ProxyError as exc:
        log.info("stream %s ended with an error after the first chunk: %s", request_id, failure_summary(exc))
        yield error_event(error_type_for(exc), str(exc))
    except Exception:
        log.exception("unexpected error in stream %s", request_id)
        yield error_event("api_error", f"internal error in the proxy (request id {request_id})")
    finally:
        await stream.aclose()


class SseResponse(Response):
    """A `text/event-stream` body from an async generator of bytes, cancelled as soon as the client disconnects.

    Starlette's `StreamingResponse` notices a disconnect only through an anyio cancel scope (which keeps
    cancelling the engine's cleanup) or on the next write; here the writer runs under `until_disconnect` (cancelled
    once) and the iterator is always closed, so the engine stream releases its upstream call and rate-limit leases.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **(headers or {})})

    async def _write(self, send: Send) -> None:
        try:
            async for data in self.body_iterator:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.body_iterator.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await until_disconnect(receive, self._write(send))
        except ClientGone:
            log.info("client disconnected mid-stream; upstream call cancelled")
        except OSError:
            pass  # the connection broke under a write: nobody to tell
        except Exception as exc:
            log.warning("writing a stream failed: %r", exc)


routes: list[Route] = [
    Route("/v1/messages", create_message, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
