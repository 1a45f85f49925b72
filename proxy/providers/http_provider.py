"""`HttpProvider`: a wire-protocol codec joined to an upstream transport, and the one HTTP status -> error table.

`complete()` encodes the request, sends it, and decodes a 2xx reply (stamping `latency_ms`) or raises the codec's
`decode_error` for any other status. `stream()` does the same with `stream=True`, feeds the raw bytes to a fresh
`StreamDecoder` as they arrive and yields its chunks. It stops reading as soon as the decoder has seen the
protocol's terminal event, and a stream that breaks off before it raises `StreamInterrupted` carrying the text
received so far. Closing or cancelling the generator aborts the upstream connection.

`error_for_status(status)` is the single status -> `UpstreamError` subclass table; the codecs (OpenAI wire:
`openai_wire.classify`; Anthropic: `anthropic_stream.upstream_error`) and the mock use it, and refine only what the
status cannot tell from the body.

No aiohttp here: the transport owns the HTTP client.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from proxy.errors import (
    StreamInterrupted,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
)
from proxy.providers.base import Codec, Provider
from proxy.types import ChatRequest, ChatResponse, StreamChunk

if TYPE_CHECKING:
    from proxy.providers.transport import Transport

__all__ = ["HttpProvider", "error_for_status"]

_ERROR_BY_STATUS: dict[int, type[UpstreamError]] = {
    400: UpstreamBadRequest,
    401: UpstreamAuthError,
    # 402 billing: this account cannot pay, so retrying is pointless, but another provider may work (fall back, do
    # not retry). Anthropic's billing_error; OpenAI itself never sends 402 (its quota error is a 429
    # insufficient_quota), OpenAI-compatible servers do (OpenRouter's credits, DeepSeek's balance).
    402: UpstreamPermissionError,
    403: UpstreamPermissionError,
    404: UpstreamNotFound,
    408: UpstreamServerError,  # request timeout: retryable
    409: UpstreamServerError,  # conflict: retryable, as the official SDKs do
    413: UpstreamBadRequest,
    422: UpstreamBadRequest,
    429: UpstreamRateLimited,
    503: UpstreamOverloaded,
    529: UpstreamOverloaded,  # Anthropic's "overloaded_error"
}


def error_for_status(status: int) -> type[UpstreamError]:
    """The `UpstreamError` subclass for a non-2xx HTTP status (other 5xx: server; other 4xx: bad request).

    Refinements the status cannot tell (context length, content filter) are the codecs' job, from the body; a
    body's error type or code alone decides only when there is no 4xx/5xx status (an error event in a 200 stream).
    """
    cls = _ERROR_BY_STATUS.get(status)
    if cls is not None:
        return cls
    if status >= 500:
        return UpstreamServerError
    if status >= 400:
        return UpstreamBadRequest
    return UpstreamProtocolError  # 1xx/3xx where a reply was expected


def _is_success(status: int) -> bool:
    return 200 <= status < 300


class HttpProvider(Provider):
    """A provider spoken to over HTTP: `codec` translates, `transport` carries the bytes."""

    def __init__(self, codec: Codec, transport: Transport, *, type: str) -> None:
        self.codec = codec
        self.transport = transport
        self.name = codec.provider
        self.type = type

    def __repr__(self) -> str:
        return f"HttpProvider(name={self.name!r}, type={self.type!r})"

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        call = self.codec.encode(request, model, stream=False)
        started = time.perf_counter()
        reply = await self.transport.send(call)
        if not _is_success(reply.status):
            raise self.codec.decode_error(reply.status, reply.headers, reply.body)
        response = self.codec.decode(reply.status, reply.headers, reply.body)
        return dataclasses.replace(response, latency_ms=(time.perf_counter() - started) * 1000.0)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        call = self.codec.encode(request, model, stream=True)
        decoder = self.codec.stream_decoder()
        texts: list[str] = []  # what has arrived, for a StreamInterrupted's partial_text
        async with self.transport.stream(call) as reply:
            if not _is_success(reply.status):
                raise self.codec.decode_error(reply.status, reply.headers, await reply.read())
            try:
                async for data in reply:
                    for chunk in decoder.feed(data):
                        if chunk.text:
                            texts.append(chunk.text)
                        yield chunk
                    if decoder.done:
                        break  # the terminal event arrived: don't wait for the server to close
                tail = decoder.close()
            except StreamInterrupted as exc:
                if exc.partial_text or not texts:
                    raise
                raise _with_partial_text(exc, "".join(texts)) from exc
        for chunk in tail:
            yield chunk

    async def aclose(self) -> None:
        await self.transport.aclose()


def _with_partial_text(exc: StreamInterrupted, partial_text: str) -> StreamInterrupted:
    """A copy of `exc` carrying `partial_text` (the transport and decoders do not know the text so far)."""
    return StreamInterrupted(
        exc.message,
        provider=exc.provider,
        partial_text=partial_text,
        status=exc.status,
        error_type=exc.error_type,
        code=exc.code,
        request_id=exc.request_id,
        retry_after=exc.retry_after,
    )
