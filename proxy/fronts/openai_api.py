"""`POST /v1/chat/completions`: the OpenAI Chat Completions API over the engine. Exports `routes`.

    app = build_app(engine, api_routes=[*openai_api.routes, ...])

A request is read (`read_json_object`), validated (`openai_inbound.parse_chat_request`), answered by the engine and
written back (`openai_outbound`). Every failure is an OpenAI-shaped error with the right status (`retry-after` on
429s): a bad body is a 400/413 naming the field, an unknown model a 404, what the engine raises keeps its
status (`proxy_error_response`).

Streams: the response starts only once the engine's first chunk is ready, so anything that fails before (unknown
model, rate limits, every target down) is a normal HTTP error. After that the events follow `ChunkEncoder`, and an
upstream failure ends the stream with an error event and no `[DONE]`.

The client going away (its connection closes) cancels the work in flight: the engine call of a plain request, the
wait for the first chunk, or the stream (`stream.aclose()` cancels the upstream call). `Cache-Control: no-cache`
(or `no-store`) on the request skips the response cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy.engine import Engine, EngineStream
from proxy.errors import ProxyError
from proxy.fronts.failure_log import failure_summary
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
from proxy.fronts.openai_inbound import InboundChat, parse_chat_request
from proxy.fronts.openai_outbound import ChunkEncoder, completion_body, error_event, json_bytes, new_completion_id
from proxy.types import StreamChunk

log = logging.getLogger(__name__)
INTERNAL_ERROR = {"message": "internal error in the proxy", "type": "server_error", "param": None, "code": None}


def wants_cache_bypass(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` or `no-store` on the request."""
    directives = {part.split("=", 1)[0].strip().lower() for part in headers.get("cache-control", "").split(",")}
    return not directives.isdisjoint({"no-cache", "no-store"})


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` whose body generator is cancelled, then closed, when the client disconnects."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except ClientGone:
            log.info("client disconnected mid-stream; upstream call cancelled")
        finally:
            await self._events.aclose()
            await self._on_close()


def _error_json(error: ProxyError) -> dict[str, Any]:
    """The `error` object the same failure would have as a whole response."""
    return json.loads(bytes(proxy_error_response("openai", error).body))["error"]


async def _events(
    stream: EngineStream, first: StreamChunk | None, encoder: ChunkEncoder
) -> AsyncGenerator[bytes, None]:
    """The SSE events of a stream whose first chunk was already read; closing the stream is the response's job."""
    try:
        if first is not None:
            for event in encoder.encode(first):
                yield event
        async for chunk in stream:
            for event in encoder.encode(chunk):
                yield event
    except ProxyError as error:
        log.warning("stream failed after its first chunk: %s", failure_summary(error))  # no upstream text
        yield error_event(_error_json(error))
        return
    except Exception:  # a bug: the client still gets an error event, never a clean end
        log.exception("unexpected error while streaming a chat completion")
        yield error_event(INTERNAL_ERROR)
        return
    for event in encoder.end(stream.response):
        yield event


async def _stream(request: Request, engine: Engine, inbound: InboundChat, bypass: bool, created: int) -> Response:
    stream = engine.stream(inbound.request, bypass_cache=bypass)
    try:
        first = await until_disconnect(request.receive, first_chunk(stream))
    except ProxyError as error:
        await stream.aclose()
        return proxy_error_response("openai", error)
    except ClientGone:
        await stream.aclose()
        return Response(status_code=CLIENT_CLOSED)
    upstream_id = first.id if first is not None else None
    encoder = ChunkEncoder(
        completion_id=upstream_id if upstream_id and not stream.cached else new_completion_id(),
        model=inbound.request.model or stream.route or "",
        created=created,
        include_usage=inbound.include_usage,
    )
    headers = {
        **answer_headers(stream.provider, stream.model, stream.cached),
        "cache-control": "no-cache",
        "x-accel-buffering": "no",  # proxies such as nginx must not buffer the events
    }
    return EventStreamResponse(_events(stream, first, encoder), headers, on_close=stream.aclose)


async def chat_completions(request: Request) -> Response:
    """`POST /v1/chat/completions` (see the module docstring)."""
    engine: Engine = request.app.state.engine
    try:
        inbound = parse_chat_request(await read_json_object(request))
    except BodyError as error:
        return body_error_response("openai", error)
    except ClientDisconnect:
        return Response(status_code=CLIENT_CLOSED)
    created = int(time.time())
    bypass = wants_cache_bypass(request.headers)
    if inbound.request.stream:
        return await _stream(request, engine, inbound, bypass, created)
    try:
        response = await until_disconnect(request.receive, engine.complete(inbound.request, bypass_cache=bypass))
    except ProxyError as error:
        return proxy_error_response("openai", error)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    body = completion_body(response, model=inbound.request.model or response.route, created=created)
    headers = answer_headers(response.provider, response.model, response.cached)
    return Response(json_bytes(body), media_type="application/json", headers=headers)


routes: list[Route] = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
