"""Fuzzing the Anthropic front over real HTTP: random JSON values, random bodies built from the API's own keys and
shapes (with wrong types mixed in), and random bytes, posted to `/v1/messages` and `/v1/messages/count_tokens`.

Whatever arrives, the answer is never a 5xx, and it is either a success (a `message`, an SSE stream that ends with
`message_stop` or an `error` event, or a token count) or an error in Anthropic's shape.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.fronts.anthropic_api import routes
from tests.http_server import engine_app

CONFIG = """
version: 1
providers:
  mock: {type: mock, mock: {echo: true}}  # answers with the last user text: the output path sees the input
models:
  default: {targets: [{provider: mock, model: mock-1}]}
"""
PATHS = ("/v1/messages", "/v1/messages/count_tokens")
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

tricky_characters = st.sampled_from(["a", " ", "é", "中", "😀", "\ud800", "\udfff"]) | st.characters(
    exclude_categories=()
)
any_text = st.text(tricky_characters, max_size=12)  # lone surrogates included
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def one_of_or_junk(*options: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value 19 times in 20, a random JSON value otherwise."""
    return st.integers(0, 19).flatmap(lambda n: json_values if n == 0 else st.one_of(*options))


text_block = st.fixed_dictionaries({"type": st.just("text"), "text": one_of_or_junk(st.text(max_size=20), any_text)})
image_block = st.fixed_dictionaries(
    {
        "type": st.just("image"),
        "source": one_of_or_junk(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["base64", "url", "base64", "file"]),
                    "media_type": st.sampled_from(["image/png", "image/jpeg", "image/bmp"]),
                    "data": st.text(min_size=1, max_size=8),
                    "url": st.sampled_from(["https://x.test/a.png", "ftp://x"]),
                }
            )
        ),
    }
)
tool_use_block = st.fixed_dictionaries(
    {
        "type": st.just("tool_use"),
        "id": one_of_or_junk(st.just("toolu_1")),
        "name": one_of_or_junk(st.just("f")),
        "input": json_values,
    }
)
tool_result_block = st.fixed_dictionaries(
    {
        "type": st.just("tool_result"),
        "tool_use_id": one_of_or_junk(st.just("toolu_1")),
        "content": one_of_or_junk(st.text(max_size=10), st.lists(text_block | image_block, max_size=2)),
        "is_error": one_of_or_junk(st.booleans()),
    }
)


def message_of(role: st.SearchStrategy[Any], *kinds: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    content = one_of_or_junk(st.text(min_size=1, max_size=20), st.lists(one_of_or_junk(*kinds), min_size=1, max_size=3))
    return st.fixed_dictionaries({"role": role, "content": content})


any_block = text_block | image_block | tool_use_block | tool_result_block
message = st.one_of(
    message_of(st.just("user"), text_block, image_block, tool_result_block),
    message_of(st.just("user"), text_block),
    message_of(st.just("assistant"), text_block, tool_use_block),
    message_of(st.sampled_from(["user", "assistant", "system", "tool"]), any_block),
)
tool = st.fixed_dictionaries(
    {"name": one_of_or_junk(st.sampled_from(["f", "g"])), "input_schema": one_of_or_junk(st.just({"type": "object"}))},
    optional={"description": json_values, "type": json_values},
)
required_fields: dict[str, st.SearchStrategy[Any]] = {
    "model": one_of_or_junk(st.sampled_from(["default"] * 4 + ["unknown-model", ""])),
    "max_tokens": one_of_or_junk(st.integers(min_value=-5, max_value=2**40)),
    "messages": one_of_or_junk(st.lists(message, max_size=3)),
}
optional_fields: dict[str, st.SearchStrategy[Any]] = {
    "system": one_of_or_junk(st.text(max_size=10), st.lists(text_block, max_size=2)),
    "temperature": one_of_or_junk(st.floats(min_value=-1, max_value=3)),
    "top_p": json_values,
    "top_k": json_values,
    "stop_sequences": one_of_or_junk(st.lists(st.text(max_size=5), max_size=3)),
    "tools": one_of_or_junk(st.lists(tool, max_size=2)),
    "tool_choice": one_of_or_junk(
        st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none", "x"]), "name": json_values})
    ),
    "metadata": one_of_or_junk(st.fixed_dictionaries({"user_id": json_values})),
    "stream": one_of_or_junk(st.booleans()),
    "thinking": one_of_or_junk(
        st.sampled_from([{"type": "disabled"}] * 3 + [{"type": "enabled", "budget_tokens": 1024}])
    ),
    "output_config": one_of_or_junk(st.sampled_from([{"effort": "low"}] * 3 + [{"format": {"type": "json_schema"}}])),
    "cache_control": json_values,
    "service_tier": json_values,
}
plausible_bodies = st.fixed_dictionaries(required_fields, optional=optional_fields)


def text_dict(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


valid_bodies = st.fixed_dictionaries(
    {
        "model": st.just("default"),
        "max_tokens": st.integers(min_value=1, max_value=2**31 - 1),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "assistant"]),
                    "content": st.text(max_size=20) | st.lists(st.builds(text_dict, st.text()), min_size=1),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "stream": st.booleans(),
    },
    optional={
        "system": st.text(max_size=10),
        "temperature": st.floats(min_value=0, max_value=1),
        "top_k": st.integers(min_value=0, max_value=100),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=2),
        "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=5)}),
    },
)


@pytest.fixture
async def session():
    async with (
        engine_app(CONFIG, api_routes=routes) as (base_url, _),
        aiohttp.ClientSession(base_url, headers={"content-type": "application/json"}) as client,
    ):
        yield client


def is_anthropic_error(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and isinstance(body["error"].get("type"), str)
        and isinstance(body["error"].get("message"), str)
    )


async def check(session: aiohttp.ClientSession, path: str, data: bytes, *, valid: bool = False) -> None:
    async with session.post(path, data=data) as response:
        text = await response.text()
        assert response.status < 500, text
        assert response.status == 200 or not valid, text
        if response.status != 200:
            assert is_anthropic_error(json.loads(text)), text
        elif response.content_type == "text/event-stream":
            names = [line[7:] for line in text.split("\n") if line.startswith("event: ")]
            assert names[0] == "message_start" and names[-1] in ("message_stop", "error"), text
        elif path.endswith("count_tokens"):
            assert isinstance(json.loads(text)["input_tokens"], int)
        else:
            assert json.loads(text)["type"] == "message"


@FUZZ
@given(value=json_values, path=st.sampled_from(PATHS))
async def test_random_json_values_get_an_anthropic_answer(session, value, path):
    await check(session, path, json.dumps(value).encode())


@FUZZ
@given(body=plausible_bodies, path=st.sampled_from(PATHS))
async def test_random_bodies_with_the_apis_keys_get_an_anthropic_answer(session, body, path):
    await check(session, path, json.dumps(body).encode())


@FUZZ
@given(body=valid_bodies, path=st.sampled_from(PATHS))
async def test_random_valid_bodies_are_answered(session, body, path):
    await check(session, path, json.dumps(body).encode(), valid=True)


@FUZZ
@given(text=st.text(tricky_characters, min_size=1, max_size=20), stream=st.booleans())
async def test_any_text_is_echoed_back_or_refused_as_not_text(session, text, stream):
    text = json.loads(
        json.dumps(text)
    )  # what the server reads: JSON joins an escaped surrogate pair into one character
    body = {"model": "default", "max_tokens": 1000, "stream": stream, "messages": [{"role": "user", "content": text}]}
    async with session.post("/v1/messages", data=json.dumps(body).encode()) as response:
        raw = await response.text()
        if response.status == 400:
            assert "lone UTF-16 surrogate" in json.loads(raw)["error"]["message"]
            return
        assert response.status == 200, raw
        if stream:
            deltas = [json.loads(line[6:]) for line in raw.split("\n") if '"text_delta"' in line]
            assert "".join(event["delta"]["text"] for event in deltas) == (text if text.strip() else "")
        else:
            assert json.loads(raw)["content"] == [{"type": "text", "text": text}]


@FUZZ
@given(data=st.binary(max_size=64), path=st.sampled_from(PATHS))
async def test_random_bytes_get_an_anthropic_answer(session, data, path):
    await check(session, path, data)
