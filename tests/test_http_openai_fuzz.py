"""Fuzzing `POST /v1/chat/completions` over real HTTP: random JSON values, random objects with plausible keys and
values, and random bytes. Whatever arrives, the status is below 500 and the body is either an answer (a
`chat.completion` object, or SSE events ending in `[DONE]`) or an OpenAI error object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.fronts.openai_api import routes
from tests.http_server import engine_app

CONFIG = """
version: 1
providers:
  mock: {type: mock, mock: {reply: "fuzzed reply", chunk_size: 1}}
models:
  default: {targets: [{provider: mock, model: mock-1}]}
"""
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
numbers = st.integers(-5, 5) | st.floats(-3, 3) | st.sampled_from([float("nan"), float("inf"), 2**70])
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot"])
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "input_audio"])},
    optional={
        "text": st.text(max_size=10) | json_values,
        "image_url": st.fixed_dictionaries({"url": st.sampled_from(["https://x/y.png", "data:,", "ftp://x", ""])})
        | json_values,
        "refusal": st.text(max_size=5),
    },
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(max_size=5), "type": st.just("function")},
        optional={"function": st.fixed_dictionaries({"name": st.text(max_size=5), "arguments": st.text(max_size=5)})},
    ),
    max_size=2,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": st.text(max_size=20) | st.lists(parts | json_values, max_size=3) | json_values,
            "tool_calls": tool_calls | json_values,
            "tool_call_id": st.text(max_size=5) | json_values,
            "name": st.text(max_size=5) | json_values,
        },
    ),
    max_size=4,
)
valid_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": st.text(max_size=20)}),
    min_size=1,
    max_size=3,
)
# Mostly-valid requests: the required fields right, a few optional ones (valid or not) on top.
mostly_valid = st.fixed_dictionaries(
    {"model": st.just("default"), "messages": valid_messages, "stream": st.booleans()},
    optional={
        "max_tokens": st.integers(1, 50),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
        "seed": st.integers(0, 2**31),
        "user": st.text(max_size=5),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
        "presence_penalty": numbers,
        "n": st.integers(0, 2),
        "store": json_values,
    },
)
# Every other field, each plausible or random.
other_fields = {
    "max_tokens": numbers | json_values,
    "max_completion_tokens": numbers,
    "temperature": numbers | json_values,
    "top_p": numbers,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=6) | json_values,
    "seed": numbers | json_values,
    "n": numbers,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values}) | json_values,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={"json_schema": json_values},
    )
    | json_values,
    "tools": st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "custom"])},
            optional={"function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g h", ""])})},
        ),
        max_size=2,
    )
    | json_values,
    "tool_choice": st.sampled_from(["auto", "none", "required", "maybe"]) | json_values,
    "parallel_tool_calls": json_values,
    "logprobs": json_values,
    "logit_bias": st.dictionaries(st.text(max_size=3), numbers, max_size=2) | json_values,
    "frequency_penalty": numbers,
    "user": json_values,
}
# A request using every supported field; `mutated` replaces (or deletes) one value anywhere inside it.
RICH: dict[str, Any] = {
    "model": "default",
    "messages": [
        {"role": "developer", "content": "be brief", "name": "ops"},
        {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "hm"}],
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
    ],
    "max_tokens": 20,
    "max_completion_tokens": 20,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["END"],
    "seed": 7,
    "stream": True,
    "stream_options": {"include_usage": True},
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "tools": [
        {"type": "function", "function": {"name": "look", "description": "d", "parameters": {}, "strict": False}}
    ],
    "tool_choice": {"type": "function", "function": {"name": "look"}},
    "parallel_tool_calls": True,
    "user": "u",
    "n": 1,
    "logit_bias": {"1": 5},
    "frequency_penalty": 0.1,
    "top_k": 3,
}
DELETE = object()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    keys = value.keys() if isinstance(value, dict) else range(len(value)) if isinstance(value, list) else ()
    return [path for key in keys for path in [(*prefix, key), *_paths(value[key], (*prefix, key))]]


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if new is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


mutated = st.tuples(st.sampled_from(_paths(RICH)), json_values | st.just(DELETE)).map(lambda m: _replaced(RICH, *m))
# Any subset of the fields, each plausible or random.
random_shallow = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["default", "nope", "", "mock/mock-1"]) | json_values,
        "messages": messages | json_values,
        **other_fields,
    },
)
plausible_bodies = mutated | mostly_valid | random_shallow


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with engine_app(CONFIG, api_routes=routes) as (base_url, _), aiohttp.ClientSession(base_url) as session:
        yield session


async def post(session: aiohttp.ClientSession, data: bytes) -> None:
    headers = {"content-type": "application/json"}
    async with session.post("/v1/chat/completions", data=data, headers=headers) as response:
        status, content_type, body = response.status, response.headers.get("content-type", ""), await response.read()
    assert status < 500, body
    if status == 200 and content_type.startswith("text/event-stream"):
        events = body.decode().split("\n\n")
        assert events[-2] == "data: [DONE]" and events[-1] == ""
        return
    payload: Any = json.loads(body)
    if status == 200:
        assert payload["object"] == "chat.completion" and payload["model"] == "default"
        return
    assert status >= 400 and set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]


@FUZZ
@given(value=json_values)
async def test_random_json_values(session, value):
    await post(session, json.dumps(value).encode())


@settings(FUZZ, max_examples=100)
@given(body=plausible_bodies)
async def test_random_objects_with_plausible_keys(session, body):
    await post(session, json.dumps(body).encode())


@FUZZ
@given(data=st.binary(max_size=200))
async def test_random_bytes(session, data):
    await post(session, data)


WRONG_VALUES = [DELETE, None, 0, -1, 1.5, "x", "", "\ud800", True, [], [0], {}, {"type": "text"}, {"\udfff": 1}]


async def test_every_field_of_a_full_request_replaced_by_a_wrong_value(session):
    """Not random: each value inside `RICH`, in turn, deleted or replaced by each of `WRONG_VALUES`."""
    async with session.post("/v1/chat/completions", json=RICH) as response:
        assert response.status == 200 and (await response.read()).endswith(b"data: [DONE]\n\n")
    for path in _paths(RICH):
        for wrong in WRONG_VALUES:
            await post(session, json.dumps(_replaced(RICH, path, wrong)).encode())
