"""`POST /v1/chat/completions` over real HTTP, with the official `openai` SDK (async, `max_retries=0`) as the client
and the fake OpenAI / Anthropic upstreams (or the `mock` provider) behind the proxy: plain and streamed answers,
tool calls, usage, the SDK's error classes, the stream commit point, cache bypass, client disconnects; plus the
body validation (`parse_chat_request`) case by case.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from proxy.engine import Engine
from proxy.fronts.http_common import BodyError
from proxy.fronts.openai_api import routes
from proxy.fronts.openai_inbound import parse_chat_request
from proxy.fronts.openai_outbound import ChunkEncoder
from proxy.types import ImagePart, StreamChunk, TextPart, ToolCallDelta
from proxy.types import ToolCall as NormalizedToolCall
from tests.fakes import AnthropicFake, ModelReply, OpenAIFake, ToolCall, text_reply, tool_reply
from tests.http_server import engine_app

TOKEN = "test-proxy-token-0123456789"
UPSTREAM_KEY = "test-upstream-key-0123456789"
ENV = {"PROXY_TOKEN": TOKEN, "UPSTREAM_KEY": UPSTREAM_KEY}
CONFIG = """
version: 1
server: {auth: {bearer_tokens: ["${PROXY_TOKEN}"]}}
providers:
  upstream: {type: openai, base_url: "OPENAI_URL", api_key: "${UPSTREAM_KEY}"}
  claude: {type: anthropic, base_url: "ANTHROPIC_URL", api_key: "${UPSTREAM_KEY}"}
  mock: {type: mock, mock: {reply: "one two three four five six", chunk_size: 1}}
  cutter: {type: mock, mock: {reply: "one two three four five six", chunk_size: 1, fault: {cut_after: 2}}}
  limited: {type: mock, mock: {fault: {status: 429, retry_after: 7s}}}
  slow: {type: mock, mock: {reply: "late", latency: 60s}}
retry: {max_attempts: 1, initial_backoff: 1ms, max_backoff: 50ms, deadline: 120s}
models:
  default: {targets: [{provider: upstream, model: gpt-4o-mini}]}
  claude: {targets: [{provider: claude, model: claude-sonnet-4-5}]}
  mock: {targets: [{provider: mock, model: mock-1}]}
  cut: {targets: [{provider: cutter, model: mock-cut}]}
  limited: {targets: [{provider: limited, model: mock-429}]}
  slow: {targets: [{provider: slow, model: mock-slow}]}
"""
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Proxy:
    base_url: str
    engine: Engine
    client: openai.AsyncOpenAI
    upstream: OpenAIFake
    claude: AnthropicFake

    async def post(self, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
        """A raw POST (aiohttp), for what the SDK would not send or would hide."""
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json", **headers}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        data = io.BytesIO(data) if len(data) > 1024 * 1024 else data  # aiohttp warns about big bytes bodies
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.base_url}/v1/chat/completions", data=data, headers=headers) as response,
        ):
            return response.status, dict(response.headers), await response.read()


@pytest.fixture
async def proxy(openai_fake: OpenAIFake, anthropic_fake: AnthropicFake) -> AsyncIterator[Proxy]:
    text = CONFIG.replace("OPENAI_URL", openai_fake.base_url).replace("ANTHROPIC_URL", anthropic_fake.base_url)
    async with engine_app(text, api_routes=routes, env=ENV) as (base_url, engine):
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=TOKEN, max_retries=0)
        async with client:
            yield Proxy(base_url, engine, client, openai_fake, anthropic_fake)


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, checking every event is exactly `data: ...` and a blank line."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") and "\n" not in event for event in events), events
    return [event[len("data: ") :] for event in events]


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll `predicate` until it holds; fails (TimeoutError) after 5 seconds."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the state belongs to the engine and the fake; no event to wait on
            await asyncio.sleep(0.01)


# --- answers ----------------------------------------------------------------------------------------------------


async def test_plain_answer_with_usage_headers_and_the_configured_model_name(proxy):
    proxy.upstream.script(text_reply("Hello", " world", input_tokens=30, output_tokens=5, cached_tokens=10))
    raw = await proxy.client.chat.completions.with_raw_response.create(model="default", messages=HI, max_tokens=20)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "default"  # the name asked for; the header names the upstream model
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Hello world", "stop")
    assert choice.message.tool_calls is None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 5, 35)
    assert usage.prompt_tokens_details.cached_tokens == 10
    assert raw.headers["x-llm-proxy-provider"] == "upstream"
    assert raw.headers["x-llm-proxy-model"] == "gpt-4o-mini"
    assert raw.headers["x-llm-proxy-cache"] == "miss"
    assert raw.headers["x-request-id"].startswith("req_")


async def test_request_fields_reach_the_upstream_mapped(proxy):
    await proxy.client.chat.completions.create(
        model="default",
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "look", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "a cat"},
        ],
        max_completion_tokens=50,
        temperature=0.5,
        top_p=0.9,
        stop="END",
        seed=7,
        user="user-1",
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "look"}},
        parallel_tool_calls=False,
        extra_body={"frequency_penalty": 0.5, "top_k": 5, "store": True, "metadata": {"a": "b"}},
    )
    sent = proxy.upstream.requests[-1].json
    assert sent["model"] == "gpt-4o-mini"
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "assistant", "tool"]
    assert sent["messages"][2]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
    }
    assert sent["messages"][3]["tool_calls"][0]["function"] == {"name": "look", "arguments": "{}"}
    assert sent["messages"][4] == {"role": "tool", "content": "a cat", "tool_call_id": "call_9"}
    expected = {
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "user": "user-1",
        "response_format": {"type": "json_object"},
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": False,
        "frequency_penalty": 0.5,
        "top_k": 5,
    }
    assert {key: sent.get(key) for key in expected} == expected
    assert "store" not in sent and "metadata" not in sent  # accepted and ignored


async def test_upstream_text_with_a_lone_surrogate_is_passed_on_escaped(proxy):
    proxy.upstream.script(text_reply("broken \ud800 text"), text_reply("broken ", "\ud800 text"))
    completion = await proxy.client.chat.completions.create(model="default", messages=HI)
    assert completion.choices[0].message.content == "broken \ud800 text"
    stream = await proxy.client.chat.completions.create(model="default", messages=HI, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "broken \ud800 text"


async def test_tool_calls_in_a_plain_answer(proxy):
    proxy.upstream.script(tool_reply(ToolCall("get_weather", {"city": "Paris"}, id="call_1")))
    completion = await proxy.client.chat.completions.create(
        model="default",
        messages=HI,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_streamed_text_with_the_usage_chunk(proxy):
    proxy.upstream.script(text_reply("Hel", "lo", " there", input_tokens=9, output_tokens=3))
    stream = await proxy.client.chat.completions.create(
        model="default", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 3)
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"default"}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_the_sse_wire_format_and_headers(proxy):
    status, headers, body = await proxy.post({"model": "mock", "messages": HI, "stream": True})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert (headers["x-llm-proxy-provider"], headers["x-llm-proxy-model"]) == ("mock", "mock-1")
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "one two three four five six"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)  # not asked for


async def test_streamed_tool_calls_from_openai_assemble_in_the_sdk(proxy):
    call = ToolCall("get_weather", {"city": "Paris", "unit": "C"}, id="call_7", fragments=4)
    proxy.upstream.script(tool_reply(call))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    async with proxy.client.chat.completions.stream(model="default", messages=HI, tools=tools) as stream:
        final = await stream.get_final_completion()
    [made] = final.choices[0].message.tool_calls
    assert (made.id, made.function.name) == ("call_7", "get_weather")
    assert json.loads(made.function.arguments) == {"city": "Paris", "unit": "C"}
    assert final.choices[0].finish_reason == "tool_calls"


async def test_streamed_tool_calls_from_anthropic_have_openai_deltas(proxy):
    proxy.claude.script(tool_reply(ToolCall("lookup", {"q": "x"}), ToolCall("lookup", {"q": "y"}), text=["Let me"]))
    status, _, body = await proxy.post({"model": "claude", "messages": HI, "stream": True})
    assert status == 200
    chunks = [json.loads(event) for event in sse_events(body)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    starts = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert [(s["index"], s["id"], s["type"], s["function"]["name"]) for s in starts] == [
        (0, "toolu_fake_0", "function", "lookup"),
        (1, "toolu_fake_1", "function", "lookup"),
    ]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Let me"
    arguments = {0: "", 1: ""}
    for delta in deltas:
        for fragment in delta.get("tool_calls", []):
            arguments[fragment["index"]] += fragment["function"]["arguments"]
    assert [json.loads(a) for a in arguments.values()] == [{"q": "x"}, {"q": "y"}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --- errors -----------------------------------------------------------------------------------------------------


async def test_rate_limited_is_a_429_with_retry_after(proxy):
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            await proxy.client.chat.completions.create(model="limited", messages=HI, stream=stream)
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.response.headers["retry-after-ms"] == "7000"
        assert caught.value.body["type"] == "rate_limit_error"


async def test_bad_request_unknown_model_and_bad_token(proxy):
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.client.chat.completions.create(model="mock", messages=HI, n=2)
    assert caught.value.param == "n"
    with pytest.raises(openai.NotFoundError) as caught:
        await proxy.client.chat.completions.create(model="nope", messages=HI, stream=True)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    async with openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key="wrong-token", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="mock", messages=HI)
    assert caught.value.code == "invalid_api_key"


NO_KEY = {"Authorization": openai.omit}  # a request without the header (an SDK client cannot be made without a key)


async def test_a_missing_token_is_answered_as_openai_answers_a_missing_key_and_a_wrong_one_is_invalid_api_key(proxy):
    with pytest.raises(openai.AuthenticationError) as chat:
        await proxy.client.chat.completions.create(model="mock", messages=HI, extra_headers=NO_KEY)
    with pytest.raises(openai.AuthenticationError) as streamed:
        await proxy.client.chat.completions.create(model="mock", messages=HI, stream=True, extra_headers=NO_KEY)
    with pytest.raises(openai.AuthenticationError) as models:
        await proxy.client.models.list(extra_headers=NO_KEY)
    for caught in (chat, streamed, models):  # the real API: invalid_request_error, no param, no code
        assert caught.value.status_code == 401 and caught.value.code is None
        assert caught.value.body == {
            "message": caught.value.body["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        assert "`server.auth.bearer_tokens`" in caught.value.message  # ours: where the tokens are configured
    async with openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key="wrong-token", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await client.models.list()
    assert (wrong.value.code, wrong.value.type, wrong.value.param) == ("invalid_api_key", "invalid_request_error", None)
    assert wrong.value.body["message"] == chat.value.body["message"]
    assert "wrong-token" not in wrong.value.message


async def test_a_stream_cut_after_the_commit_point_is_an_error_in_the_sdk(proxy):
    proxy.upstream.script(ModelReply(text=("a", "b", "c", "d"), cut_after=3))  # role chunk, "a", "b", then cut
    stream = await proxy.client.chat.completions.create(model="default", messages=HI, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "ab"
    assert "broke after 2 characters" in caught.value.message


async def test_a_cut_stream_ends_with_an_error_event_and_no_done(proxy):
    status, _, body = await proxy.post({"model": "cut", "messages": HI, "stream": True})
    assert status == 200
    events = sse_events(body)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "one two "


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        ({"messages": HI}, 400, "model"),
        ({"model": "mock"}, 400, "messages"),
        ({"model": "mock", "messages": HI, "temperature": "hot"}, 400, "temperature"),
    ],
)
async def test_raw_bad_bodies_are_openai_shaped_4xx(proxy, body, status, param):
    got, _, raw = await proxy.post(body)
    assert got == status
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_wrong_content_type_and_huge_body(proxy):
    status, _, raw = await proxy.post(b"model=mock", **{"content-type": "application/x-www-form-urlencoded"})
    assert status == 400 and "application/x-www-form-urlencoded" in json.loads(raw)["error"]["message"]
    status, _, _ = await proxy.post({"model": "mock", "messages": []}, **{"content-type": "text/plain"})
    assert status != 415  # a JSON body is read whatever the content type claims
    huge = b'{"model": "mock", "messages": [], "pad": "' + b"x" * (21 * 1024 * 1024) + b'"}'
    status, _, raw = await proxy.post(huge)
    assert status == 413 and "error" in json.loads(raw)


async def test_an_integer_too_long_to_parse_is_a_400(proxy):
    status, _, _ = await proxy.post(b'{"model": "mock", "seed": ' + b"9" * 5000 + b"}")
    assert status == 400


# --- cache, disconnects -------------------------------------------------------------------------------------------


async def test_cache_hits_get_fresh_ids_and_no_cache_bypasses(proxy):
    ask = {"model": "default", "messages": HI, "temperature": 0}
    first = await proxy.client.chat.completions.with_raw_response.create(**ask)
    second = await proxy.client.chat.completions.with_raw_response.create(**ask)
    assert (first.headers["x-llm-proxy-cache"], second.headers["x-llm-proxy-cache"]) == ("miss", "hit")
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert first.parse().id != second.parse().id
    assert len(proxy.upstream.requests) == 1
    bypass = await proxy.client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"Cache-Control": "no-cache"}
    )
    assert bypass.headers["x-llm-proxy-cache"] == "miss"
    assert len(proxy.upstream.requests) == 2
    streamed = [c async for c in await proxy.client.chat.completions.create(**ask, stream=True)]
    replayed = [c async for c in await proxy.client.chat.completions.create(**ask, stream=True)]
    text = ["".join(c.choices[0].delta.content or "" for c in chunks) for chunks in (streamed, replayed)]
    assert text[0] == text[1] == "Hello from the fake OpenAI."
    assert streamed[0].id != replayed[0].id


async def test_client_disconnect_mid_stream_cancels_the_upstream(proxy):
    proxy.upstream.script(ModelReply(text=tuple(f"w{i} " for i in range(100)), chunk_delay=0.05))
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{proxy.base_url}/v1/chat/completions",
            json={"model": "default", "messages": HI, "stream": True},
            headers=headers,
        )
        assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
        response.close()  # drops the connection
    await eventually(lambda: proxy.upstream.requests[0].outcome == "client_disconnected")
    await eventually(lambda: proxy.engine.metrics.cancelled_requests == 1)
    assert proxy.engine.metrics.streams_truncated == 0 and proxy.engine.metrics.failed_requests == 0


async def test_client_disconnect_before_a_plain_answer_cancels_the_call(proxy):
    slow = proxy.engine.runtime.providers["slow"]

    async def ask() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(
                f"{proxy.base_url}/v1/chat/completions",
                json={"model": "slow", "messages": HI},
                headers={"authorization": f"Bearer {TOKEN}"},
            )

    client = asyncio.create_task(ask())
    await eventually(lambda: slow.calls == 1)
    client.cancel()  # the client gives up: its connection closes
    await asyncio.gather(client, return_exceptions=True)
    await eventually(lambda: proxy.engine.metrics.cancelled_requests == 1)  # the 60 s call did not run on
    assert proxy.engine.metrics.failed_requests == 0


def test_an_empty_stream_still_has_a_role_a_finish_and_usage():
    encoder = ChunkEncoder(completion_id="chatcmpl-1", model="m", created=1, include_usage=True)
    assert encoder.encode(StreamChunk(id="up-1")) == []
    events = [event.decode() for event in encoder.end(None)]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert [c["choices"][0]["delta"] if c["choices"] else c["usage"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {},
        None,
    ]
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and events[-1] == "data: [DONE]\n\n"


def test_a_tool_call_without_id_gets_one_and_the_role_comes_with_it():
    encoder = ChunkEncoder(completion_id="chatcmpl-1", model="m", created=1, include_usage=False)
    [first] = encoder.encode(StreamChunk(tool_calls=(ToolCallDelta(0, name="f", arguments="{"),)))
    delta = json.loads(first.decode().removeprefix("data: "))["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"] is None
    assert delta["tool_calls"][0]["id"].startswith("call_") and delta["tool_calls"][0]["function"]["name"] == "f"
    [more] = encoder.encode(StreamChunk(tool_calls=(ToolCallDelta(0, arguments="}"),)))
    assert json.loads(more.decode().removeprefix("data: "))["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": "}"}}]
    }
    assert b'"finish_reason":"tool_calls"' in encoder.end(None)[0]


# --- validation, case by case -------------------------------------------------------------------------------------

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def message(**fields: Any) -> dict[str, Any]:
    return with_(messages=[fields])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": GOOD["messages"]}, "model"),
        (with_(model=""), "model"),
        (with_(model=3), "model"),
        (with_(messages=[]), "messages"),
        (with_(messages="hi"), "messages"),
        (with_(messages=[GOOD["messages"][0], "x"]), "messages[1]"),
        (message(role="robot", content="x"), "messages[0].role"),
        (message(role="user"), "messages[0].content"),
        (message(role="user", content=[]), "messages[0].content"),
        (message(role="user", content=[{"type": "audio"}]), "messages[0].content[0].type"),
        (message(role="user", content=[{"type": "text", "text": 5}]), "messages[0].content[0].text"),
        (message(role="user", content=[{"type": "image_url", "image_url": "u"}]), "messages[0].content[0].image_url"),
        (
            message(role="user", content=[{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]),
            "messages[0].content[0].image_url.url",
        ),
        (
            message(role="user", content=[{"type": "image_url", "image_url": {"url": "https://x", "detail": "max"}}]),
            "messages[0].content[0].image_url.detail",
        ),
        (message(role="system", content=[{"type": "image_url"}]), "messages[0].content[0].type"),
        (message(role="assistant"), "messages[0].content"),
        (
            message(role="assistant", tool_calls=[{"id": "c", "function": {}}]),
            "messages[0].tool_calls[0].function.name",
        ),
        (message(role="assistant", content="x", function_call={"name": "f"}), "messages[0].function_call"),
        (message(role="tool", content="x"), "messages[0].tool_call_id"),
        (message(role="user", content="x", name=1), "messages[0].name"),
        (with_(temperature=2.5), "temperature"),
        (with_(temperature=True), "temperature"),
        (with_(temperature=float("nan")), "temperature"),
        (with_(top_p=float("inf")), "top_p"),
        (with_(top_p=-0.1), "top_p"),
        (with_(max_tokens=0), "max_tokens"),
        (with_(max_completion_tokens=1.5), "max_completion_tokens"),
        (with_(stop=["a", "b", "c", "d", "e"]), "stop"),
        (with_(stop=[1]), "stop[0]"),
        (with_(seed=2**64), "seed"),
        (with_(n=2), "n"),
        (with_(n="1"), "n"),
        (with_(logprobs=True), "logprobs"),
        (with_(top_logprobs=2), "top_logprobs"),
        (with_(functions=[]), "functions"),
        (with_(modalities=["text", "audio"]), "modalities"),
        (with_(stream="yes"), "stream"),
        (with_(stream_options={"include_usage": True}), "stream_options"),
        (with_(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
        (with_(response_format={"type": "xml"}), "response_format.type"),
        (with_(response_format={"type": "json_schema", "json_schema": {}}), "response_format.json_schema.name"),
        (with_(tools=[{"type": "custom", "custom": {}}]), "tools[0].type"),
        (with_(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name"),
        (
            with_(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
            "tools[0].function.parameters",
        ),
        (with_(tool_choice="sometimes"), "tool_choice"),
        (with_(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice.function.name"),
        (with_(parallel_tool_calls="no"), "parallel_tool_calls"),
        (with_(user=5), "user"),
        (with_(frequency_penalty=3), "frequency_penalty"),
        (with_(logit_bias={"50256": -101}), "logit_bias.50256"),
        (with_(top_k=-1), "top_k"),
        (message(role="user", content=[{"type": "text", "text": "ok \ud800"}]), "messages[0].content[0].text"),
        (with_(metadata={"x": {"\udfff": 1}}), "metadata.x"),
    ],
)
def test_each_bad_field_is_named(body, param):
    with pytest.raises(BodyError) as caught:
        parse_chat_request(body)
    assert (caught.value.status, caught.value.param) == (400, param)
    assert caught.value.message.startswith(f"`{param}`: ")


def test_a_full_request_is_normalized():
    inbound = parse_chat_request(
        with_(
            messages=[
                {"role": "developer", "content": "rules", "name": "ops"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image_url", "image_url": {"url": "https://i/x.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "refusal", "refusal": "no"}],
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done"}]},
            ],
            max_tokens=10,
            max_completion_tokens=20,
            temperature=0,
            stop="X",
            seed=3.0,
            stream=True,
            stream_options={"include_usage": True, "include_obfuscation": False},
            response_format={"type": "text"},
            n=1,
            logprobs=False,
            presence_penalty=None,
            reasoning_effort="low",
            store=True,
        )
    )
    request = inbound.request
    assert inbound.include_usage and request.stream
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[0].name == "ops"
    assert request.messages[1].content == (TextPart("see"), ImagePart("https://i/x.png"))
    assert request.messages[2].content == (TextPart("no"),)
    assert request.messages[2].tool_calls == (NormalizedToolCall("c1", "f", "{}"),)
    assert request.messages[3].tool_call_id == "c1"
    assert (request.max_tokens, request.temperature, request.stop, request.seed) == (20, 0.0, ("X",), 3)
    assert request.response_format is None
    assert dict(request.extra) == {"reasoning_effort": "low"}
