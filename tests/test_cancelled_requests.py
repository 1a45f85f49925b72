"""A client that goes away mid-answer makes its request `cancelled`: counted apart from successes and failures
(`cancelled_requests` in `get_metrics`, `llm_proxy_requests_total{result="cancelled"}` on `/metrics`), never an
upstream error, and logged with status `cancelled`. Through both HTTP fronts (a client that closes its connection
after the first chunk, before a whole answer, or before a stream's first chunk: the upstream call is cancelled, once,
and its cleanup runs) and the MCP front (a cancelled `tools/call`), for a stream
replayed from the response cache (memory and Redis) that its client leaves partway, and for a request cancelled
while the engine waits on Redis: its cache lookup, or the store of its answer (a whole answer the client has not
got, or a stream whose text is all out but that has not ended), or the release of its rate-limit lease (limits
kept in Redis). A stream's cleanup after its client left or its upstream broke (giving its lease back to Redis)
may be cancelled again (the MCP SDK's cancel scope does it): the request is counted before it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Receive, Scope, Send

from proxy.config import load_config_text
from proxy.config.model import Secret, StateConfig
from proxy.engine import Engine
from proxy.errors import UpstreamServerError
from proxy.fronts import anthropic_api, openai_api
from proxy.fronts.http_app import build_app
from proxy.fronts.mcp_server import McpFront
from proxy.policies.redis_cache import RedisCache
from proxy.policies.redis_ratelimit import RedisLimiter
from proxy.policies.redis_state import RedisState
from proxy.providers.base import Provider
from proxy.runtime import Runtime
from proxy.types import ChatRequest, ChatResponse, StreamChunk, Usage
from tests.http_server import engine_app, engine_from_yaml, serve_app
from tests.redis_helpers import REDIS_URL, TcpProxy, needs_redis, redis_prefix

__all__ = ["redis_prefix"]  # the fixture, imported for the Redis tests below

TOKEN = "test-cancelled-token-2468"
CONFIG = """
version: 1
server: {auth: {bearer_tokens: ["${TOKEN}"]}}
providers:
  stalling: {type: python, class: "tests.test_cancelled_requests:StallingProvider"}
  fine: {type: mock, mock: {reply: "a fine answer"}}
retry: {max_attempts: 1}
cache: {backend: none}
models:
  default: {targets: [{provider: stalling, model: stall-1}]}
  fine: {targets: [{provider: fine, model: fine-1}]}
"""
HI = [{"role": "user", "content": "hi"}]


class StallingProvider(Provider):
    """Streams one chunk (none when `silent`), then waits forever (a whole answer never comes); counts the calls
    made, cancelled while they waited, and ended. With `slow_cleanup` its cleanup takes a real await (like closing
    a connection), which a second cancellation would interrupt: the call would then never count as ended."""

    started = cancelled = ended = 0
    silent = slow_cleanup = False

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    @staticmethod
    async def _wait() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            StallingProvider.cancelled += 1
            raise

    @staticmethod
    async def _clean_up() -> None:
        if StallingProvider.slow_cleanup:
            await asyncio.sleep(0.001)
        StallingProvider.ended += 1

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        StallingProvider.started += 1
        try:
            await self._wait()
        finally:
            await self._clean_up()
        raise AssertionError("unreachable")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        StallingProvider.started += 1
        try:
            if not StallingProvider.silent:
                yield StreamChunk(text="Hello")
            await self._wait()
        finally:
            await self._clean_up()


@pytest.fixture(autouse=True)
def request_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    StallingProvider.started = StallingProvider.cancelled = StallingProvider.ended = 0
    StallingProvider.silent = StallingProvider.slow_cleanup = False
    caplog.set_level(logging.INFO, logger="proxy.request")
    return caplog


async def eventually(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - engine state, no event to wait on
            await anyio.sleep(0.01)


def statuses(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.status for record in caplog.records if record.name == "proxy.request"]


def request_counts(text: str) -> dict[str, float]:
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llm_proxy_requests_total" and sample.labels["model"] == "default"
    }


def assert_one_cancelled(engine: Engine) -> None:
    snap = engine.metrics_snapshot()
    assert (snap["total_requests"], snap["cancelled_requests"]) == (1, 1)
    assert (snap["success_requests"], snap["failed_requests"]) == (0, 0)
    assert snap["provider_errors"]["stalling"] == 0 and snap["errors_by_kind"] == {}  # no upstream error either
    assert snap["streams_truncated"] == 0
    assert snap["models"]["default"]["cancelled"] == 1 and snap["models"]["default"]["failures"] == 0


STREAMS = {
    "openai": ("/v1/chat/completions", {"model": "default", "messages": HI, "stream": True}),
    "anthropic": ("/v1/messages", {"model": "default", "max_tokens": 50, "messages": HI, "stream": True}),
}


@pytest.mark.parametrize("front", list(STREAMS))
async def test_closing_the_connection_after_the_first_chunk_is_a_cancelled_request(front, request_log):
    path, body = STREAMS[front]
    routes = [*openai_api.routes, *anthropic_api.routes]
    async with (
        engine_app(CONFIG, api_routes=routes, env={"TOKEN": TOKEN}) as (base_url, engine),
        aiohttp.ClientSession(base_url, headers={"authorization": f"Bearer {TOKEN}"}) as session,
    ):
        response = await session.post(path, json=body)
        assert response.status == 200
        first = b""
        while b"Hello" not in first:  # up to the first chunk of text
            first += await response.content.readuntil(b"\n\n")
        response.close()  # drops the connection
        await eventually(lambda: StallingProvider.ended == 1 and engine.metrics.total_requests == 1)
        assert_one_cancelled(engine)
        async with session.get("/metrics") as scraped:
            counts = request_counts(await scraped.text())
    assert counts == {"success": 0, "failure": 0, "cancelled": 1}
    assert statuses(request_log) == ["cancelled"]


ASKS = {
    "openai": ("/v1/chat/completions", {"model": "default", "messages": HI}),
    "anthropic": ("/v1/messages", {"model": "default", "max_tokens": 50, "messages": HI}),
}


@pytest.mark.parametrize("front", list(ASKS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole-answer", "stream-before-first-chunk"])
async def test_closing_the_connection_before_any_answer_cancels_the_upstream_call(front, stream, request_log):
    """Before a whole answer, or before a stream's first chunk (the response has not started: the front is waiting
    on the engine). The upstream call is cancelled at once, once: its slow cleanup is not interrupted. The front
    then answers 499 (nginx's "client closed request"), which nobody reads."""
    path, body = ASKS[front]
    StallingProvider.silent = StallingProvider.slow_cleanup = True
    engine = engine_from_yaml(CONFIG, {"TOKEN": TOKEN})
    app = build_app(engine, api_routes=[*openai_api.routes, *anthropic_api.routes])
    answered: list[int] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        await app(scope, receive, send_recorded)

    async def ask(base_url: str) -> None:
        async with aiohttp.ClientSession(base_url, headers={"authorization": f"Bearer {TOKEN}"}) as session:
            await session.post(path, json={**body, "stream": stream})

    try:
        async with serve_app(recording) as base_url:
            client = asyncio.create_task(ask(base_url))
            await eventually(lambda: StallingProvider.started == 1)
            client.cancel()  # the client gives up: its connection closes
            await asyncio.gather(client, return_exceptions=True)
            await eventually(lambda: StallingProvider.ended == 1 and engine.metrics.total_requests == 1)
            assert (StallingProvider.started, StallingProvider.cancelled, StallingProvider.ended) == (1, 1, 1)
            assert_one_cancelled(engine)
            assert engine.metrics_snapshot()["stream_requests"] == int(stream)
            await eventually(lambda: answered)
            assert answered == [499]
    finally:
        await engine.aclose()
    assert statuses(request_log) == ["cancelled"]


LIMITED_STALLING = (
    CONFIG.replace('StallingProvider"}', 'StallingProvider", limits: {concurrency: 2}}')
    + "state: {backend: redis, url: %s, key_prefix: %s}\n"
)


@pytest.mark.parametrize("limits", ["memory", pytest.param("redis", marks=needs_redis)])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_cancelled_mcp_tool_call_is_a_cancelled_request(stream, limits, request_log, redis_prefix):
    """With limits kept in Redis too: the SDK cancels the call with an anyio cancel scope, which cancels every await
    under it again, also the stream's cleanup that gives its concurrency slot back to Redis. The request used to be
    counted after that cleanup (so not at all); it is counted before it now."""
    config = CONFIG if limits == "memory" else LIMITED_STALLING % (REDIS_URL, redis_prefix)
    engine = Engine(Runtime.build(load_config_text(config, env={"TOKEN": TOKEN})))
    if limits == "redis":
        assert isinstance(engine.runtime.limiters["stalling"], RedisLimiter)
    front = McpFront(engine)
    try:
        async with Client(front.server) as client:
            async with anyio.create_task_group() as tasks:
                arguments = {"prompt": "x", "stream": stream}
                tasks.start_soon(lambda: client.call_tool("complete_text", arguments))
                await eventually(lambda: StallingProvider.started == 1)
                tasks.cancel_scope.cancel()  # the client gives up: the SDK cancels the request
            await eventually(lambda: StallingProvider.ended == 1 and not front.in_flight)
            assert_one_cancelled(engine)
            result = await client.call_tool("get_metrics", {})
            assert result.structured_content["cancelled_requests"] == 1
            assert json.loads(result.content[0].text)["failed_requests"] == 0
            if limits == "redis":
                stalling = next(entry for entry in await engine.list_providers() if entry["name"] == "stalling")
                assert stalling["limits"]["headroom"]["in_flight"] == 0  # its slot came back
    finally:
        await engine.aclose()
    assert statuses(request_log) == ["cancelled"]


CACHED = """
version: 1
providers:
  fine: {type: mock, mock: {reply: "a fine answer, long enough to be replayed from the cache in a few pieces"}}
retry: {max_attempts: 1}
cache: {backend: memory, ttl: 5m}
models:
  default: {targets: [{provider: fine, model: fine-1}]}
"""
ON_REDIS = "cache: {backend: redis, ttl: 5m}\nstate: {backend: redis, url: %s, key_prefix: %s, timeout: 5s}\n"


def request_counts_of(engine: Engine) -> tuple[int, int, int, int, int]:
    snap = engine.metrics_snapshot()
    keys = ("total_requests", "success_requests", "failed_requests", "cancelled_requests", "cached_requests")
    return tuple(snap[key] for key in keys)  # type: ignore[return-value]


async def leave_a_replay_partway(config: str, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(Runtime.build(load_config_text(config, env={})))
    assert engine.cache.stats()["backend"] == backend
    request = ChatRequest.from_prompt("the same question", temperature=0)
    try:
        answer = await engine.complete(request)  # stored in the cache
        stream = engine.stream(request)
        async for chunk in stream:
            if chunk.text:  # partway through the replay
                break
        assert stream.cached
        await stream.aclose()  # the client left: each front closes the engine stream when its client goes away
        assert request_counts_of(engine) == (2, 1, 0, 1, 0)  # cancelled, not a success (nor a cached request)
        snap = engine.metrics_snapshot()
        assert snap["models"]["default"] == {"requests": 2, "successes": 1, "failures": 0, "cancelled": 1, "cached": 0}
        assert snap["cache"]["hits"] == 1  # the lookup did hit
        replay = engine.stream(request)  # a replay that runs to its end is a cached success, as before
        assert "".join([chunk.text async for chunk in replay if chunk.text]) == answer.text and replay.cached
        assert request_counts_of(engine) == (3, 2, 0, 1, 1)
    finally:
        await engine.aclose()
    assert statuses(caplog) == ["ok", "cancelled", "ok"]


async def test_leaving_a_stream_replayed_from_the_memory_cache_partway_is_a_cancelled_request(request_log):
    await leave_a_replay_partway(CACHED, "memory", request_log)


@needs_redis
async def test_leaving_a_stream_replayed_from_the_redis_cache_partway_is_a_cancelled_request(request_log, redis_prefix):
    config = CACHED.replace("cache: {backend: memory, ttl: 5m}\n", ON_REDIS % (REDIS_URL, redis_prefix))
    await leave_a_replay_partway(config, "redis", request_log)


@needs_redis
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_request_cancelled_during_a_redis_cache_lookup_is_a_cancelled_request(
    stream, request_log, redis_prefix
):
    redis = TcpProxy()
    await redis.start()
    await redis.blackhole()  # Redis accepts the connection and never answers: the lookup waits (up to `timeout`)
    state = RedisState(StateConfig(backend="redis", url=Secret(redis.url), key_prefix=redis_prefix, timeout=30.0))
    engine = Engine(Runtime.build(load_config_text(CACHED, env={})), cache=RedisCache(state, max_entries=10))
    request = ChatRequest.from_prompt("a question", temperature=0)

    async def ask() -> None:
        if stream:
            async for _ in engine.stream(request):
                pass
        else:
            await engine.complete(request)

    try:
        client = asyncio.create_task(ask())
        await eventually(lambda: redis.connections == 1)  # the lookup is waiting on Redis
        client.cancel()  # the client gives up
        await asyncio.gather(client, return_exceptions=True)
        assert client.cancelled()
        assert request_counts_of(engine) == (1, 0, 0, 1, 0)
        snap = engine.metrics_snapshot()
        assert snap["models"]["default"]["cancelled"] == 1 and snap["stream_requests"] == int(stream)
        assert snap["provider_usage"] == {"fine": 0} and snap["errors_by_kind"] == {}  # never sent upstream
        assert (snap["cache"]["hits"], snap["cache"]["misses"]) == (0, 0)  # the lookup never finished
    finally:
        await engine.aclose()
        await redis.stop()
    assert statuses(request_log) == ["cancelled"]


async def ask(engine: Engine, got: list[str], *, stream: bool) -> None:
    """A client asking a deterministic question, as a stream or for a whole answer; the text it gets goes to `got`."""
    request = ChatRequest.from_prompt("a question", temperature=0)
    if stream:
        async for chunk in engine.stream(request):
            got.append(chunk.text)
    else:
        got.append((await engine.complete(request)).text or "")


class RedisStallingProvider(Provider):
    """Answers at once, after making Redis unresponsive (`TcpProxy.blackhole()` on `redis`): what the engine did in
    Redis before the call went through (a cache lookup, a miss; a concurrency slot taken), what it does after waits
    (storing the answer; giving the slot back, `Admitted.succeed`)."""

    redis: TcpProxy | None = None

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        assert RedisStallingProvider.redis is not None
        await RedisStallingProvider.redis.blackhole()
        return ChatResponse(text="a whole answer", finish_reason="stop", usage=Usage(3, 4), model=model)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        assert RedisStallingProvider.redis is not None
        await RedisStallingProvider.redis.blackhole()
        yield StreamChunk(text="a whole")
        yield StreamChunk(text=" answer", finish_reason="stop", usage=Usage(3, 4))


STORED = """
version: 1
providers:
  storing: {type: python, class: "tests.test_cancelled_requests:RedisStallingProvider"}
retry: {max_attempts: 1}
models:
  default: {targets: [{provider: storing, model: store-1}]}
"""


@needs_redis
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_request_cancelled_while_its_answer_is_stored_in_redis_is_a_cancelled_request(
    stream, request_log, redis_prefix
):
    redis = RedisStallingProvider.redis = TcpProxy()
    await redis.start()
    state = RedisState(StateConfig(backend="redis", url=Secret(redis.url), key_prefix=redis_prefix, timeout=30.0))
    engine = Engine(Runtime.build(load_config_text(STORED, env={})), cache=RedisCache(state, max_entries=10))
    got: list[str] = []
    try:
        client = asyncio.create_task(ask(engine, got, stream=stream))
        await eventually(lambda: redis.connections == 2)  # the lookup's connection (cut), then the store's: it waits
        assert engine.metrics.total_requests == 0  # the answer is not counted before it is stored
        client.cancel()  # the client gives up
        await asyncio.gather(client, return_exceptions=True)
        assert client.cancelled()
        # a stream's text is all out, but not its end (`[DONE]`, `message_stop`, the MCP result): the fronts send
        # that once the engine stream ends, after the store
        assert got == (["a whole", " answer"] if stream else [])
        assert request_counts_of(engine) == (1, 0, 0, 1, 0)  # cancelled, as logged: not a success
        snap = engine.metrics_snapshot()
        assert snap["models"]["default"]["cancelled"] == 1 and snap["stream_requests"] == int(stream)
        assert snap["provider_usage"] == {"storing": 1} and snap["errors_by_kind"] == {}  # the attempt answered
        assert snap["streams_truncated"] == 0
        assert (snap["cache"]["hits"], snap["cache"]["misses"]) == (0, 1)
    finally:
        RedisStallingProvider.redis = None
        await engine.aclose()
        await redis.stop()
    assert statuses(request_log) == ["cancelled"]


LIMITED = """
version: 1
providers:
  limited:
    type: python
    class: "tests.test_cancelled_requests:RedisStallingProvider"
    limits: {concurrency: 1}
retry: {max_attempts: 1}
cache: {backend: CACHE}
state: {backend: redis, url: URL, key_prefix: PREFIX, timeout: 30s}
models:
  default: {targets: [{provider: limited, model: limited-1}]}
"""


@needs_redis
@pytest.mark.parametrize("cache", ["none", "memory"])  # memory: the cacheable path counts its request itself
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_request_cancelled_while_its_rate_limit_lease_is_released_in_redis_is_a_cancelled_request(
    stream, cache, request_log, redis_prefix
):
    redis = RedisStallingProvider.redis = TcpProxy()
    await redis.start()
    config = LIMITED.replace("CACHE", cache).replace("URL", redis.url).replace("PREFIX", redis_prefix)
    engine = Engine(Runtime.build(load_config_text(config, env={})))
    assert isinstance(engine.runtime.limiters["limited"], RedisLimiter)  # its slots are kept in Redis
    got: list[str] = []
    try:
        client = asyncio.create_task(ask(engine, got, stream=stream))
        # the attempt is counted as answered, then its slot is given back to Redis, which does not answer
        await eventually(lambda: engine.metrics_snapshot()["provider_usage"] == {"limited": 1})
        assert engine.metrics.total_requests == 0  # the request is not counted before its lease is released
        client.cancel()  # the client gives up
        await asyncio.gather(client, return_exceptions=True)
        assert client.cancelled()
        assert got == (["a whole", " answer"] if stream else [])  # a stream's text is out, not its end
        assert request_counts_of(engine) == (1, 0, 0, 1, 0)  # cancelled, as logged: counted, and not a success
        snap = engine.metrics_snapshot()
        assert snap["models"]["default"]["cancelled"] == 1 and snap["stream_requests"] == int(stream)
        assert snap["errors_by_kind"] == {} and snap["streams_truncated"] == 0
    finally:
        RedisStallingProvider.redis = None
        await redis.stop()  # first: the release still waiting on Redis fails at once, not after `timeout`
        await engine.aclose()
    assert statuses(request_log) == ["cancelled"]


class BreakingProvider(Provider):
    """Streams one chunk, makes Redis unresponsive (`TcpProxy.blackhole()` on `redis`), then its stream breaks:
    giving its concurrency slot back to Redis (`Admitted.fail`) waits."""

    redis: TcpProxy | None = None

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        raise AssertionError("streams only")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        assert BreakingProvider.redis is not None
        yield StreamChunk(text="Hello")
        await BreakingProvider.redis.blackhole()
        raise UpstreamServerError("the connection broke", provider=self.name)


BREAKING = LIMITED.replace("RedisStallingProvider", "BreakingProvider")


@needs_redis
async def test_a_stream_broken_upstream_is_counted_truncated_even_if_cancelled_during_its_cleanup(
    request_log, redis_prefix
):
    redis = BreakingProvider.redis = TcpProxy()
    await redis.start()
    config = BREAKING.replace("CACHE", "none").replace("URL", redis.url).replace("PREFIX", redis_prefix)
    engine = Engine(Runtime.build(load_config_text(config, env={})))
    got: list[str] = []

    async def ask() -> None:
        async for chunk in engine.stream(ChatRequest.from_prompt("a question")):
            got.append(chunk.text)

    try:
        client = asyncio.create_task(ask())
        # the broken attempt is counted, then its slot is given back to Redis, which does not answer
        await eventually(lambda: engine.metrics_snapshot()["provider_errors"] == {"limited": 1})
        await eventually(lambda: redis.held_bytes > 0)  # the release is sent and waits (not still on its way)
        client.cancel()  # the client gives up during that cleanup
        await asyncio.gather(client, return_exceptions=True)
        assert client.cancelled() and got == ["Hello"]
        assert request_counts_of(engine) == (1, 0, 1, 0, 0)  # a failed request, as logged: not uncounted
        assert engine.metrics_snapshot()["streams_truncated"] == 1
    finally:
        BreakingProvider.redis = None
        await redis.stop()  # first: the release still waiting on Redis fails at once, not after `timeout`
        await engine.aclose()
    assert statuses(request_log) == ["truncated"]
