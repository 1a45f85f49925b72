"""The provider interface: a pure codec per wire protocol, and the `Provider` the engine calls.

A codec translates, it never does I/O:
- `encode(request, model, stream=...)` -> `HttpCall` (URL, headers, body bytes); deterministic, never mutates its
  input (a retry encodes again);
- `decode(status, headers, body)` -> `ChatResponse` for a 2xx reply, or raises the right `UpstreamError` subclass;
- `decode_error(status, headers, body)` -> the `UpstreamError` for a non-2xx reply (never raises, whatever the
  body: an HTML 502 is fine);
- `stream_decoder()` -> a fresh `StreamDecoder` for one streamed reply, fed raw bytes as they arrive.

A `Provider` owns one codec and one transport session; `complete()`/`stream()` are the only network calls.
Custom providers (`type: python`) subclass `Provider` directly and may skip codecs altogether.

Must not import routing, policies, the engine or the fronts.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import RequestError, UpstreamError
from proxy.types import ChatRequest, ChatResponse, StreamChunk


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One upstream HTTP request, fully encoded."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    method: str = "POST"


class StreamDecoder(Protocol):
    """Decodes one streamed reply incrementally. Bytes may be split anywhere (even inside a UTF-8 character)."""

    def feed(self, data: bytes) -> list[StreamChunk]:
        """Decode what `data` completes; raises `UpstreamError` for an error event or a malformed chunk."""
        ...

    def close(self) -> list[StreamChunk]:
        """The byte stream ended: flush, and raise `StreamInterrupted` unless the terminal event was seen."""
        ...

    def raise_pending(self) -> None:
        """Raise the error held back behind the chunks the last `feed()` returned, if there is one.

        An error decoded after other chunks of the same `feed()` waits, so those chunks are delivered first; the
        next `feed()` or `close()` raises it, and so does this, at once, once the chunks are delivered (the next
        bytes may never come). A decoder that holds nothing back does nothing here."""
        ...

    @property
    def done(self) -> bool:
        """True once the protocol's terminal event (`[DONE]`, `message_stop`) has been decoded."""
        ...


class Codec(Protocol):
    provider: str  # the provider's config name, put on responses and errors

    def encode(self, request: ChatRequest, model: str, *, stream: bool) -> HttpCall: ...

    def decode(self, status: int, headers: Mapping[str, str], body: bytes) -> ChatResponse: ...

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError: ...

    def stream_decoder(self) -> StreamDecoder: ...


class Provider(abc.ABC):
    """One configured provider. The engine calls `complete`/`stream` with the upstream model id to use."""

    name: str
    type: str

    @abc.abstractmethod
    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        """Send the request and return the whole reply, or raise an `UpstreamError` subclass."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        """Yield chunks as they arrive; raise an `UpstreamError` subclass on failure (also mid-stream)."""

    def validate_request(self, request: ChatRequest, model: str) -> None:  # noqa: B027 - optional hook
        """Raise `RequestError` if this provider cannot take the request (unsupported parameters...)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called when a config reload retires this provider."""


class BoundModel:
    """A provider bound to one upstream model: the per-target interface (`model`, `max_tokens`, ...)."""

    __slots__ = ("context_window", "max_output_tokens", "model", "provider")

    def __init__(
        self,
        provider: Provider,
        model: str,
        *,
        context_window: int | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.context_window = context_window
        self.max_output_tokens = max_output_tokens

    @property
    def max_tokens(self) -> int | None:
        return self.max_output_tokens

    def validate_request(self, request: ChatRequest) -> None:
        if (
            self.max_output_tokens is not None
            and request.max_tokens is not None
            and request.max_tokens > self.max_output_tokens
        ):
            raise RequestError(
                f"max_tokens {request.max_tokens} exceeds the {self.max_output_tokens} output tokens "
                f"`{self.provider.name}/{self.model}` allows",
                param="max_tokens",
            )
        self.provider.validate_request(request, self.model)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self.provider.complete(request, self.model)

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        return self.provider.stream(request, self.model)
