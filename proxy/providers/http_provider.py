"""`HttpProvider`: a wire-protocol codec joined to an upstream transport, and the one HTTP status -> error table.

`complete()` encodes the request, sends it, and decodes a 2xx reply (stamping `latency_ms`) or raises the codec's
`decode_error` for any other status. `stream()` does the same with `stream=True`, feeds the raw bytes to a fresh
`StreamDecoder` as they arrive and yields its chunks. It stops reading as soon as the decoder has seen the
protocol's terminal event, and a stream that breaks off before it raises `StreamInterrupted` carrying the text
received so far. Closing or cancelling the generator aborts the upstream connection.

Bad replies on a stream request:
- an error event decoded together with text is held back by the decoder so the text is yielded first; it is
  raised right after those chunks (`raise_pending()`), not when the next bytes come (they may never come);
- a reply that is not an event stream at all (its first byte that is not blank opens a JSON value or an HTML
  page: no event stream starts so, whatever its content type says) is read whole and decoded as a whole reply: an
  error body raises the classified error it carries, an answer is yielded as chunks (a server that ignored
  `stream: true`), anything else is an `UpstreamProtocolError` naming the content type.

`error_for_status(status)` is the single status -> `UpstreamError` subclass table; the codecs (OpenAI wire:
`openai_wire.classify`; Anthropic: `anthropic_stream.upstream_error`) and the mock use it, and refine only what the
status cannot tell from the body. `status_message(status)` names a status the codecs cannot read a message for
(a redirect says so: redirects are not followed). `parse_json` reads an upstream body for both codecs (every
failure a `ValueError` saying what is wrong), `ShapeError` is what their shape checks raise, and `usage_or_none`
keeps an answer whose usage is not usable (a warning, and the usage unknown). `header_value` reads a reply header
whatever its case.

No aiohttp here: the transport owns the HTTP client.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

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
from proxy.providers.sse import BOM
from proxy.types import ChatRequest, ChatResponse, StreamChunk, ToolCallDelta, Usage

if TYPE_CHECKING:
    from proxy.providers.transport import Transport

__all__ = [
    "HttpProvider",
    "ShapeError",
    "error_for_status",
    "header_value",
    "parse_json",
    "status_message",
    "usage_or_none",
]

log = logging.getLogger(__name__)

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


def status_message(status: int) -> str:
    """`HTTP 302 (a redirect, not followed: check the provider's base_url)`, or plain `HTTP 500`."""
    if 300 <= status < 400:
        return f"HTTP {status} (a redirect, not followed: check the provider's base_url)"
    return f"HTTP {status}"


class ShapeError(ValueError):
    """A reply is valid JSON but not the shape the protocol promises; the message names the part."""


class NotJson(ValueError):
    """`parse_json`'s failure for text that is not JSON at all (its other failures are plain `ValueError`s)."""


def parse_json(data: bytes | str) -> Any:
    """`json.loads` for what an upstream sent. Every failure is a `ValueError` whose message completes "the body
    ...": `is not valid JSON`, `is not valid UTF-8 (byte 17)`, `is nested too deeply to read` (RecursionError), `has
    a number too long to read` (over Python's 4,300 digits)."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ValueError("is nested too deeply to read") from None
    except json.JSONDecodeError:
        raise NotJson("is not valid JSON") from None
    except ValueError:
        raise ValueError("has a number too long to read") from None


def usage_or_none(read: Callable[[Any], Usage], raw: object, provider: str) -> Usage | None:
    """`read(raw)`: a reply's usage, read by a codec. None when it is not usable (`read` raises `ShapeError`): the
    answer is kept, paid for, and only its usage is unknown (the rate limiter keeps its estimate), with a warning
    naming the provider and what was wrong."""
    try:
        return read(raw)
    except ShapeError as exc:
        log.warning("provider %s: its usage is ignored, the answer kept: %s", provider, exc)
        return None


def _is_success(status: int) -> bool:
    return 200 <= status < 300


_WHOLE_BODY_STARTS = (b"{", b"[", b"<")  # JSON (an error or a whole answer) or an HTML page: not SSE


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Header `name` (lowercase), whatever case `headers` uses: the transport's headers compare case-insensitively,
    a plain dict (a test, a custom codec) is searched."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # the transport's miss is final: no scan per reply
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _content_type(headers: Mapping[str, str]) -> str:
    return (header_value(headers, "content-type") or "").partition(";")[0].strip().lower()


def response_chunks(response: ChatResponse) -> list[StreamChunk]:
    """A whole reply as the chunks a stream of it would have produced (header, text, tool calls, end)."""
    chunks = [StreamChunk(id=response.id, model=response.model or None)]
    if response.text:
        chunks.append(StreamChunk(text=response.text))
    for index, call in enumerate(response.tool_calls):
        delta = ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments)
        chunks.append(StreamChunk(tool_calls=(delta,)))
    chunks.append(StreamChunk(finish_reason=response.finish_reason, usage=response.usage))
    return chunks


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
            sniffing = True  # is this an event stream at all? Its first byte that is not blank decides
            try:
                async for data in reply:
                    if sniffing and (first := data.removeprefix(BOM).lstrip()):
                        sniffing = False
                        if first[:1] in _WHOLE_BODY_STARTS:
                            whole = self._whole_reply(reply.status, reply.headers, data + await reply.read_whole())
                            for chunk in whole:
                                yield chunk
                            return
                    chunks = decoder.feed(data)
                    if chunks:
                        for chunk in chunks:
                            if chunk.text:
                                texts.append(chunk.text)
                            yield chunk
                        decoder.raise_pending()  # an error held back behind those chunks: now
                    if decoder.done:
                        break  # the terminal event arrived: don't wait for the server to close
                tail = decoder.close()
            except StreamInterrupted as exc:
                if exc.partial_text or not texts:
                    raise
                raise _with_partial_text(exc, "".join(texts)) from exc
        for chunk in tail:
            yield chunk

    def _whole_reply(self, status: int, headers: Mapping[str, str], body: bytes) -> list[StreamChunk]:
        """A stream request answered with a whole body: its error, its answer as chunks, or a protocol error."""
        try:
            response = self.codec.decode(status, headers, body)
        except UpstreamProtocolError as exc:
            kind = _content_type(headers) or "no content type"
            raise UpstreamProtocolError(
                f"a stream was asked for, but the reply is not an event stream ({kind}): {exc.message}",
                provider=exc.provider,
                status=exc.status,
                request_id=exc.request_id,
            ) from exc
        return response_chunks(response)

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
