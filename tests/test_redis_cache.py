"""The response cache in a real Redis (`cache.backend: redis`): an answer cached by one replica is served by
another, entries carry a native TTL, the cache is bounded, values are JSON that round-trips every field a hit
needs, and a Redis that is gone turns lookups into misses without failing a request."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from proxy.config.model import CacheConfig, Secret, StateConfig
from proxy.policies.cache import build_cache
from proxy.policies.redis_cache import MAX_VALUE_BYTES, RedisCache, decode_response, encode_response
from proxy.policies.redis_state import RedisState
from proxy.types import ChatRequest, ChatResponse, ToolCall, Usage
from tests.engine_helpers import FakeClock, make_engine, scripted
from tests.redis_helpers import REDIS_URL, TcpProxy, keys_under, needs_redis, redis_prefix, state_section

pytestmark = needs_redis
__all__ = ["redis_prefix"]  # the fixture, imported for the tests below


def answer(text: str = "cached text", **fields) -> ChatResponse:
    return ChatResponse(
        text=text,
        finish_reason="stop",
        usage=Usage(input_tokens=12, output_tokens=3, cached_input_tokens=4),
        provider="p",
        model="m-1",
        id="resp-1",
        **fields,
    )


def state_config(prefix: str, url: str = REDIS_URL, **settings) -> StateConfig:
    return StateConfig(backend="redis", url=Secret(url), key_prefix=prefix, **settings)


async def test_an_answer_cached_by_one_replica_is_served_by_another(redis_prefix):
    clock = FakeClock()
    config = {
        "providers": {"p": scripted(reply="the one answer")},
        "models": {"default": {"targets": [{"provider": "p", "model": "p-1"}]}},
        "cache": {"backend": "redis", "ttl": "5m"},
        "state": state_section(redis_prefix),
    }
    (first, first_providers), (second, second_providers) = (make_engine(config, clock) for _ in range(2))
    request = ChatRequest.from_prompt("same question", temperature=0)
    written = await first.complete(request)
    served = await second.complete(request)
    assert (written.cached, served.cached) == (False, True)
    assert served.text == "the one answer" and served.usage == written.usage and served.provider == "p"
    assert len(first_providers["p"].calls) == 1 and second_providers["p"].calls == []
    assert second.metrics_snapshot()["cache"]["backend"]["hits"] == 1
    stream = second.stream(request)
    assert "".join([chunk.text async for chunk in stream]) == "the one answer" and stream.cached
    (entry,) = [key for key in await keys_under(redis_prefix) if ":cache:e:" in key]
    client = aioredis.Redis.from_url(REDIS_URL)
    assert 299_000 < await client.pttl(entry) <= 300_000  # the TTL is Redis's own
    assert json.loads(await client.get(entry))["text"] == "the one answer"  # JSON, not pickle
    await client.aclose()
    for engine in (first, second):
        await engine.aclose()
    await clock.aclose()


async def test_the_cache_is_bounded_evicting_what_expires_first(redis_prefix):
    cache = build_cache(CacheConfig(backend="redis", max_entries=3), state=state_config(redis_prefix))
    assert isinstance(cache, RedisCache)
    for index, ttl in enumerate((50, 10, 40, 30, 20)):
        await cache.set(f"k{index}", answer(f"answer {index}"), ttl)
    assert cache.stats()["entries"] == 3
    # Kept: the three that expire last (50 s, 40 s, 30 s); the 10 s and 20 s entries were evicted.
    kept = [key for key in ("k0", "k1", "k2", "k3", "k4") if await cache.get(key) is not None]
    assert kept == ["k0", "k2", "k3"]
    assert len([key for key in await keys_under(redis_prefix) if ":cache:e:" in key]) == 3
    await cache.set("huge", answer("x" * (MAX_VALUE_BYTES + 1)), 60)
    assert await cache.get("huge") is None and cache.stats()["too_large"] == 1
    await cache.set("no-ttl", answer(), 0)
    assert await cache.get("no-ttl") is None
    await cache.clear()
    assert await keys_under(redis_prefix) == []
    await cache.aclose()


def test_values_round_trip_and_decode_leniently():
    response = answer(
        tool_calls=(ToolCall("call-1", "lookup", '{"q": "é"}'),),
        request_id="req-9",
        stop_sequence="END",
        route="ignored",
        cost=1.5,
    )
    decoded = decode_response(encode_response(response))
    assert decoded is not None
    assert (decoded.text, decoded.tool_calls, decoded.usage) == (response.text, response.tool_calls, response.usage)
    assert (decoded.provider, decoded.model, decoded.id, decoded.request_id, decoded.stop_sequence) == (
        "p",
        "m-1",
        "resp-1",
        "req-9",
        "END",
    )
    assert (decoded.route, decoded.cost) == ("", 0.0)  # per-request fields are the engine's to set
    newer = json.loads(encode_response(response))
    newer["field_of_a_later_version"] = 1
    newer["usage"]["tokens_of_a_later_version"] = 2
    assert decode_response(json.dumps(newer).encode()) == decoded
    assert decode_response(b'{"format": 2, "text": "another layout"}') is None
    assert decode_response(b"\x80\x04 not json") is None


async def test_an_undecodable_entry_is_a_miss(redis_prefix):
    cache = RedisCache(RedisState(state_config(redis_prefix)), max_entries=10)
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.set(f"{redis_prefix}:v1:cache:e:bad", b"\x80\x04\x95 a pickle, say")
    await client.aclose()
    assert await cache.get("bad") is None
    assert cache.stats()["undecodable"] == 1 and cache.stats()["misses"] == 1
    await cache.aclose()


async def test_with_redis_gone_lookups_miss_and_stores_are_skipped_then_it_recovers(redis_prefix):
    proxy = TcpProxy()
    await proxy.start()
    clock = FakeClock()
    state = RedisState(state_config(redis_prefix, url=proxy.url), clock=clock.now)
    cache = RedisCache(state, max_entries=10)
    await cache.set("k", answer(), 60)
    assert await cache.get("k") is not None
    await proxy.stop()
    assert await cache.get("k") is None  # fails once: marked down
    await cache.set("k2", answer(), 60)  # skipped at once, no network
    assert await cache.get("k") is None
    assert cache.stats()["available"] is False and cache.stats()["fallbacks"] == 3
    await proxy.start()
    assert await cache.get("k") is None  # still within the retry interval: not even tried
    clock.advance(1.0)
    assert await cache.get("k") is not None  # the probe reconnects
    assert cache.stats()["available"] is True
    await cache.aclose()
    await proxy.stop()
    await clock.aclose()


@pytest.mark.parametrize("state", [None, StateConfig()])
def test_a_redis_cache_needs_the_state_url(state):
    with pytest.raises(ValueError, match=r"needs `state\.url`"):
        build_cache(CacheConfig(backend="redis"), state=state)
