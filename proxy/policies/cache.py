"""The exact-match response cache: the key, the cacheability rules, backends, and replaying a hit as a stream.

- `cache_key()` hashes the canonical normalized request (every parameter that can change the answer) plus the
  resolved model name and the template version (DESIGN.md "Cache").
- `is_cacheable()` / `is_storable()` say which requests may be looked up and which responses may be stored:
  by default only deterministic requests (temperature 0 or a seed), and only complete, successful responses.
- `ResponseCache` is the backend interface; `MemoryCache` (LRU + per-entry TTL) and `NullCache` (`backend: none`)
  implement it here, `RedisCache` (shared by replicas) in `proxy.policies.redis_cache`; `build_cache` picks one.
- `replay_as_chunks()` serves a stream request from a cached response; `ResponseAssembler` does the reverse,
  collecting a finished stream into a `ChatResponse` worth storing.

The engine decides when to consult the cache; this module knows nothing of the engine or the runtime.
Imports only `proxy.types` and `proxy.config.model`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from proxy.config.model import CacheConfig, StateConfig
from proxy.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

CacheWhen = Literal["deterministic", "always", "never"]

# Bumped whenever the canonical form below changes, so a shared (Redis) cache never mixes two key formats.
KEY_FORMAT = "llm-proxy-cache/1"

# Finish reasons of a complete answer. `length` is complete for its `max_tokens` (which is part of the key);
# `content_filter` and a missing finish reason are not stored.
_STORABLE_FINISH: frozenset[str] = frozenset({"stop", "length", "tool_calls"})


# --- the key ----------------------------------------------------------------------------------------------


def _canonical_content(content: str | tuple[TextPart | ImagePart, ...] | None) -> Any:
    if content is None or isinstance(content, str):
        return content
    return [["text", part.text] if isinstance(part, TextPart) else ["image", part.url, part.detail] for part in content]


def _canonical_message(message: Message) -> list[Any]:
    return [
        message.role,
        _canonical_content(message.content),
        [[call.id, call.name, call.arguments] for call in message.tool_calls],
        message.tool_call_id,
        message.name,
    ]


def _float(value: float | None) -> float | None:
    # `0` and `0.0` must give the same key: JSON writes them differently.
    return None if value is None else float(value)


def _json_default(value: object) -> Any:
    """Mappings other than dict (MappingProxyType in frozen config) as dicts; anything else is not JSON."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot build a cache key from a value of type `{type(value).__name__}`")


def cache_key(request: ChatRequest, model_name: str, *, template_version: str | None = None) -> str:
    """The sha256 hex digest of everything that can change the answer to `request` on model `model_name`.

    Included: messages (text and image parts, tool calls and their ids, tool-call ids, names), `max_tokens`,
    `temperature`, `top_p`, `stop`, `seed`, `response_format`, `tools`, `tool_choice`, `parallel_tool_calls`,
    `extra` (provider parameters passed through), the resolved model name and the template version.

    Left out on purpose:
    - `stream`: a streamed and a non-streamed request get the same answer; a hit is replayed as chunks.
    - `user`: an end-user id for the provider's abuse monitoring; it does not change the answer. Two users asking
      the same deterministic question share one cached answer (that is the point of the cache; a deployment that
      must not share answers across users sets `cache.when: never` or bypasses per request).
    - `request.model`: the client's name is already resolved into `model_name` (None and `default` are one model).

    Deterministic across processes and machines (sorted keys, no `hash()`/`id()`), so a shared cache works.
    """
    canonical = [
        KEY_FORMAT,
        model_name,
        template_version,
        [_canonical_message(message) for message in request.messages],
        request.max_tokens,
        _float(request.temperature),
        _float(request.top_p),
        list(request.stop),
        request.seed,
        request.response_format,
        [[tool.name, tool.description, tool.parameters, tool.strict] for tool in request.tools],
        None if request.tool_choice is None else [request.tool_choice.mode, request.tool_choice.name],
        request.parallel_tool_calls,
        request.extra,
    ]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- what is cached ---------------------------------------------------------------------------------------


def is_cacheable(request: ChatRequest, *, when: CacheWhen = "deterministic", bypass: bool = False) -> bool:
    """Whether `request` may be looked up in (and stored to) the cache.

    `when` is `cache.when` from the config: `never`, `always`, or `deterministic` (temperature 0 or a seed; a
    request without a temperature gets the provider's default, which is not 0). `bypass` is the per-request
    opt-out a front passes (e.g. `Cache-Control: no-cache`). Tool calls and tool definitions are fine: they are
    part of the key.
    """
    if bypass or when == "never":
        return False
    if when == "always":
        return True
    return request.temperature == 0 or request.seed is not None


def is_storable(response: ChatResponse) -> bool:
    """Only complete, successful answers are stored: a known finish reason of `stop`, `length` or `tool_calls`."""
    return response.finish_reason in _STORABLE_FINISH


# --- backends ---------------------------------------------------------------------------------------------


class ResponseCache(Protocol):
    """A response cache backend. Keys come from `cache_key()`; values are whole `ChatResponse`s."""

    async def get(self, key: str) -> ChatResponse | None: ...

    async def set(self, key: str, response: ChatResponse, ttl: float) -> None:
        """Store `response` for `ttl` seconds (`ttl <= 0` stores nothing)."""

    async def clear(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Counters for `get_metrics`: at least `backend`, `entries`, `hits`, `misses`, `tokens_saved`."""
        ...

    async def aclose(self) -> None: ...


def _tokens_saved(response: ChatResponse) -> int:
    usage = response.usage
    return 0 if usage is None else usage.input_tokens + usage.output_tokens


class MemoryCache:
    """An in-process LRU cache with a TTL per entry; get and set are O(1).

    Entries live in an `OrderedDict` in least-recently-used order. An expired entry is dropped when a `get` finds
    it, or when it reaches the old end of the LRU order at eviction time (counted as `expired`, not `evictions`);
    no background task sweeps. Responses are frozen dataclasses, so one stored object is safely shared by every hit.
    """

    __slots__ = ("_clock", "_entries", "evictions", "expired", "hits", "max_entries", "misses", "tokens_saved")

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ChatResponse]] = OrderedDict()
        self.hits = self.misses = self.evictions = self.expired = self.tokens_saved = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> ChatResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires_at, response = entry
        if expires_at <= self._clock():
            del self._entries[key]
            self.expired += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        self.tokens_saved += _tokens_saved(response)
        return response

    async def set(self, key: str, response: ChatResponse, ttl: float) -> None:
        if ttl <= 0:
            return
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        else:
            while len(entries) >= self.max_entries:
                self._evict_oldest()
        entries[key] = (self._clock() + ttl, response)

    def _evict_oldest(self) -> None:
        _, (expires_at, _) = self._entries.popitem(last=False)
        if expires_at <= self._clock():
            self.expired += 1
        else:
            self.evictions += 1

    async def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expired": self.expired,
            "tokens_saved": self.tokens_saved,
        }

    async def aclose(self) -> None:
        """Nothing to release; present for the interface."""


class NullCache:
    """`cache.backend: none`: never holds anything, so every lookup misses and nothing is counted."""

    __slots__ = ()

    async def get(self, key: str) -> ChatResponse | None:
        return None

    async def set(self, key: str, response: ChatResponse, ttl: float) -> None:
        return None

    async def clear(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": "none", "entries": 0, "hits": 0, "misses": 0, "tokens_saved": 0}

    async def aclose(self) -> None:
        return None


def build_cache(
    config: CacheConfig, *, state: StateConfig | None = None, clock: Callable[[], float] = time.monotonic
) -> ResponseCache:
    """The backend `config.backend` names. `redis` connects (lazily) to `state.url` with `state`'s timeout and key
    prefix (`proxy.policies.redis_cache`); `clock` times its reconnect backoff there, its TTLs there are Redis's."""
    if config.backend == "memory":
        return MemoryCache(config.max_entries, clock=clock)
    if config.backend == "none":
        return NullCache()
    if config.backend == "redis":
        if state is None or state.url is None:
            raise ValueError("`cache.backend: redis` needs `state.url`")
        from proxy.policies.redis_cache import RedisCache
        from proxy.policies.redis_state import RedisState

        return RedisCache(RedisState(state, clock=clock), config.max_entries)
    raise ValueError(f"unknown cache backend `{config.backend}`")


# --- streams ----------------------------------------------------------------------------------------------


_MIN_PIECE_CHARS = 16


def _pieces(text: str, max_pieces: int) -> list[str]:
    """`text` cut into at most `max_pieces` pieces of near-equal length, none empty or shorter than 16 characters
    (bar the last)."""
    if not text:
        return []
    size = max(_MIN_PIECE_CHARS, math.ceil(len(text) / max_pieces))
    return [text[start : start + size] for start in range(0, len(text), size)]


def replay_as_chunks(response: ChatResponse, *, max_text_pieces: int = 8) -> list[StreamChunk]:
    """A cached response as the chunks a live stream would have produced.

    The order a decoder yields: a header chunk (`id`, `model`), the text in a few pieces, each tool call as a
    delta with its id and name then a delta with its arguments, and a last chunk with `finish_reason` and `usage`.
    """
    chunks = [StreamChunk(id=response.id, model=response.model)]
    chunks.extend(StreamChunk(text=piece) for piece in _pieces(response.text or "", max_text_pieces))
    for index, call in enumerate(response.tool_calls):
        chunks.append(StreamChunk(tool_calls=(ToolCallDelta(index=index, id=call.id, name=call.name),)))
        if call.arguments:
            chunks.append(StreamChunk(tool_calls=(ToolCallDelta(index=index, arguments=call.arguments),)))
    chunks.append(StreamChunk(finish_reason=response.finish_reason, usage=response.usage))
    return chunks


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ResponseAssembler:
    """Collects the chunks of a stream into one `ChatResponse` (to store a streamed answer in the cache).

    `add()` every chunk as it passes; `response()` after the stream ended cleanly. Only a response whose stream
    reported a storable finish reason should be stored (`is_storable`); a broken stream is simply dropped.
    """

    __slots__ = ("_calls", "_finish_reason", "_id", "_model", "_text", "_usage")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._finish_reason: FinishReason | None = None
        self._usage: Usage | None = None
        self._id: str | None = None
        self._model: str | None = None

    def add(self, chunk: StreamChunk) -> None:
        if chunk.text:
            self._text.append(chunk.text)
        for delta in chunk.tool_calls:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = _PartialCall()
            if delta.id:
                call.id = delta.id
            if delta.name:
                call.name = delta.name
            call.arguments += delta.arguments
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.id and self._id is None:
            self._id = chunk.id
        if chunk.model and self._model is None:
            self._model = chunk.model

    def response(self, *, provider: str = "", model: str = "", latency_ms: float = 0.0) -> ChatResponse:
        """The assembled answer; `model` is used when the stream never named one."""
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for _, c in sorted(self._calls.items()))
        text = "".join(self._text)
        return ChatResponse(
            text=text if text or not calls else None,
            tool_calls=calls,
            finish_reason=self._finish_reason,
            usage=self._usage,
            provider=provider,
            model=self._model or model,
            id=self._id,
            latency_ms=latency_ms,
        )
