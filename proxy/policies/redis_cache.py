"""The response cache in Redis (`cache.backend: redis`): one cache shared by every replica.

    cache = RedisCache(RedisState(config.state), max_entries=config.cache.max_entries)
    await cache.set(key, response, ttl=300)       # key from proxy.policies.cache.cache_key()
    hit = await cache.get(key)                     # a ChatResponse, or None

Layout: an entry is a string `{key_prefix}:v1:cache:e:<sha256>` holding the response as JSON (never pickle: a
shared store must not be able to run code in the proxy), with a native TTL (`SET ... PX`). The sorted set
`{key_prefix}:v1:cache:index` scores each entry by its expiry; one Lua script stores an entry, drops index members
whose entry expired and, past `max_entries`, evicts the entries closest to expiry. So the cache is bounded by
count across all replicas, and by size per entry (`MAX_VALUE_BYTES`; larger answers are not stored). Deploy
Redis with a `maxmemory` policy as the last guard.

Values carry a format number and decode leniently (unknown fields ignored, missing ones defaulted), so replicas of
two versions can share the cache during a rolling upgrade; an entry that does not decode is a miss.
A cache never fails a request: while Redis is unavailable every lookup is a miss and nothing is stored
(`stats()["fallbacks"]`), whatever `state.failure_mode` says.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from proxy.policies.redis_state import RedisState, StateUnavailable
from proxy.types import ChatResponse, ToolCall, Usage

VALUE_FORMAT = 1
MAX_VALUE_BYTES = 1024 * 1024

# KEYS: entry, index. ARGV: value, ttl ms, max entries, member (the digest), entry key prefix. -> entries after
STORE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local n = redis.call('ZCARD', KEYS[2])
local excess = n - tonumber(ARGV[3])
if excess > 0 then
  local victims = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #victims, 2 do redis.call('DEL', ARGV[5] .. victims[i]) end
  n = n - excess
end
redis.call('PEXPIRE', KEYS[2], ttl + 60000)
return n
"""

# The fields a hit needs; route, cached, cost, attempts, latency and config version are set by the engine.
_STORED = ("text", "finish_reason", "provider", "model", "id", "request_id", "stop_sequence")


def encode_response(response: ChatResponse) -> bytes:
    """`response` as compact JSON (format `VALUE_FORMAT`)."""
    value: dict[str, Any] = {"format": VALUE_FORMAT}
    for name in _STORED:
        value[name] = getattr(response, name)
    value["tool_calls"] = [[call.id, call.name, call.arguments] for call in response.tool_calls]
    value["usage"] = None if response.usage is None else dataclasses.asdict(response.usage)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_USAGE_FIELDS = frozenset(field.name for field in dataclasses.fields(Usage))


def decode_response(data: bytes) -> ChatResponse | None:
    """The response `encode_response` wrote; None for anything else (another format, corrupt data)."""
    try:
        value = json.loads(data)
        if not isinstance(value, dict) or value.get("format") != VALUE_FORMAT:
            return None
        usage = value.get("usage")
        return ChatResponse(
            **{name: value.get(name) for name in _STORED if name != "provider" and name != "model"},
            provider=value.get("provider") or "",
            model=value.get("model") or "",
            tool_calls=tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in value.get("tool_calls") or ()),
            usage=None if usage is None else Usage(**{k: int(v) for k, v in usage.items() if k in _USAGE_FIELDS}),
        )
    except (ValueError, TypeError, AttributeError):
        return None


class RedisCache:
    """The `ResponseCache` over Redis; see the module docstring. Hit/miss counters are this replica's."""

    def __init__(self, state: RedisState, max_entries: int, *, owns_state: bool = True) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.state = state
        self.max_entries = max_entries
        self._owns_state = owns_state
        self._entry_prefix = state.key("cache", "e", "")
        self._index = state.key("cache", "index")
        self.entries = 0  # the shared count as of this replica's last store
        self.hits = self.misses = self.tokens_saved = self.too_large = self.undecodable = 0

    async def get(self, key: str) -> ChatResponse | None:
        try:
            data = await self.state.call(lambda redis: redis.get(self._entry_prefix + key))
        except StateUnavailable:
            self.state.count_fallback("cache")
            data = None
        response = None if data is None else decode_response(data)
        if data is not None and response is None:
            self.undecodable += 1
        if response is None:
            self.misses += 1
            return None
        self.hits += 1
        usage = response.usage
        self.tokens_saved += 0 if usage is None else usage.input_tokens + usage.output_tokens
        return response

    async def set(self, key: str, response: ChatResponse, ttl: float) -> None:
        milliseconds = int(ttl * 1000)
        if milliseconds <= 0:
            return
        value = encode_response(response)
        if len(value) > MAX_VALUE_BYTES:
            self.too_large += 1
            return
        script = self.state.script(STORE)
        keys = [self._entry_prefix + key, self._index]
        args = [value, milliseconds, self.max_entries, key, self._entry_prefix]
        try:
            self.entries = int(await self.state.call(lambda redis: script(keys=keys, args=args, client=redis)))
        except StateUnavailable:
            self.state.count_fallback("cache")

    async def clear(self) -> None:
        """Delete every entry under this key prefix (all replicas share them)."""

        async def clear(redis: Any) -> None:
            batch = []
            async for name in redis.scan_iter(match=self.state.key("cache", "*"), count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await redis.unlink(*batch)
                    batch.clear()
            if batch:
                await redis.unlink(*batch)

        await clear(self.state.client)  # not a request's path: not bound by `state.timeout`
        self.entries = 0

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "entries": self.entries,
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "tokens_saved": self.tokens_saved,
            "too_large": self.too_large,
            "undecodable": self.undecodable,
            "available": self.state.up,
            "fallbacks": self.state.fallbacks.get("cache", 0),
        }

    async def aclose(self) -> None:
        if self._owns_state:
            await self.state.aclose()
