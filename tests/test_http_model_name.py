"""One rule for `model` in the answers of both HTTP fronts: the name the client asked for (the configured model),
never the upstream's model id, which the `x-llm-proxy-model` header carries. Whole and streamed answers, fresh and
replayed from the cache, read through the official `openai` and `anthropic` SDKs, with the fake Anthropic and
OpenAI upstreams reporting dated model ids of their own behind the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anthropic
import openai
import pytest

from proxy.engine import Engine
from proxy.fronts import anthropic_api, openai_api
from tests.fakes import AnthropicFake, ModelReply, OpenAIFake
from tests.http_server import engine_app

TOKEN = "test-model-name-token-5150"
KEY = "test-model-name-upstream-key-77"
ANTHROPIC_ID = "claude-sonnet-4-5-20250929"  # what the fake Anthropic says answered
OPENAI_ID = "gpt-4o-mini-2024-07-18"
CONFIG = """
version: 1
server: {auth: {bearer_tokens: ["${TOKEN}"]}}
providers:
  ant: {type: anthropic, base_url: "ANTHROPIC_URL", api_key: "${KEY}"}
  oai: {type: openai, base_url: "OPENAI_URL", api_key: "${KEY}"}
  mock: {type: mock, mock: {reply: "mocked answer"}}
retry: {max_attempts: 1}
models:
  default: {targets: [{provider: mock, model: mock-1}]}
  smart: {targets: [{provider: ant, model: claude-sonnet-4-5}]}
  quick: {targets: [{provider: oai, model: gpt-4o-mini}]}
"""
HI = [{"role": "user", "content": "hi"}]
# configured name -> (the target's model id in the config, the id the upstream reports in its answer)
TARGETS = {
    "smart": ("claude-sonnet-4-5", ANTHROPIC_ID),
    "quick": ("gpt-4o-mini", OPENAI_ID),
    "default": ("mock-1", "mock-1"),
}


@dataclass
class Served:
    engine: Engine
    anthropic: AnthropicFake
    openai: OpenAIFake
    openai_client: openai.AsyncOpenAI
    anthropic_client: anthropic.AsyncAnthropic

    def script(self, name: str) -> None:
        """The next answer of the upstream behind `name` reports its own dated model id."""
        if name == "smart":
            self.anthropic.script(ModelReply(text=("Hello", " there"), model=ANTHROPIC_ID))
        elif name == "quick":
            self.openai.script(ModelReply(text=("Hello", " there"), model=OPENAI_ID))


@pytest.fixture
async def served(start_fake) -> AsyncIterator[Served]:
    ant = await start_fake(AnthropicFake(api_key=KEY))
    oai = await start_fake(OpenAIFake(api_key=KEY))
    text = CONFIG.replace("ANTHROPIC_URL", ant.base_url).replace("OPENAI_URL", oai.base_url)
    routes = [*openai_api.routes, *anthropic_api.routes]
    async with engine_app(text, api_routes=routes, env={"TOKEN": TOKEN, "KEY": KEY}) as (base_url, engine):
        openai_client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=TOKEN, max_retries=0)
        anthropic_client = anthropic.AsyncAnthropic(base_url=base_url, api_key=TOKEN, max_retries=0)
        async with openai_client, anthropic_client:
            yield Served(engine, ant, oai, openai_client, anthropic_client)


def check_header(headers, name: str, cache: str) -> None:
    assert headers["x-llm-proxy-cache"] == cache
    assert headers["x-llm-proxy-model"] in TARGETS[name], headers["x-llm-proxy-model"]  # the upstream's id
    assert headers["x-llm-proxy-model"] != name


@pytest.mark.parametrize("name", list(TARGETS))
async def test_openai_front_answers_carry_the_name_asked_for(served, name):
    ask = {"model": name, "messages": HI, "temperature": 0}  # deterministic: the second ask is a cache hit
    for cache in ("miss", "hit"):
        if cache == "miss":
            served.script(name)
        raw = await served.openai_client.chat.completions.with_raw_response.create(**ask)
        check_header(raw.headers, name, cache)
        assert raw.parse().model == name
    for cache, headers in (("hit", {}), ("miss", {"cache-control": "no-cache"})):  # replayed, then fresh
        if cache == "miss":
            served.script(name)
        raw = await served.openai_client.chat.completions.with_raw_response.create(
            **ask, stream=True, stream_options={"include_usage": True}, extra_headers=headers
        )
        check_header(raw.headers, name, cache)
        chunks = [chunk async for chunk in raw.parse()]
        assert chunks and {chunk.model for chunk in chunks} == {name}


@pytest.mark.parametrize("name", list(TARGETS))
async def test_anthropic_front_answers_carry_the_name_asked_for(served, name):
    ask = {"model": name, "max_tokens": 50, "messages": HI, "extra_body": {"temperature": 0}}
    for cache in ("miss", "hit"):
        if cache == "miss":
            served.script(name)
        raw = await served.anthropic_client.messages.with_raw_response.create(**ask)
        check_header(raw.headers, name, cache)
        assert (await raw.parse()).model == name
    for cache, headers in (("hit", {}), ("miss", {"cache-control": "no-cache"})):
        if cache == "miss":
            served.script(name)
        async with served.anthropic_client.messages.stream(**ask, extra_headers=headers) as stream:
            start = None
            async for event in stream:
                if event.type == "message_start":
                    start = event.message
            final = await stream.get_final_message()
        check_header(stream.response.headers, name, cache)
        assert start is not None and start.model == name
        assert final.model == name
