"""The Anthropic Messages front (`POST /v1/messages`, `/v1/messages/count_tokens`) over real HTTP, with the
official `anthropic` SDK as the client and the mock provider or the fake OpenAI/Anthropic upstreams behind it.

Covers: text and tool-call answers, whole and streamed (with the exact SSE event sequence); usage and cache
counters; the request fields reaching the upstream; the SDK's error classes for 400/401/404/429 (retry-after
included); a stream cut after the commit point surfacing as an error; client disconnects cancelling the upstream;
cache bypass; the token-count estimate; and the validation of bad bodies (field paths in the messages).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import anthropic
import httpx2
import pytest

from proxy.engine import Engine
from proxy.errors import RequestError
from proxy.fronts.anthropic_api import routes
from proxy.fronts.anthropic_inbound import parse_messages_body
from proxy.fronts.anthropic_outbound import json_bytes, message_json, sse_event, tool_input
from proxy.providers.base import Provider
from proxy.tokens import estimate_prompt_tokens
from proxy.types import ChatRequest, ChatResponse, StreamChunk, ToolCall, Usage
from tests.fakes import AnthropicFake, ModelReply, OpenAIFake, Reply
from tests.fakes import ToolCall as FakeToolCall
from tests.http_server import engine_app

TOKEN = "test-anthropic-front-token-42"
OPENAI_KEY = "test-openai-upstream-key-0123"
ANTHROPIC_KEY = "test-anthropic-upstream-key-0123"
REPLY = "Hello there, friend."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HI = [{"role": "user", "content": "hi"}]


def config(openai_url: str, anthropic_url: str) -> str:
    return f"""
version: 1
server:
  auth:
    bearer_tokens: ["${{PROXY_TOKEN}}"]
providers:
  mock: {{type: mock, mock: {{reply: "{REPLY}"}}}}
  limited: {{type: mock, mock: {{fault: {{status: 429, retry_after: 7}}}}}}
  cut: {{type: mock, mock: {{reply: "one two three four five", fault: {{cut_after: 2}}}}}}
  oai: {{type: openai, base_url: "{openai_url}", api_key: "${{OPENAI_KEY}}"}}
  hanging: {{type: python, class: "tests.test_http_anthropic:HangingProvider"}}
  ant:
    type: anthropic
    base_url: "{anthropic_url}"
    api_key: "${{ANTHROPIC_KEY}}"
    limits: {{concurrency: 1}}
retry: {{max_attempts: 1}}
models:
  default: {{targets: [{{provider: mock, model: mock-1}}]}}
  limited: {{targets: [{{provider: limited, model: mock-429}}]}}
  cut: {{targets: [{{provider: cut, model: mock-cut}}]}}
  gpt: {{targets: [{{provider: oai, model: gpt-4o-mini}}]}}
  claude: {{targets: [{{provider: ant, model: claude-sonnet-4-5}}]}}
  hanging: {{targets: [{{provider: hanging, model: hang-1}}]}}
"""


class HangingProvider(Provider):
    """Streams one word, then waits forever; when closed, its cleanup takes a real await (like a network close)."""

    cleanups: ClassVar[list[str]] = []

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        raise NotImplementedError

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        try:
            yield StreamChunk(id="hang", model=model)
            yield StreamChunk(text="Hello")
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.001)  # interrupted if the cancellation is delivered again during cleanup
            self.cleanups.append("done")


@dataclass
class Served:
    base_url: str
    engine: Engine
    openai: OpenAIFake
    anthropic: AnthropicFake
    client: anthropic.AsyncAnthropic

    def raw(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(self.base_url, headers={"x-api-key": TOKEN})


@pytest.fixture
async def served(start_fake):
    openai_fake = await start_fake(OpenAIFake(api_key=OPENAI_KEY))
    anthropic_fake = await start_fake(AnthropicFake(api_key=ANTHROPIC_KEY))
    env = {"PROXY_TOKEN": TOKEN, "OPENAI_KEY": OPENAI_KEY, "ANTHROPIC_KEY": ANTHROPIC_KEY}
    text = config(openai_fake.base_url, anthropic_fake.base_url)
    async with engine_app(text, api_routes=routes, env=env) as (base_url, engine):
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key=TOKEN, max_retries=0)
        try:
            yield Served(base_url, engine, openai_fake, anthropic_fake, client)
        finally:
            await client.close()


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def post_stream(served: Served, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, list]:
    async with served.raw() as session, session.post("/v1/messages", json={**body, "stream": True}) as response:
        text = await response.text()
        return response, parse_sse(text) if response.status == 200 else json.loads(text)


# --- answers -------------------------------------------------------------------------------------------------


async def test_a_text_answer_is_an_anthropic_message_with_who_answered_in_the_headers(served):
    raw = await served.client.messages.with_raw_response.create(model="default", max_tokens=100, messages=HI)
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [(block.type, block.text) for block in message.content] == [("text", REPLY)]
    assert message.model == "default"  # the name asked for; the header names the upstream model
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 1 and message.usage.output_tokens == 5  # the mock's ~4 chars per token
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    assert raw.headers["x-llm-proxy-provider"] == "mock"
    assert raw.headers["x-llm-proxy-model"] == "mock-1"
    assert raw.headers["x-llm-proxy-cache"] == "miss"
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == message._request_id


async def test_a_streamed_answer_sends_anthropics_event_sequence(served):
    response, events = await post_stream(served, {"model": "default", "max_tokens": 100, "messages": HI})
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-llm-proxy-provider"] == "mock"
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == estimate_prompt_tokens(
        parse_messages_body({"model": "default", "max_tokens": 1, "messages": HI})
    )
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == REPLY
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] == 5 and events[-2][1]["usage"]["input_tokens"] == 1


async def test_the_sdk_stream_helper_assembles_the_same_message(served):
    async with served.client.messages.stream(model="default", max_tokens=100, messages=HI) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == REPLY
    assert final.content[0].text == REPLY and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


async def test_a_tool_call_through_an_openai_upstream(served):
    served.openai.script(
        ModelReply(text=["Let me check."], tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="call_1")])
    )
    message = await served.client.messages.create(
        model="gpt",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."
    call = message.content[1]
    assert (call.id, call.name, call.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 12 and message.usage.output_tokens == 6
    sent = served.openai.last_request.json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False


async def test_a_streamed_tool_call_through_an_anthropic_upstream(served):
    served.anthropic.script(
        ModelReply(
            text=["Checking."],
            tool_calls=[
                FakeToolCall("get_weather", '{"city": "Paris"}', id="toolu_9", fragments=['{"ci', 'ty": ', '"Paris"}'])
            ],
        )
    )
    body = {"model": "claude", "max_tokens": 200, "messages": HI, "tools": [WEATHER_TOOL]}
    _, events = await post_stream(served, body)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}},
    ]
    fragments = [data["delta"] for name, data in events if name == "content_block_delta" and data["index"] == 1]
    assert fragments == [{"type": "input_json_delta", "partial_json": p} for p in ['{"ci', 'ty": ', '"Paris"}']]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    served.anthropic.script(ModelReply(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_8")]))
    async with served.client.messages.stream(model="claude", max_tokens=200, messages=HI, tools=[WEATHER_TOOL]) as s:
        final = await s.get_final_message()
    assert [(b.type, b.id, b.input) for b in final.content] == [("tool_use", "toolu_8", {"city": "Oslo"})]
    assert final.stop_reason == "tool_use"


async def test_every_request_field_reaches_an_anthropic_upstream(served):
    png = "iVBORw0KGgo="
    await served.client.messages.create(
        model="claude",
        max_tokens=321,
        system=[
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no data", "is_error": True},
                    {"type": "image", "source": {"type": "url", "url": "https://example.test/map.png"}},
                ],
            },
        ],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40, "service_tier": "auto"},
    )
    sent = served.anthropic.last_request.json
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 321
    assert sent["system"] == "Be brief.\nBe kind."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Error: no data"},
                {"type": "image", "source": {"type": "url", "url": "https://example.test/map.png"}},
            ],
        },
    ]
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "user-7"}
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.5, 0.9, 40)
    assert "service_tier" not in sent  # a hint the proxy drops


async def test_cache_counters_and_stop_reasons_from_an_anthropic_upstream(served):
    served.anthropic.script(ModelReply(text=["Hi"], input_tokens=10, cached_tokens=5, cache_creation_tokens=3))
    usage = (await served.client.messages.create(model="claude", max_tokens=50, messages=HI)).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (10, 5, 3)

    served.anthropic.script(ModelReply(text=["Hi"], input_tokens=10, cached_tokens=5, finish_reason="max_tokens"))
    _, events = await post_stream(served, {"model": "claude", "max_tokens": 50, "messages": HI})
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
        "output_tokens": 6,
    }

    def stopped_by_sequence(record):
        return Reply(
            json={
                "id": "msg_fixed",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "1, 2, 3"}],
                "stop_reason": "stop_sequence",
                "stop_sequence": "END",
                "usage": {"input_tokens": 4, "output_tokens": 3},
            }
        )

    served.anthropic.script(stopped_by_sequence)
    message = await served.client.messages.create(model="claude", max_tokens=50, messages=HI, stop_sequences=["END"])
    assert (message.id, message.stop_reason, message.stop_sequence) == ("msg_fixed", "stop_sequence", "END")


# --- errors ----------------------------------------------------------------------------------------------------


async def test_rate_limited_is_the_sdks_rate_limit_error_with_retry_after(served):
    with pytest.raises(anthropic.RateLimitError) as caught:
        await served.client.messages.create(model="limited", max_tokens=10, messages=HI)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.RateLimitError):  # before the first chunk: a plain HTTP error, not an event
        async with served.client.messages.stream(model="limited", max_tokens=10, messages=HI) as stream:
            await stream.get_final_message()


async def test_bad_requests_are_the_sdks_bad_request_error_naming_the_field(served):
    with pytest.raises(anthropic.BadRequestError) as caught:
        await served.client.messages.create(
            model="default", max_tokens=10, messages=HI, extra_body={"temperature": 1.5}
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "temperature: must be between 0 and 1, got 1.5"},
    }
    async with served.raw() as session:
        async with session.post("/v1/messages", json={"model": "default", "messages": HI}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "max_tokens: is required"
        async with session.post(
            "/v1/messages", data=b"{not json", headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_a_wrong_token_is_the_sdks_authentication_error(served):
    client = anthropic.AsyncAnthropic(base_url=served.base_url, api_key="wrong-token", max_retries=0)
    async with client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model="default", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "authentication_error"


async def test_a_missing_token_is_the_sdks_authentication_error_too(served):
    # Anthropic's shape for both a missing and a wrong token (OpenAI's paths tell them apart by `code`)
    no_key = {"Authorization": anthropic.omit, "X-Api-Key": anthropic.omit}  # the SDK sends its key as either
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await served.client.messages.create(model="default", max_tokens=10, messages=HI, extra_headers=no_key)
    with pytest.raises(anthropic.AuthenticationError) as counted:
        await served.client.messages.count_tokens(model="default", messages=HI, extra_headers=no_key)
    for error in (caught.value, counted.value):
        assert error.status_code == 401
        assert error.body["type"] == "error" and error.body["error"]["type"] == "authentication_error"
        assert "`server.auth.bearer_tokens`" in error.body["error"]["message"]


async def test_an_unknown_model_is_the_sdks_not_found_error(served):
    with pytest.raises(anthropic.NotFoundError) as caught:
        await served.client.messages.create(model="claude-3-opus", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "unknown model `claude-3-opus`" in caught.value.body["error"]["message"]


async def test_a_stream_cut_after_the_first_chunk_is_an_error_event_not_a_clean_end(served):
    _, events = await post_stream(served, {"model": "cut", "max_tokens": 100, "messages": HI})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "error" and "message_stop" not in names and "message_delta" not in names
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert "broke after" in events[-1][1]["error"]["message"]

    with pytest.raises(anthropic.APIStatusError) as caught:
        async with served.client.messages.stream(model="cut", max_tokens=100, messages=HI) as stream:
            async for _ in stream:
                pass
    assert caught.value.body["error"]["type"] == "api_error"


async def test_an_upstream_error_event_keeps_its_type(served):
    served.anthropic.script(ModelReply(text=["a", "b", "c"], error_after=5, error_type="overloaded_error"))
    _, events = await post_stream(served, {"model": "claude", "max_tokens": 100, "messages": HI})
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # polls for up to ~5 s; the things awaited take milliseconds
        if condition():
            return
        await asyncio.sleep(0.01)


async def read_until_first_delta(served: Served, body: dict[str, Any]) -> None:
    async with served.raw() as session, session.post("/v1/messages", json={**body, "stream": True}) as response:
        async for line in response.content:
            if line.startswith(b"event: content_block_delta"):
                return


async def test_a_client_that_goes_away_cancels_the_upstream_call_and_frees_its_slot(served):
    served.anthropic.script(ModelReply(text=[f"w{i} " for i in range(100)], chunk_delay=0.2))
    await read_until_first_delta(served, {"model": "claude", "max_tokens": 100, "messages": HI})
    upstream = served.anthropic.last_request
    metrics = served.engine.metrics
    await wait_for(lambda: upstream.outcome != "pending" and metrics.total_requests > 0)  # the reply takes 20 s
    assert upstream.outcome == "client_disconnected"
    assert (metrics.total_requests, metrics.cancelled_requests, metrics.failed_requests) == (1, 1, 0)
    ant = next(p for p in await served.engine.list_providers() if p["name"] == "ant")
    assert ant["limits"]["headroom"]["in_flight"] == 0  # the concurrency slot (limit 1) was given back


async def test_a_disconnect_lets_the_upstream_cleanup_finish(served):
    HangingProvider.cleanups.clear()
    await read_until_first_delta(served, {"model": "hanging", "max_tokens": 100, "messages": HI})
    await wait_for(lambda: served.engine.metrics.total_requests > 0)
    assert HangingProvider.cleanups == ["done"]


# --- auth, cache, count_tokens ----------------------------------------------------------------------------------


async def test_the_sdk_sends_its_key_as_a_bearer_token_and_x_api_key_works_too(served):
    sent: list[httpx2.Headers] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request.headers)

    http_client = httpx2.AsyncClient(event_hooks={"request": [record]})
    async with anthropic.AsyncAnthropic(base_url=served.base_url, api_key=TOKEN, http_client=http_client) as client:
        await client.messages.create(model="default", max_tokens=10, messages=HI)
    assert sent[0]["authorization"] == f"Bearer {TOKEN}"  # anthropic 2.x; 0.x sent `x-api-key`
    async with anthropic.AsyncAnthropic(base_url=served.base_url, auth_token=TOKEN, max_retries=0) as client:
        await client.messages.create(model="default", max_tokens=10, messages=HI)
    body = {"model": "default", "max_tokens": 10, "messages": HI}
    async with served.raw() as session, session.post("/v1/messages", json=body) as response:
        assert response.status == 200  # `x-api-key` (what curl users and older SDKs send)


async def test_no_cache_request_header_bypasses_the_response_cache(served):
    body = {"model": "default", "max_tokens": 10, "messages": HI, "temperature": 0}
    caches = []
    async with served.raw() as session:
        for headers in ({}, {}, {"cache-control": "no-cache"}):
            async with session.post("/v1/messages", json=body, headers=headers) as response:
                caches.append(response.headers["x-llm-proxy-cache"])
        async with session.post("/v1/messages", json={**body, "stream": True}) as response:
            caches.append(response.headers["x-llm-proxy-cache"])
            assert "message_stop" in await response.text()
    assert caches == ["miss", "hit", "miss", "hit"]


async def test_count_tokens_answers_the_offline_estimate(served):
    body = {"model": "default", "messages": [{"role": "user", "content": "How long is this prompt, roughly?"}]}
    counted = await served.client.messages.count_tokens(
        model="default", messages=body["messages"], system="Be brief.", tools=[WEATHER_TOOL]
    )
    expected = parse_messages_body({**body, "system": "Be brief.", "tools": [WEATHER_TOOL]}, count_only=True)
    assert counted.input_tokens == estimate_prompt_tokens(expected) > 0
    with pytest.raises(anthropic.NotFoundError):
        await served.client.messages.count_tokens(model="nope", messages=body["messages"])
    with pytest.raises(anthropic.BadRequestError):
        await served.client.messages.count_tokens(model="default", messages=[])


# --- validation (no server needed) -------------------------------------------------------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "default", "max_tokens": 10, "messages": HI, **fields}


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"model": None}, "model", "is required"),
        ({"model": 3}, "model", "must be a string, not an integer"),
        ({"max_tokens": 0}, "max_tokens", "between 1 and"),
        ({"max_tokens": 10.0}, "max_tokens", "must be an integer, not a number"),
        ({"max_tokens": True}, "max_tokens", "not a boolean"),
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": "hi"}, "messages", "must be an array"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "must be `user` or `assistant`"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "at least one content block"),
        (
            {"messages": [HI[0], {"role": "user", "content": [{"type": "doc"}]}]},
            "messages[1].content[0].type",
            "not `doc`",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages[0].content[0].type",
            "must be a string",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
            "string",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
            "image/jpeg",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].source.type",
            "file sources are not supported",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}
                ]
            },
            "messages[0].content[0].input",
            "must be an object",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "messages[0].content[0].type",
            "assistant messages",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]}
                ]
            },
            "messages[0].content[0].is_error",
            "boolean",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
            "document",
        ),
        ({"system": [{"type": "image"}]}, "system[0].type", "only hold `text`"),
        ({"temperature": float("nan")}, "temperature", "between 0 and 1"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"top_p": -0.1}, "top_p", "between 0 and 1"),
        ({"top_k": 1.5}, "top_k", "integer"),
        ({"stop_sequences": "END"}, "stop_sequences", "must be an array"),
        ({"stop_sequences": ["ok", ""]}, "stop_sequences[1]", "must not be empty"),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id", "string"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema", "must be an object, not null"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type", "server tool"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].name", "declared twice"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type", "auto, any, tool, none"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice.name",
            "names no tool",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking", "not supported"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, "output_config.format", "not supported"),
        ({"mcp_servers": [{"type": "url", "url": "https://x.test", "name": "x"}]}, "mcp_servers", "not supported"),
        ({"system": "a\ud800b"}, "system", "lone UTF-16 surrogate"),
        (
            {"tools": [{"name": "f", "input_schema": {"properties": {"\udfff": {}}}}]},
            "tools[0].input_schema",
            "surrogate",
        ),
        ({"messages": [{"role": "x" * 1000, "content": "hi"}]}, "messages[0].role", "got `" + "x" * 64 + "…`"),
    ],
)
def test_bad_fields_are_refused_naming_their_path(fields, param, words):
    with pytest.raises(RequestError) as caught:
        parse_messages_body(body(**fields))
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    assert words in caught.value.message


def test_deeply_nested_tool_schemas_are_refused():
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(100):
        schema = {"type": "object", "properties": {"x": schema}}
    with pytest.raises(RequestError) as caught:
        parse_messages_body(body(tools=[{"name": "f", "input_schema": schema}]))
    assert caught.value.param == "tools[0].input_schema"


def test_accepted_shapes_map_onto_the_normalized_request():
    request = parse_messages_body(
        body(
            system="Be brief.",
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True}]},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]},
                    ],
                },
                {"role": "system", "content": [{"type": "text", "text": "Late rule."}]},
            ],
            thinking={"type": "disabled"},
            tool_choice={"type": "auto"},
            cache_control={"type": "ephemeral"},
            some_future_field={"x": 1},
        )
    )
    assert [(m.role, m.text(), m.tool_call_id) for m in request.messages] == [
        ("system", "Be brief.", None),
        ("tool", "Error", "t1"),  # the assistant turn held only thinking: dropped
        ("user", "a", None),
        ("tool", "ok", "t2"),
        ("system", "Late rule.", None),
    ]
    assert request.tool_choice is not None and request.tool_choice.mode == "auto"
    assert request.extra == {} and request.stream is False


def test_message_json_maps_finish_reasons_usage_and_odd_tool_arguments():
    response = ChatResponse(
        text=None,
        tool_calls=(ToolCall("call_1", "f", "not json"), ToolCall("", "g", "")),
        finish_reason="stop",  # some OpenAI-compatible servers say `stop` with tool calls
        usage=Usage(input_tokens=20, output_tokens=4, cached_input_tokens=8, cache_creation_input_tokens=2),
        model="m",
        id="chatcmpl-1",
    )
    message = message_json(response)
    assert message["id"].startswith("msg_") and message["stop_reason"] == "tool_use"
    assert message["content"][0]["input"] == {"_raw_arguments": "not json"}
    assert message["content"][1]["id"].startswith("toolu_") and message["content"][1]["input"] == {}
    assert message["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 8,
        "output_tokens": 4,
    }
    assert tool_input('{"x": NaN}') == {"_raw_arguments": '{"x": NaN}'}  # not JSON, though Python reads it
    for finish, stop_reason in (("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")):
        assert message_json(ChatResponse(text="x", finish_reason=finish))["stop_reason"] == stop_reason
    assert message_json(ChatResponse(text="x", finish_reason="stop"))["content"] == [{"type": "text", "text": "x"}]


def test_answers_survive_a_lone_surrogate_in_the_models_text():
    assert json_bytes({"text": "é\ud800"}) == b'{"text":"\\u00e9\\ud800"}'  # escaped, still valid JSON
    assert json_bytes({"text": "é中"}) == '{"text":"é中"}'.encode()  # UTF-8 as Anthropic sends it
    assert json.loads(sse_event("x", {"t": "\ud800"}).split(b"data: ")[1]) == {"t": "\ud800"}


async def test_a_number_too_long_to_read_is_a_400(served):
    data = b'{"model": "default", "max_tokens": ' + b"9" * 5000 + b', "messages": []}'
    async with served.raw() as session, session.post("/v1/messages", data=data) as response:
        assert response.status == 400
