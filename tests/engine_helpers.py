"""Test helpers for driving the engine on a fake clock: `FakeClock`, a scriptable `ScriptedProvider` that records
when (on that clock) and with what each call arrived, and `make_engine` to build an engine from YAML around them.

`FakeClock.sleep` never really sleeps. Sleepers are kept in a heap; a driver task waits until the event loop has
nothing else to run (every task is blocked), then moves time to the earliest wake-up and wakes exactly the sleepers
due then. So concurrent waits resolve in time order, and a run is deterministic (no wall-clock time involved).
`advance()` moves time by hand (TTL expiry, breaker cooldowns) between requests.

`ScriptedProvider` is a `type: python` provider (`class: tests.engine_helpers:ScriptedProvider`). Options:
- `reply` (str): the answer text; a stream sends it one word per chunk;
- `latency` (seconds): time spent on the fake clock before each call answers or fails;
- `script` (list): the outcome of each successive call; after it runs out every call gets `then` (default `ok`).
  Outcomes: `ok`; an HTTP status (`503`, `429`, `401`, `400`...); `429@2.5` (a status with a retry-after in
  seconds); `timeout`; `context` (a context-length error); `cut:N` (a stream breaks after N text chunks, a whole
  reply fails as a dropped connection);
- `usage` ([input, output]): the usage it reports (default [10, 5]).
`make_engine` attaches the fake clock to every `ScriptedProvider` so `latency` and the recorded times use it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.load import load_config_text
from proxy.engine import Engine
from proxy.errors import (
    ContextLengthExceeded,
    StreamInterrupted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.base import Provider
from proxy.providers.http_provider import error_for_status
from proxy.runtime import Runtime
from proxy.types import ChatRequest, ChatResponse, StreamChunk, Usage

T0 = 1000.0
_FALLBACK_SETTLE_ROUNDS = 200  # for an event loop without a visible ready queue


class FakeClock:
    """A clock (`now()`) and an async `sleep()` on virtual time; see the module docstring."""

    def __init__(self, start: float = T0) -> None:
        self._now = start
        self.sleeps: list[float] = []  # every delay asked of `sleep`, in call order
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (only between requests: sleepers are woken by the driver, not by this)."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """The `sleep` to inject into the code under test: recorded in `sleeps`."""
        self.sleeps.append(seconds)
        await self.elapse(seconds)

    async def elapse(self, seconds: float) -> None:
        """Spend `seconds` of virtual time without recording it (a fake upstream's latency)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (self._now + seconds, next(self._order), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _settle(self) -> None:
        """Return once no other task can run (all are waiting on something)."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        for _ in range(_FALLBACK_SETTLE_ROUNDS if ready is None else 1_000_000):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    async def _drive(self) -> None:
        while True:
            await self._settle()
            while self._timers and self._timers[0][2].done():  # sleepers that were cancelled
                heapq.heappop(self._timers)
            if not self._timers:
                return
            when = self._timers[0][0]
            self._now = max(self._now, when)
            while self._timers and self._timers[0][0] <= when:
                _, _, wake = heapq.heappop(self._timers)
                if not wake.done():
                    wake.set_result(None)

    async def aclose(self) -> None:
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Call:
    """One call a `ScriptedProvider` received."""

    at: float  # the clock's reading when the call arrived
    model: str
    max_tokens: int | None
    stream: bool
    outcome: str


class ScriptedProvider(Provider):
    """A `type: python` provider whose calls follow a script; see the module docstring."""

    type = "python"

    def __init__(self, *, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.reply = str(options.get("reply", f"answer from {name}"))
        self.latency = float(options.get("latency", 0.0))
        self.script = [str(outcome) for outcome in options.get("script", ())]
        self.then = str(options.get("then", "ok"))
        usage = options.get("usage", (10, 5))
        self.usage = Usage(input_tokens=int(usage[0]), output_tokens=int(usage[1]))
        self.calls: list[Call] = []
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def attach(self, clock: FakeClock) -> None:
        self.clock, self.sleep = clock.now, clock.elapse

    @property
    def times(self) -> list[float]:
        return [call.at for call in self.calls]

    def _begin(self, request: ChatRequest, model: str, stream: bool) -> str:
        index = len(self.calls)
        outcome = self.script[index] if index < len(self.script) else self.then
        self.calls.append(Call(self.clock(), model, request.max_tokens, stream, outcome))
        return outcome

    def _error(self, outcome: str) -> UpstreamError | None:
        """The error an outcome raises before any output, or None (`ok`, `cut:N`)."""
        if outcome == "ok" or outcome.startswith("cut:"):
            return None
        if outcome == "timeout":
            return UpstreamTimeout(f"{self.name}: scripted timeout", provider=self.name, phase="first_token")
        if outcome == "context":
            return ContextLengthExceeded(f"{self.name}: scripted context overflow", provider=self.name, status=400)
        status, _, retry_after = outcome.partition("@")
        code = int(status)
        return error_for_status(code)(
            f"{self.name}: scripted HTTP {code}",
            provider=self.name,
            status=code,
            retry_after=float(retry_after) if retry_after else None,
        )

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        outcome = self._begin(request, model, stream=False)
        if self.latency:
            await self.sleep(self.latency)
        error = self._error(outcome)
        if error is not None:
            raise error
        if outcome.startswith("cut:"):
            raise UpstreamConnectError(f"{self.name}: connection dropped mid-reply", provider=self.name)
        return ChatResponse(
            text=self.reply, finish_reason="stop", usage=self.usage, provider=self.name, model=model, id="r"
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        outcome = self._begin(request, model, stream=True)
        if self.latency:
            await self.sleep(self.latency)
        error = self._error(outcome)
        if error is not None:
            raise error
        cut = int(outcome[4:]) if outcome.startswith("cut:") else None
        yield StreamChunk(id="r", model=model)
        words = self.reply.split(" ")
        for index, word in enumerate(words):
            if cut is not None and index >= cut:
                sent = " ".join(words[:index])
                raise StreamInterrupted(f"{self.name}: scripted cut", provider=self.name, partial_text=sent)
            yield StreamChunk(text=word if index == 0 else " " + word)
        yield StreamChunk(finish_reason="stop", usage=self.usage)


SCRIPTED = "tests.engine_helpers:ScriptedProvider"


def scripted(
    *, limits: Mapping[str, Any] | None = None, breaker: Mapping[str, Any] | None = None, **options: Any
) -> dict[str, Any]:
    """A provider entry for a config dict: a `ScriptedProvider` with these options (and provider limits/breaker)."""
    entry: dict[str, Any] = {"type": "python", "class": SCRIPTED, "options": options}
    if limits is not None:
        entry["limits"] = dict(limits)
    if breaker is not None:
        entry["breaker"] = dict(breaker)
    return entry


def make_engine(
    config: str | Mapping[str, Any], clock: FakeClock, *, seed: int = 0
) -> tuple[Engine, dict[str, Provider]]:
    """An engine for `config` (YAML text, or a dict written out as JSON, which is YAML) on `clock` with
    `random.Random(seed)`; and its providers by name (the instances the engine calls), every `ScriptedProvider`
    among them attached to `clock`."""
    text = textwrap.dedent(config) if isinstance(config, str) else json.dumps({"version": 1, **config})
    runtime = Runtime.build(load_config_text(text, env={}), clock=clock.now, sleep=clock.sleep, rng=random.Random(seed))
    for provider in runtime.providers.values():
        if isinstance(provider, ScriptedProvider):
            provider.attach(clock)
    return Engine(runtime), runtime.providers
