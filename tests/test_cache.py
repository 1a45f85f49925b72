"""The response cache: key stability and sensitivity, cacheability, the memory backend (LRU, TTL, stats), replay."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from proxy.config.model import CacheConfig
from proxy.policies.cache import (
    MemoryCache,
    NullCache,
    ResponseAssembler,
    build_cache,
    cache_key,
    is_cacheable,
    is_storable,
    replay_as_chunks,
)
from proxy.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDef,
    Usage,
)

BASE = ChatRequest(
    messages=(
        Message("system", "Be brief."),
        Message("user", (TextPart("What is in this picture?"), ImagePart("https://example.com/a.png", "low"))),
        Message("assistant", None, tool_calls=(ToolCall("call_1", "lookup", '{"q": "cat"}'),)),
        Message("tool", "a cat", tool_call_id="call_1", name="lookup"),
    ),
    model="default",
    max_tokens=100,
    temperature=0.0,
    top_p=0.9,
    stop=("END",),
    seed=7,
    response_format={"type": "json_object"},
    tools=(ToolDef("lookup", "Look a thing up", {"type": "object", "properties": {"q": {"type": "string"}}}),),
    tool_choice=ToolChoice("auto"),
    parallel_tool_calls=True,
    extra={"top_k": 40, "reasoning_effort": "low"},
)


def key(request: ChatRequest = BASE, model: str = "default", template_version: str | None = None) -> str:
    return cache_key(request, model, template_version=template_version)


def with_message(index: int, **changes: object) -> ChatRequest:
    messages = list(BASE.messages)
    messages[index] = dataclasses.replace(messages[index], **changes)
    return dataclasses.replace(BASE, messages=tuple(messages))


# --- the key ----------------------------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest_and_stable():
    first = key()
    assert len(first) == 64 and int(first, 16) >= 0
    assert key() == first
    assert key(dataclasses.replace(BASE)) == first


ANSWER_CHANGING = {
    "max_tokens": {"max_tokens": 101},
    "temperature": {"temperature": 0.5},
    "top_p": {"top_p": 1.0},
    "stop": {"stop": ("END", "STOP")},
    "seed": {"seed": 8},
    "seed_none": {"seed": None},
    "response_format": {"response_format": {"type": "text"}},
    "tools": {"tools": ()},
    "tool_description": {"tools": (ToolDef("lookup", "Look it up", BASE.tools[0].parameters),)},
    "tool_parameters": {"tools": (ToolDef("lookup", "Look a thing up", {"type": "object"}),)},
    "tool_strict": {"tools": (dataclasses.replace(BASE.tools[0], strict=True),)},
    "tool_choice": {"tool_choice": ToolChoice("tool", "lookup")},
    "tool_choice_none": {"tool_choice": None},
    "parallel_tool_calls": {"parallel_tool_calls": False},
    "extra": {"extra": {"top_k": 41, "reasoning_effort": "low"}},
    "extra_added": {"extra": {**BASE.extra, "frequency_penalty": 0.1}},
    "messages_dropped": {"messages": BASE.messages[1:]},
}


@pytest.mark.parametrize("changes", ANSWER_CHANGING.values(), ids=ANSWER_CHANGING.keys())
def test_every_answer_changing_parameter_changes_the_key(changes):
    assert key(dataclasses.replace(BASE, **changes)) != key()


MESSAGE_CHANGES = {
    "system_text": (0, {"content": "Be long."}),
    "role": (0, {"role": "user"}),
    "text_part": (1, {"content": (TextPart("What is this?"), BASE.messages[1].content[1])}),
    "image_url": (1, {"content": (BASE.messages[1].content[0], ImagePart("https://example.com/b.png", "low"))}),
    "image_detail": (1, {"content": (BASE.messages[1].content[0], ImagePart("https://example.com/a.png", "high"))}),
    "parts_vs_string": (1, {"content": "What is in this picture?"}),
    "tool_call_arguments": (2, {"tool_calls": (ToolCall("call_1", "lookup", '{"q": "dog"}'),)}),
    "tool_call_name": (2, {"tool_calls": (ToolCall("call_1", "search", '{"q": "cat"}'),)}),
    "tool_call_id": (2, {"tool_calls": (ToolCall("call_2", "lookup", '{"q": "cat"}'),)}),
    "tool_result_id": (3, {"tool_call_id": "call_9"}),
    "tool_result_name": (3, {"name": "other"}),
    "tool_result_text": (3, {"content": "a dog"}),
}


@pytest.mark.parametrize("index,changes", MESSAGE_CHANGES.values(), ids=MESSAGE_CHANGES.keys())
def test_every_message_detail_changes_the_key(index, changes):
    assert key(with_message(index, **changes)) != key()


def test_model_name_and_template_version_change_the_key():
    assert key(model="fast") != key()
    assert key(template_version="v2") != key()
    assert key(template_version="v2") != key(template_version="v3")


def test_stream_user_and_the_requested_alias_do_not_change_the_key():
    assert key(dataclasses.replace(BASE, stream=True)) == key()
    assert key(dataclasses.replace(BASE, user="alice")) == key(dataclasses.replace(BASE, user="bob")) == key()
    # The client's name is resolved by the engine; the key uses the resolved `model_name`.
    assert key(dataclasses.replace(BASE, model=None)) == key()


def test_dict_order_and_mapping_type_do_not_change_the_key():
    reordered = dataclasses.replace(
        BASE,
        extra={"reasoning_effort": "low", "top_k": 40},
        response_format=MappingProxyType({"type": "json_object"}),
        tools=(ToolDef("lookup", "Look a thing up", {"properties": {"q": {"type": "string"}}, "type": "object"}),),
    )
    assert key(reordered) == key()


def test_int_and_float_temperature_give_one_key():
    assert key(dataclasses.replace(BASE, temperature=0)) == key(dataclasses.replace(BASE, temperature=0.0))


def test_key_is_the_same_in_another_process():
    # hash randomization differs per process; the key must not depend on it
    code = "from tests.test_cache import key; print(key())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root)
    assert out.stdout.strip() == key()


def test_unjsonable_extra_is_refused_with_its_type():
    with pytest.raises(TypeError, match="object"):
        key(dataclasses.replace(BASE, extra={"x": object()}))


# --- cacheability -----------------------------------------------------------------------------------------


def plain(**changes: object) -> ChatRequest:
    return ChatRequest.from_prompt("hi", **changes)


@pytest.mark.parametrize(
    "request_,expected",
    [
        (plain(temperature=0), True),
        (plain(temperature=0.0), True),
        (plain(seed=1), True),
        (plain(seed=0, temperature=1.0), True),
        (plain(temperature=0.7), False),
        (plain(), False),  # no temperature: the provider's default, not 0
        (plain(temperature=0, tools=(ToolDef("f"),)), True),
    ],
)
def test_deterministic_requests_are_cacheable(request_, expected):
    assert is_cacheable(request_, when="deterministic") is expected


def test_when_always_never_and_bypass():
    assert is_cacheable(plain(temperature=0.9), when="always")
    assert not is_cacheable(plain(temperature=0), when="never")
    assert not is_cacheable(plain(temperature=0), when="deterministic", bypass=True)
    assert not is_cacheable(plain(temperature=0.9), when="always", bypass=True)


@pytest.mark.parametrize(
    "finish,expected",
    [("stop", True), ("length", True), ("tool_calls", True), ("content_filter", False), (None, False)],
)
def test_only_complete_responses_are_storable(finish, expected):
    assert is_storable(ChatResponse(text="x", finish_reason=finish)) is expected


# --- the memory backend -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str, input_tokens: int = 10, output_tokens: int = 5) -> ChatResponse:
    return ChatResponse(text=text, finish_reason="stop", usage=Usage(input_tokens, output_tokens), provider="p")


async def test_get_returns_the_stored_response_and_counts():
    cache = MemoryCache(10)
    stored = answer("one")
    assert await cache.get("a") is None
    await cache.set("a", stored, 60)
    assert await cache.get("a") is stored
    assert await cache.get("a") is stored
    stats = cache.stats()
    assert stats == {
        "backend": "memory",
        "entries": 1,
        "max_entries": 10,
        "hits": 2,
        "misses": 1,
        "evictions": 0,
        "expired": 0,
        "tokens_saved": 30,
    }


async def test_lru_evicts_the_least_recently_used():
    cache = MemoryCache(3)
    for name in "abc":
        await cache.set(name, answer(name), 60)
    assert await cache.get("a") is not None  # a is now the most recent; b is the oldest
    await cache.set("d", answer("d"), 60)
    assert await cache.get("b") is None
    assert [name for name in "acd" if await cache.get(name) is not None] == ["a", "c", "d"]
    await cache.set("e", answer("e"), 60)  # order now a, c, d (all read in that order): a goes
    assert await cache.get("a") is None
    assert len(cache) == 3
    assert cache.stats()["evictions"] == 2


async def test_overwriting_a_key_refreshes_it_without_evicting():
    cache = MemoryCache(2)
    await cache.set("a", answer("a1"), 60)
    await cache.set("b", answer("b"), 60)
    await cache.set("a", answer("a2"), 60)  # a becomes the most recent
    await cache.set("c", answer("c"), 60)  # so b goes
    assert (await cache.get("a")).text == "a2"
    assert await cache.get("b") is None
    assert cache.stats()["evictions"] == 1


async def test_entries_expire_after_their_ttl():
    clock = FakeClock()
    cache = MemoryCache(10, clock=clock)
    await cache.set("short", answer("s"), 5)
    await cache.set("long", answer("l"), 50)
    clock.now += 4.9
    assert await cache.get("short") is not None
    clock.now += 0.1
    assert await cache.get("short") is None
    assert len(cache) == 1  # dropped on the get that found it expired
    assert await cache.get("long") is not None
    clock.now += 45
    assert await cache.get("long") is None
    stats = cache.stats()
    assert stats["expired"] == 2 and stats["misses"] == 2 and stats["hits"] == 2


async def test_expired_entries_at_the_old_end_count_as_expired_not_evicted():
    clock = FakeClock()
    cache = MemoryCache(2, clock=clock)
    await cache.set("a", answer("a"), 1)
    await cache.set("b", answer("b"), 100)
    clock.now += 2
    await cache.set("c", answer("c"), 100)
    assert cache.stats()["expired"] == 1 and cache.stats()["evictions"] == 0
    assert await cache.get("b") is not None and await cache.get("c") is not None


async def test_non_positive_ttl_stores_nothing_and_clear_empties():
    cache = MemoryCache(5)
    await cache.set("a", answer("a"), 0)
    assert await cache.get("a") is None
    await cache.set("b", answer("b"), 10)
    await cache.clear()
    assert len(cache) == 0 and await cache.get("b") is None


def test_max_entries_must_be_positive():
    with pytest.raises(ValueError):
        MemoryCache(0)


async def test_hits_without_usage_save_no_tokens():
    cache = MemoryCache(5)
    await cache.set("a", ChatResponse(text="x", finish_reason="stop"), 10)
    await cache.get("a")
    assert cache.stats()["tokens_saved"] == 0


async def test_null_cache_never_holds_anything():
    cache = NullCache()
    await cache.set("a", answer("a"), 60)
    assert await cache.get("a") is None
    await cache.clear()
    await cache.aclose()
    assert cache.stats()["backend"] == "none"


def test_build_cache_by_backend():
    built = build_cache(CacheConfig(backend="memory", max_entries=7))
    assert isinstance(built, MemoryCache) and built.max_entries == 7
    assert isinstance(build_cache(CacheConfig(backend="none")), NullCache)
    with pytest.raises(ValueError, match="state"):
        build_cache(CacheConfig(backend="redis"))  # a Redis cache needs `state.url`


# --- streams ----------------------------------------------------------------------------------------------


def reassemble(chunks: list[StreamChunk], provider: str = "p") -> ChatResponse:
    assembler = ResponseAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response(provider=provider)


def test_replay_of_text_reassembles_exactly():
    response = ChatResponse(
        text="The quick brown fox jumps over the lazy dog. " * 5,
        finish_reason="stop",
        usage=Usage(12, 50),
        provider="p",
        model="gpt-x",
        id="resp-1",
    )
    chunks = replay_as_chunks(response)
    assert chunks[0] == StreamChunk(id="resp-1", model="gpt-x") and not chunks[0].is_content
    text_chunks = [c for c in chunks if c.text]
    assert 2 <= len(text_chunks) <= 8
    assert chunks[-1] == StreamChunk(finish_reason="stop", usage=Usage(12, 50))
    assert [c for c in chunks if c.finish_reason] == [chunks[-1]]
    assert reassemble(chunks) == response


def test_replay_of_tool_calls_reassembles_them_in_order():
    response = ChatResponse(
        text=None,
        tool_calls=(ToolCall("call_a", "lookup", '{"q": "cat"}'), ToolCall("call_b", "now", "")),
        finish_reason="tool_calls",
        usage=Usage(20, 8),
        provider="p",
        model="m",
        id="r",
    )
    chunks = replay_as_chunks(response)
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    assert deltas[0].index == 0 and deltas[0].id == "call_a" and deltas[0].name == "lookup"
    assert "".join(d.arguments for d in deltas if d.index == 0) == '{"q": "cat"}'
    assert reassemble(chunks) == response


def test_replay_of_short_and_empty_text():
    short = ChatResponse(text="Hi", finish_reason="stop", provider="p", model="m")
    assert [c.text for c in replay_as_chunks(short) if c.text] == ["Hi"]
    assert reassemble(replay_as_chunks(short)) == short
    empty = ChatResponse(text="", finish_reason="length", provider="p", model="m")
    assert [c for c in replay_as_chunks(empty) if c.is_content] == []
    assert reassemble(replay_as_chunks(empty)) == empty


def test_replay_with_text_and_tool_calls():
    response = ChatResponse(
        text="Let me look.",
        tool_calls=(ToolCall("c1", "f", "{}"),),
        finish_reason="tool_calls",
        provider="p",
        model="m",
    )
    assert reassemble(replay_as_chunks(response, max_text_pieces=3)) == response


def test_assembler_takes_the_model_from_the_caller_when_the_stream_names_none():
    assembler = ResponseAssembler()
    assembler.add(StreamChunk(text="a"))
    assembler.add(StreamChunk(finish_reason="stop"))
    assert assembler.response(provider="p", model="fallback-model").model == "fallback-model"
