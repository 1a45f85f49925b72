"""An example custom provider: it answers with the last user message reversed (and, optionally, shouted).

How to write your own provider
------------------------------
1. Subclass `proxy.providers.base.Provider`.
2. Accept `name` and `options` as keyword arguments: the proxy constructs your class as
   `YourClass(name=<the provider's name in the config>, options=<the YAML `options` as a dict>)`.
   Keep `name` as `self.name`; validate `options` here and raise `ValueError` for bad ones (the message is shown
   to whoever edits the YAML).
3. Implement `async def complete(self, request, model) -> ChatResponse` and `async def stream(self, request, model)`
   as an async generator of `StreamChunk`s: first content, then a last chunk with `finish_reason` (and `usage`).
   `request` is a normalized `proxy.types.ChatRequest`; `model` is the target's `model` string from the YAML.
4. Signal failures with `proxy.errors` classes (`UpstreamServerError`, `UpstreamRateLimited(retry_after=...)`,
   `StreamInterrupted(partial_text=...)`, ...) so retries, fallbacks and breakers treat your provider like any
   other. Optionally override `validate_request` and `aclose` (release clients when a reload retires you).

Using it
--------
Make the module importable (put it on `PYTHONPATH`, or install it), then:

```yaml
providers:
  reverser:
    type: python
    class: custom_provider:ReverseProvider
    options: {uppercase: true, words_per_chunk: 2}
models:
  default:
    targets: [{provider: reverser, model: reverse-1}]
```

Then `PYTHONPATH=examples llm-proxy complete "hello world"` answers `DLROW OLLEH`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from proxy.errors import UpstreamBadRequest
from proxy.providers.base import Provider
from proxy.types import ChatRequest, ChatResponse, StreamChunk, Usage


class ReverseProvider(Provider):
    """Replies with the last user message reversed. Options: `uppercase` (bool), `words_per_chunk` (int >= 1)."""

    type = "python"

    def __init__(self, *, name: str, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"uppercase", "words_per_chunk"}
        if unknown:
            raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
        words_per_chunk = options.get("words_per_chunk", 1)
        if not isinstance(words_per_chunk, int) or words_per_chunk < 1:
            raise ValueError(f"`words_per_chunk` must be an integer >= 1, got {words_per_chunk!r}")
        self.name = name
        self.uppercase = bool(options.get("uppercase", False))
        self.words_per_chunk = words_per_chunk

    def _answer(self, request: ChatRequest) -> str:
        users = [message.text() for message in request.messages if message.role == "user"]
        if not users or not users[-1]:
            raise UpstreamBadRequest(f"{self.name}: nothing to reverse", provider=self.name, status=400)
        text = users[-1][::-1]
        return text.upper() if self.uppercase else text

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        prompt = sum(len(message.text().split()) for message in request.messages)
        return Usage(input_tokens=prompt, output_tokens=len(text.split()))

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        started = time.perf_counter()
        text = self._answer(request)
        return ChatResponse(
            text=text,
            finish_reason="stop",
            usage=self._usage(request, text),
            provider=self.name,
            model=model,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        text = self._answer(request)
        words = text.split(" ")
        yield StreamChunk(model=model)
        for start in range(0, len(words), self.words_per_chunk):
            piece = " ".join(words[start : start + self.words_per_chunk])
            yield StreamChunk(text=piece if start == 0 else " " + piece)
        yield StreamChunk(finish_reason="stop", usage=self._usage(request, text))
