"""`until_disconnect` (proxy/fronts/openai_api.py), which both HTTP fronts use to cancel work when the client leaves.

First on its own, with an ASGI `receive` over a queue: the work's result comes back and nothing of the watcher runs
on afterwards (it takes no later message and cancels nothing); a client that leaves gets `ClientGone` after one
`CancelledError` whose cleanup (with awaits) runs to the end; a cancellation from outside stays a `CancelledError`,
also when the client leaves during its cleanup (no second cancellation) or before it; a disconnect seen while a
timeout inside the work unwinds is not lost; two calls in a row on one `receive` (the first chunk's wait, then the
stream) do not steal each other's messages. Then over real HTTP (the OpenAI front): a client that closes its
connection before a whole answer, before the first chunk or mid-stream gets the `ClientGone` path (499, or the
stream's log line), and the provider's cleanup runs once, to the end, and gives its concurrency slot back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import anyio
import pytest

from proxy.fronts import openai_api
from proxy.fronts.http_app import build_app
from proxy.fronts.openai_api import CLIENT_CLOSED, ClientGone, until_disconnect
from proxy.providers.base import Provider
from proxy.types import ChatRequest, ChatResponse, StreamChunk
from tests.http_server import engine_from_yaml, serve_app

DISCONNECT = {"type": "http.disconnect"}


class Client:
    """An ASGI `receive` over a queue (each message is taken once); `waiting` counts the receive() calls in progress."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiting = 0

    async def receive(self) -> dict[str, Any]:
        self.waiting += 1
        try:
            return await self.messages.get()
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self.messages.put_nowait(DISCONNECT)


async def forever() -> None:
    await asyncio.Event().wait()


def others() -> set[asyncio.Task[Any]]:
    """The tasks still pending besides the test's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_the_result_comes_back_and_the_watcher_takes_no_later_message_nor_cancels():
    client = Client()
    before = others()

    async def work() -> int:
        await asyncio.sleep(0)  # the watcher starts meanwhile
        assert client.waiting == 1  # it waits in receive()
        return 42

    assert await until_disconnect(client.receive, work()) == 42
    watchers = others() - before
    assert all(task.cancelling() for task in watchers)  # any still pending was cancelled (it is not awaited)
    client.leave()  # a message after the return is not the old watcher's
    for _ in range(5):
        await asyncio.sleep(0)  # would raise CancelledError if the watcher still cancelled us
    assert others() == before and client.waiting == 0
    assert client.messages.qsize() == 1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_error_of_the_work_is_raised_as_is_and_the_watcher_stops():
    client = Client()
    before = others()

    async def work() -> None:
        await asyncio.sleep(0)
        raise ValueError("the work failed")

    with pytest.raises(ValueError, match="the work failed"):
        await until_disconnect(client.receive, work())
    await asyncio.sleep(0)
    assert others() == before and client.waiting == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def cleanup(seen: list[str], steps: int = 3, during: Callable[[], None] | None = None) -> None:
    """A cleanup that takes real awaits (closing the upstream, giving a lease back); notes a second cancel."""
    for step in range(steps):
        if step == 1 and during is not None:
            during()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            seen.append("cancelled again")
            raise
    seen.append("cleaned up")


async def test_a_client_that_leaves_gets_client_gone_after_one_cancellation_and_a_whole_cleanup():
    client = Client()
    seen: list[str] = []
    before = others()

    async def work() -> None:
        client.leave()
        try:
            await forever()
        except asyncio.CancelledError:
            seen.append("cancelled")
            await cleanup(seen)
            raise

    with pytest.raises(ClientGone):
        await until_disconnect(client.receive, work())
    assert seen == ["cancelled", "cleaned up"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # our cancel was taken back
    await asyncio.sleep(0)
    assert others() == before and client.waiting == 0


@pytest.mark.parametrize("leaves", [False, True], ids=["client-stays", "client-leaves-during-cleanup"])
async def test_a_cancellation_from_outside_stays_a_cancelled_error_with_one_cancel(leaves):
    client = Client()
    seen: list[str] = []
    before = others()

    async def work() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            seen.append("cancelled")
            await cleanup(seen, steps=5, during=client.leave if leaves else None)
            raise

    runner = asyncio.create_task(until_disconnect(client.receive, work()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    runner.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert seen == ["cancelled", "cleaned up"]  # no second cancel cut the cleanup short
    await asyncio.sleep(0)
    assert others() == before and client.waiting == 0


async def test_an_outside_cancellation_after_the_client_left_is_a_cancelled_error_not_client_gone():
    client = Client()
    seen: list[str] = []
    released = asyncio.Event()

    async def work() -> None:
        client.leave()
        try:
            await forever()
        except asyncio.CancelledError:
            seen.append("cancelled")
            await released.wait()  # a slow cleanup, interrupted by the cancellation from outside
            raise

    runner = asyncio.create_task(until_disconnect(client.receive, work()))
    with anyio.fail_after(5):
        while seen != ["cancelled"]:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_a_disconnect_while_a_timeout_inside_the_work_unwinds_still_cancels_the_work():
    client = Client()
    seen: list[str] = []

    async def work() -> None:
        try:
            async with asyncio.timeout(0):
                try:
                    await forever()
                except asyncio.CancelledError:
                    seen.append("timed out")
                    client.leave()  # while the timeout's cancellation is on its way out
                    while client.messages.qsize():  # noqa: ASYNC110 - the watcher takes it meanwhile
                        await asyncio.sleep(0)
                    await cleanup(seen)
                    raise
        except TimeoutError:
            seen.append("went on")  # a retry, say
        await forever()  # the client's disconnect must still end this

    runner = asyncio.create_task(until_disconnect(client.receive, work()))
    done, _ = await asyncio.wait({runner}, timeout=5)  # a lost disconnect would hang (no cancel from here)
    if not done:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert done, "the disconnect was lost: the work went on"
    assert isinstance(runner.exception(), ClientGone)
    assert seen == ["timed out", "cleaned up", "went on"]  # the timeout's cleanup was not cancelled again
    assert runner.cancelling() == 0  # our cancel was taken back


async def test_two_calls_in_a_row_on_one_receive_do_not_steal_each_others_messages():
    client = Client()  # as for a stream: the wait for its first chunk, then the response

    async def first_chunk() -> str:
        await asyncio.sleep(0)
        return "first"

    assert await until_disconnect(client.receive, first_chunk()) == "first"
    client.leave()  # at once: the first watcher, cancelled but not awaited yet, must not take it
    with pytest.raises(ClientGone):
        await until_disconnect(client.receive, forever())
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# --- over HTTP ----------------------------------------------------------------------------------------------------

TOKEN = "test-until-disconnect-token-1357"
CONFIG = """
version: 1
server: {auth: {bearer_tokens: ["${TOKEN}"]}}
providers:
  hanging:
    type: python
    class: "tests.test_until_disconnect:HangingProvider"
    limits: {concurrency: 1}
retry: {max_attempts: 1}
cache: {backend: none}
models:
  default: {targets: [{provider: hanging, model: hang-1}]}
"""
HI = [{"role": "user", "content": "hi"}]


class HangingProvider(Provider):
    """Hangs (a stream after its first chunk when the request says so); cancelled, it cleans up with real awaits."""

    seen: ClassVar[list[str]] = []

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        await self._hang()
        raise AssertionError("unreachable")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        if request.max_tokens == 2:
            yield StreamChunk(text="Hello")
        await self._hang()
        yield StreamChunk(text="unreachable")

    async def _hang(self) -> None:
        self.seen.append("started")
        try:
            await forever()
        except asyncio.CancelledError:
            self.seen.append("cancelled")
            for _ in range(3):
                try:
                    await asyncio.sleep(0.001)  # like closing a connection
                except asyncio.CancelledError:
                    self.seen.append("cancelled again")
                    raise
            self.seen.append("cleaned up")
            raise


async def eventually(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - engine state, no event to wait on
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("when", ["before-the-answer", "before-the-first-chunk", "mid-stream"])
async def test_a_client_that_closes_its_connection_gets_client_gone_and_the_cleanup_runs_once(when, caplog):
    HangingProvider.seen.clear()
    caplog.set_level(logging.INFO, logger="proxy.fronts.openai_api")
    engine = engine_from_yaml(CONFIG, {"TOKEN": TOKEN})
    inner = build_app(engine, api_routes=openai_api.routes)
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # notes the status the proxy answered
        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        await inner(scope, receive, noting)

    body = {"model": "default", "messages": HI, "stream": when != "before-the-answer"}
    if when == "mid-stream":
        body["max_tokens"] = 2  # the provider streams its first chunk, then hangs
    try:
        async with (
            serve_app(app) as base_url,
            aiohttp.ClientSession(base_url, headers={"authorization": f"Bearer {TOKEN}"}) as session,
        ):
            if when == "mid-stream":
                response = await session.post("/v1/chat/completions", json=body)
                first = b""
                while b"Hello" not in first:  # up to the first chunk of text
                    first += await response.content.readuntil(b"\n\n")
                response.close()  # drops the connection
            else:

                async def ask() -> None:
                    await session.post("/v1/chat/completions", json=body)

                client = asyncio.create_task(ask())
                await eventually(lambda: HangingProvider.seen == ["started"])
                client.cancel()  # the client gives up: its connection closes
                await asyncio.gather(client, return_exceptions=True)
            await eventually(lambda: engine.metrics.total_requests == 1)
            assert HangingProvider.seen == ["started", "cancelled", "cleaned up"]
            assert engine.metrics.cancelled_requests == 1 and engine.metrics.failed_requests == 0
            hanging = next(p for p in await engine.list_providers() if p["name"] == "hanging")
            assert hanging["limits"]["headroom"]["in_flight"] == 0  # the concurrency slot was given back
            if when == "mid-stream":
                await eventually(lambda: "client disconnected mid-stream" in caplog.text)
                assert statuses == [200]
            else:
                await eventually(lambda: statuses)
                assert statuses == [CLIENT_CLOSED]  # the handler took the `ClientGone` path
    finally:
        await engine.aclose()
