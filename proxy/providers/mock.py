"""The `mock` provider: canned replies and scripted faults, no network. For offline demos and tests.

Driven entirely by `MockConfig` (the provider's `mock:` block):

- what it says: `echo` (the last user message's text), else `replies` (cycled in call order), else `reply`;
  a request's `max_tokens` truncates the reply (finish_reason `length`);
- how fast: `latency` before a whole reply; `first_token` before a stream's first chunk, `chunk_delay` between
  text chunks of `chunk_size` words;
- how it fails (`fault`): which calls fail is decided per call: only the first `first` calls when set, and then a
  fraction `rate` of them, drawn from `random.Random(seed)` (so a run is reproducible). A failing call raises what
  a real provider would:
  - `timeout: true`: waits the provider's `timeout.first_token`, then `UpstreamTimeout(phase="first_token")`;
  - `status`: the error class for that HTTP status (429 -> `UpstreamRateLimited` with `retry_after`, 503/529 ->
    `UpstreamOverloaded`, 401 -> `UpstreamAuthError`, ...), at once, as an upstream rejects before generating;
  - `cut_after: N`: a stream stops after N text chunks (or before its last chunk, if the reply is shorter)
    with `StreamInterrupted`, whose `partial_text` is what was sent; a whole reply fails with
    `UpstreamConnectError` (the connection dropped mid-reply);
  - `malformed_after: N`: `UpstreamProtocolError` after N text chunks (at once for a whole reply);
  - a fault naming none of these is an HTTP 500.

Usage is estimated deterministically (about 4 characters per token). The model id in replies is the target's
`model` string. A stream yields a first chunk with `id`/`model`, the text chunks, then a last chunk with
`finish_reason` and `usage`.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import AsyncIterator

from proxy.config.model import MockConfig, MockFault, ProviderConfig
from proxy.errors import (
    StreamInterrupted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.providers.base import Provider
from proxy.providers.http_provider import error_for_status
from proxy.types import ChatRequest, ChatResponse, FinishReason, StreamChunk, Usage

__all__ = ["MockProvider", "estimate_tokens"]

_WORD = re.compile(r"\s*\S+\s*")  # a word with the whitespace around it, so chunks join back into the text
_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A deterministic token estimate: about 4 characters per token, at least 1 for non-empty text."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _split_words(text: str, words_per_chunk: int) -> list[str]:
    words = _WORD.findall(text)
    size = max(1, words_per_chunk)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


class MockProvider(Provider):
    """A provider that answers from its config. See the module docstring for every option."""

    type = "mock"

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name
        self._cfg = cfg.mock or MockConfig()
        self._first_token_timeout = cfg.timeout.first_token
        self._rng = random.Random(self._cfg.seed)
        self._calls = 0

    def __repr__(self) -> str:
        return f"MockProvider(name={self.name!r})"

    @property
    def calls(self) -> int:
        """How many calls (`complete` and `stream`) this provider has received."""
        return self._calls

    # --- what a call does ---------------------------------------------------------------------------------

    def _next_call(self) -> tuple[int, MockFault | None]:
        """Number this call and decide whether it fails."""
        index = self._calls
        self._calls += 1
        fault = self._cfg.fault
        if fault is None or (fault.first is not None and index >= fault.first):
            return index, None
        if fault.rate < 1.0 and self._rng.random() >= fault.rate:
            return index, None
        return index, fault

    def _reply_text(self, request: ChatRequest, index: int) -> tuple[str, FinishReason]:
        cfg = self._cfg
        if cfg.echo:
            users = [m for m in request.messages if m.role == "user"]
            text = users[-1].text() if users else ""
        elif cfg.replies:
            text = cfg.replies[index % len(cfg.replies)]
        else:
            text = cfg.reply
        limit = request.max_tokens
        if limit is not None and estimate_tokens(text) > limit:
            return text[: limit * _CHARS_PER_TOKEN], "length"
        return text, "stop"

    @staticmethod
    def _usage(request: ChatRequest, text: str) -> Usage:
        prompt = "\n".join(m.text() for m in request.messages)
        return Usage(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(text))

    async def _fail_before_reply(self, fault: MockFault, model: str) -> None:
        """Raise the fault's error if it strikes before any output (timeout, status)."""
        if fault.timeout:
            await asyncio.sleep(self._first_token_timeout)
            raise UpstreamTimeout(
                f"no reply within {self._first_token_timeout:g}s (mock fault)",
                provider=self.name,
                phase="first_token",
            )
        if fault.status is not None or (fault.cut_after is None and fault.malformed_after is None):
            raise self._status_error(fault, model)

    def _status_error(self, fault: MockFault, model: str) -> UpstreamError:
        status = fault.status if fault.status is not None else 500
        message = fault.message or f"mock fault: HTTP {status} from `{model}`"
        return error_for_status(status)(message, provider=self.name, status=status, retry_after=fault.retry_after)

    def _mid_reply_error(
        self, fault: MockFault, sent: int, partial_text: str, *, at_end: bool = False
    ) -> UpstreamError | None:
        """The error that strikes after `sent` text chunks, if any (at the end, a count past the reply strikes)."""
        if fault.malformed_after is not None and (at_end or sent >= fault.malformed_after):
            return UpstreamProtocolError(f"malformed chunk after {sent} chunks (mock fault)", provider=self.name)
        if fault.cut_after is not None and (at_end or sent >= fault.cut_after):
            return StreamInterrupted(
                f"the stream broke off after {sent} chunks (mock fault)",
                provider=self.name,
                partial_text=partial_text,
            )
        return None

    # --- the Provider interface ---------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        started = time.perf_counter()
        index, fault = self._next_call()
        if fault is not None:
            await self._fail_before_reply(fault, model)
        if self._cfg.latency > 0:
            await asyncio.sleep(self._cfg.latency)
        if fault is not None:
            if fault.malformed_after is not None:
                raise UpstreamProtocolError("malformed reply (mock fault)", provider=self.name)
            raise UpstreamConnectError("connection dropped mid-reply (mock fault)", provider=self.name)
        text, finish_reason = self._reply_text(request, index)
        return ChatResponse(
            text=text,
            finish_reason=finish_reason,
            usage=self._usage(request, text),
            provider=self.name,
            model=model,
            id=f"mock-{index}",
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        index, fault = self._next_call()
        if fault is not None:
            await self._fail_before_reply(fault, model)
        text, finish_reason = self._reply_text(request, index)
        if self._cfg.first_token > 0:
            await asyncio.sleep(self._cfg.first_token)
        yield StreamChunk(id=f"mock-{index}", model=model)
        sent: list[str] = []
        for piece in _split_words(text, self._cfg.chunk_size):
            if fault is not None and (error := self._mid_reply_error(fault, len(sent), "".join(sent))):
                raise error
            if sent and self._cfg.chunk_delay > 0:
                await asyncio.sleep(self._cfg.chunk_delay)
            sent.append(piece)
            yield StreamChunk(text=piece)
        if fault is not None and (error := self._mid_reply_error(fault, len(sent), "".join(sent), at_end=True)):
            raise error
        yield StreamChunk(finish_reason=finish_reason, usage=self._usage(request, text))
