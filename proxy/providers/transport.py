"""The upstream HTTP transport: the only module that imports aiohttp.

One `Transport` per provider owns one `aiohttp.ClientSession` (pooled keep-alive connections, a connection limit,
a DNS cache, no cookie jar), created lazily inside the running event loop. It sends fully encoded `HttpCall`s:

- `await send(call)` -> `RawReply(status, headers, body)`: the whole reply, whatever its status;
- `async with stream(call) as reply:` -> `UpstreamStream` with `.status`, `.headers`, `await reply.read()` (the
  rest of the body, for error replies), `await reply.read_whole()` (the rest of a 2xx body that is not a stream
  after all) and `async for data in reply` (raw byte chunks as they arrive).

Bodies read whole are bounded (after decompression): a 2xx reply over `MAX_REPLY_BYTES` (32 MiB) is an
`UpstreamProtocolError` as soon as it passes the bound, and an error reply is cut at `MAX_ERROR_BODY_BYTES` (1 MiB;
only its message is wanted). Either way the connection is then dropped, not pooled. A body that does not decode
under its `content-encoding` (gzip claimed, plain bytes sent) is an `UpstreamProtocolError` saying so.

Timeouts (`TimeoutConfig`, seconds):
- `connect`: DNS, TCP and TLS, including the wait for a free pooled connection;
- `first_token`: from sending the request to the first byte of the reply: the response head for `send`, the first
  body byte for `stream`. It is also the longest silence allowed between two reads afterwards (the idle timeout);
- `total`: the whole exchange, body included.

Every aiohttp/asyncio failure is translated by `map_transport_error` into the project's error tree (aiohttp's
exceptions never leave this module): `UpstreamConnectError`, `UpstreamTimeout(phase=connect|first_token|total)`,
`UpstreamProtocolError`, and `StreamInterrupted` for a stream that breaks (or goes silent) after it started.
Messages name the provider and the upstream's `host:port`, never headers or keys.

A caller that is cancelled (or leaves the `async with` early) aborts the connection instead of returning it to the
pool, so the upstream sees the client go away; a reply read to its end goes back to the pool for reuse.

Trace context: when a span is current (with traces on, the dispatch makes each attempt's CLIENT span current while
its call is sent), its W3C `traceparent` (and `tracestate`) go upstream with the request; otherwise the headers are
sent as encoded, untouched.

Imports nothing from `proxy` but the error tree, the codec interface's `HttpCall` and the config's `TimeoutConfig`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from proxy import __version__, telemetry
from proxy.config.model import TimeoutConfig
from proxy.errors import (
    StreamInterrupted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.otel_fast import traced_headers
from proxy.providers.base import HttpCall

__all__ = ["MAX_ERROR_BODY_BYTES", "MAX_REPLY_BYTES", "RawReply", "Transport", "UpstreamStream", "map_transport_error"]

MAX_REPLY_BYTES = 32 * 1024 * 1024  # a whole 2xx reply; more is an UpstreamProtocolError (memory is per request)
MAX_ERROR_BODY_BYTES = 1024 * 1024  # an error reply is cut here: only its message and an excerpt are used

# Where in an exchange a failure happened; decides how a dropped connection or a silence is reported.
Stage = Literal["request", "body", "first_chunk", "stream"]

_USER_AGENT = f"mcp-llm-proxy/{__version__}"


@dataclass(frozen=True, slots=True)
class RawReply:
    """A whole upstream reply. `headers` compare case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def _where(url: str) -> str:
    """`host:port` of `url` for error messages (never the path or query, which could carry a key)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname or '?'}:{port}"


def map_transport_error(
    exc: BaseException,
    *,
    provider: str,
    url: str,
    stage: Stage,
    timeout: TimeoutConfig,
    first_byte_expired: bool = False,
) -> UpstreamError:
    """Translate an aiohttp/asyncio exception into the error tree, most specific class first.

    `stage` says where it happened: `request` (before the reply's head), `body` (reading a whole reply),
    `first_chunk` (waiting for a stream's first byte), `stream` (after it). `first_byte_expired` is True when
    our own first-byte deadline fired (asyncio reports it as a plain `TimeoutError`, like aiohttp's total timeout).
    """
    where = _where(url)
    streaming = stage in ("first_chunk", "stream")

    def interrupted(reason: str) -> StreamInterrupted:
        return StreamInterrupted(f"{provider}: the stream from {where} broke off: {reason}", provider=provider)

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"{provider}: could not connect to {where} within {timeout.connect:g}s", provider=provider, phase="connect"
        )
    if isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: no data for `first_token` seconds
        if stage == "stream":
            return interrupted(f"no data for {timeout.first_token:g}s")
        if stage == "body":
            return UpstreamTimeout(
                f"{provider}: the reply from {where} stalled: no data for {timeout.first_token:g}s",
                provider=provider,
                phase="first_token",
            )
        return UpstreamTimeout(
            f"{provider}: no reply from {where} within {timeout.first_token:g}s", provider=provider, phase="first_token"
        )
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on Python >= 3.11
        if first_byte_expired:
            return UpstreamTimeout(
                f"{provider}: no reply from {where} within {timeout.first_token:g}s",
                provider=provider,
                phase="first_token",
            )
        return UpstreamTimeout(
            f"{provider}: the reply from {where} took longer than {timeout.total:g}s", provider=provider, phase="total"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamConnectError(f"{provider}: TLS certificate of {where} was rejected", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.strerror or type(exc).__name__
        return UpstreamConnectError(f"{provider}: cannot connect to {where}: {reason}", provider=provider)
    if isinstance(exc, aiohttp.ClientPayloadError) and isinstance(exc.__cause__, ContentEncodingError):
        reason = f"its body does not decode as its content-encoding says ({exc.__cause__.message})"
        if streaming:
            return interrupted(reason)
        return UpstreamProtocolError(f"{provider}: the reply from {where} is broken: {reason}", provider=provider)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        if streaming:
            return interrupted("the connection was closed")
        if stage == "body":
            return UpstreamConnectError(f"{provider}: {where} closed the connection mid-reply", provider=provider)
        return UpstreamConnectError(f"{provider}: {where} closed the connection before replying", provider=provider)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return UpstreamConnectError(f"{provider}: the upstream URL is not a valid http(s) URL", provider=provider)
    if isinstance(exc, aiohttp.ClientResponseError):  # a reply that is not valid HTTP
        cause = exc.__cause__
        detail = getattr(cause, "message", None) if isinstance(cause, HttpProcessingError) else None
        said = f" ({' '.join(str(detail).split())[:200]})" if detail else ""
        return UpstreamProtocolError(f"{provider}: {where} sent an invalid HTTP reply{said}", provider=provider)
    if streaming:
        return interrupted(type(exc).__name__)
    return UpstreamConnectError(f"{provider}: request to {where} failed: {type(exc).__name__}", provider=provider)


# Every exception `map_transport_error` knows how to translate.
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


class _TooLarge(Exception):
    """A 2xx body passed `MAX_REPLY_BYTES`."""


async def _read_body(response: aiohttp.ClientResponse, content: aiohttp.StreamReader, limit: int, cut: bool) -> bytes:
    """The rest of a body, at most `limit` bytes: cut there (`cut`), else `_TooLarge` once it is passed."""
    length = response.content_length
    if length is not None and length <= limit and "Content-Encoding" not in response.headers:
        return await content.read()  # the common case: a small declared length, read in one go
    parts: list[bytes] = []
    size = 0
    while data := await content.readany():
        size += len(data)
        if size > limit:
            if not cut:
                raise _TooLarge
            parts.append(data[: len(data) - (size - limit)])
            break
        parts.append(data)
    return b"".join(parts)


class UpstreamStream:
    """A streamed reply: `.status`, `.headers`, `await read()`, and `async for data in stream` (raw bytes)."""

    __slots__ = ("_content", "_deadline", "_first_pending", "_response", "_transport", "_url", "headers", "status")

    def __init__(
        self, transport: Transport, response: aiohttp.ClientResponse, url: str, first_byte_deadline: float
    ) -> None:
        self._transport = transport
        self._response = response
        self._content = response.content
        self._url = url
        self._deadline = first_byte_deadline
        self._first_pending = True
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    def _error(self, exc: BaseException, stage: Stage, first_byte_expired: bool = False) -> UpstreamError:
        return self._transport._map_error(exc, url=self._url, stage=stage, first_byte_expired=first_byte_expired)

    async def read(self) -> bytes:
        """The rest of the body (for error replies), cut at `MAX_ERROR_BODY_BYTES`."""
        try:
            return await _read_body(self._response, self._content, MAX_ERROR_BODY_BYTES, cut=True)
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "body") from exc

    async def read_whole(self) -> bytes:
        """The rest of a 2xx body that turned out not to be a stream; over `MAX_REPLY_BYTES` it is a protocol error."""
        try:
            return await _read_body(self._response, self._content, MAX_REPLY_BYTES, cut=False)
        except _TooLarge:
            raise self._transport._too_large(self._url) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "body") from exc

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        if self._first_pending:
            data = await self._first_chunk()
        else:
            try:
                data = await self._content.readany()
            except _TRANSPORT_ERRORS as exc:
                raise self._error(exc, "stream") from exc
        if not data:
            raise StopAsyncIteration
        return data

    async def _first_chunk(self) -> bytes:
        deadline = asyncio.timeout_at(self._deadline)
        try:
            async with deadline:
                data = await self._content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "first_chunk", deadline.expired()) from exc
        self._first_pending = False
        return data


class _StreamContext:
    """`async with transport.stream(call) as reply`: opens the request, and always closes the response."""

    __slots__ = ("_call", "_response", "_transport")

    def __init__(self, transport: Transport, call: HttpCall) -> None:
        self._transport = transport
        self._call = call
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> UpstreamStream:
        deadline_at = asyncio.get_running_loop().time() + self._transport.timeout.first_token
        self._response = await self._transport._open_response(self._call, deadline_at)
        return UpstreamStream(self._transport, self._response, self._call.url, deadline_at)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if exc_type is None and response.content.is_eof():
            response.release()  # read to the end: the connection goes back to the pool
        else:
            response.close()  # cancelled, failed or left early: abort, so the upstream sees us go


class Transport:
    """One provider's HTTP client: a pooled aiohttp session, timeouts, and error translation.

    The session is created on first use and bound to that event loop; `aclose()` it from the same loop.
    """

    def __init__(self, provider: str, timeout: TimeoutConfig, max_connections: int = 100) -> None:
        self.provider = provider
        self.timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # `total` covers body reads too; `sock_read` is the idle limit between reads (and before the reply's head).
        self._client_timeout = aiohttp.ClientTimeout(
            total=timeout.total,
            connect=timeout.connect,
            sock_connect=timeout.connect,
            sock_read=timeout.first_token,
        )

    @property
    def max_connections(self) -> int:
        return self._max_connections

    def _open_session(self) -> aiohttp.ClientSession:
        """The session, created on first use inside the running loop (aiohttp binds it to that loop)."""
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": _USER_AGENT},
                raise_for_status=False,
                auto_decompress=True,
            )
            self._session = session
        return session

    def _map_error(
        self, exc: BaseException, *, url: str, stage: Stage, first_byte_expired: bool = False
    ) -> UpstreamError:
        return map_transport_error(
            exc,
            provider=self.provider,
            url=url,
            stage=stage,
            timeout=self.timeout,
            first_byte_expired=first_byte_expired,
        )

    async def _open_response(self, call: HttpCall, first_byte_deadline: float) -> aiohttp.ClientResponse:
        """Send `call` and wait for the reply's head (not its body). Used by `send` and `stream`.

        Redirects are not followed: an API that redirects is misconfigured, and following one could carry the
        key's header to another host.
        """
        session = self._open_session()
        headers = call.headers
        if telemetry.active() is not None:  # send the current (attempt) span's trace context
            headers = traced_headers(headers) or headers
        deadline = asyncio.timeout_at(first_byte_deadline)
        try:
            async with deadline:
                return await session.request(
                    call.method, call.url, data=call.body, headers=headers, allow_redirects=False
                )
        except _TRANSPORT_ERRORS as exc:
            raise self._map_error(exc, url=call.url, stage="request", first_byte_expired=deadline.expired()) from exc

    async def send(self, call: HttpCall) -> RawReply:
        """Send `call` and read the whole reply, whatever its status (bounded: see the module docstring)."""
        deadline_at = asyncio.get_running_loop().time() + self.timeout.first_token
        response = await self._open_response(call, deadline_at)
        complete = False
        success = 200 <= response.status < 300
        try:
            limit = MAX_REPLY_BYTES if success else MAX_ERROR_BODY_BYTES
            body = await _read_body(response, response.content, limit, cut=not success)
            complete = response.content.is_eof()
        except _TooLarge:
            raise self._too_large(call.url) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._map_error(exc, url=call.url, stage="body") from exc
        finally:
            if complete:
                response.release()
            else:  # failed, cancelled or cut: abort the connection rather than pool it
                response.close()
        return RawReply(response.status, response.headers, body)

    def _too_large(self, url: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"{self.provider}: the reply from {_where(url)} is larger than {MAX_REPLY_BYTES // (1024 * 1024)} MiB",
            provider=self.provider,
        )

    def stream(self, call: HttpCall) -> _StreamContext:
        """`async with transport.stream(call) as reply:` a streamed reply (see `UpstreamStream`)."""
        return _StreamContext(self, call)

    async def aclose(self) -> None:
        """Close the session and its pooled connections. The transport may be used again afterwards."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
