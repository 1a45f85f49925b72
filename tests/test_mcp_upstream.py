"""MCP tools against a real upstream: the fake OpenAI server on 127.0.0.1, reached through the real codec and the
aiohttp transport. In-process `Client(server)` in both protocol eras.

What travels: the request body the upstream received, the answer and usage it sent (and the cost priced from
them), streamed deltas as progress notifications, an upstream error as a tool error, and a client's cancellation
closing the upstream connection mid-stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from mcp import Client

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.runtime import Runtime
from tests.fakes import DEFAULT_OPENAI_TEXT, ErrorReply, ModelReply, OpenAIFake

KEY = "test-mcp-upstream-key-0123456789"
MODES = ["auto", "legacy"]


def config_text(base_url: str) -> str:
    return f"""
version: 1
providers:
  openai:
    type: openai
    base_url: {base_url}
    api_key: ${{UPSTREAM_KEY}}
    timeout: {{connect: 2s, first_token: 5s, total: 30s}}
    pricing: {{gpt-4o-mini: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
retry: {{max_attempts: 1}}
cache: {{backend: none}}
"""


async def eventually(condition: Callable[[], object], within: float = 5) -> None:
    """Wait until `condition()` is true (another task or process is making it so); fail after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (state owned by code without an event to wait on)
            await anyio.sleep(0.005)


@pytest.fixture
async def front(start_fake) -> AsyncIterator[tuple[McpFront, OpenAIFake]]:
    fake = await start_fake(OpenAIFake(api_key=KEY))
    engine = Engine(Runtime.build(load_config_text(config_text(fake.base_url), env={"UPSTREAM_KEY": KEY})))
    yield McpFront(engine), fake
    await engine.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_complete_chat_goes_to_the_upstream_and_back(front, mode):
    front, fake = front
    async with Client(front.server, mode=mode) as client:
        result = await client.call_tool(
            "complete_chat",
            {
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "max_tokens": 50,
            },
        )
    [request] = fake.requests
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert request.header("authorization") == f"Bearer {KEY}"
    data = result.structured_content
    assert result.content[0].text == data["text"] == DEFAULT_OPENAI_TEXT
    assert (data["provider"], data["model"], data["finish_reason"]) == ("openai", "gpt-4o-mini", "stop")
    assert data["usage"] == {"input_tokens": 12, "output_tokens": 6}
    assert data["cost"] == pytest.approx((12 * 1.0 + 6 * 2.0) / 1e6)
    assert KEY not in str(result)


@pytest.mark.parametrize("mode", MODES)
async def test_streamed_deltas_from_the_upstream_arrive_as_progress(front, mode):
    front, fake = front
    fake.script(ModelReply(text=("Streaming", " through", " the proxy.")))
    deltas: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        deltas.append(message)

    async with Client(front.server, mode=mode) as client:
        arguments = {"prompt": "go", "stream": True}
        result = await client.call_tool("complete_text", arguments, progress_callback=on_progress)
    assert fake.requests[0].json["stream"] is True
    assert deltas == ["Streaming", " through", " the proxy."]
    assert result.structured_content["text"] == "Streaming through the proxy."
    assert result.structured_content["usage"] == {"input_tokens": 12, "output_tokens": 6}


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_error_is_a_tool_error_in_plain_words(front, mode):
    front, fake = front
    fake.script(ErrorReply(401, message="Incorrect API key provided"))
    async with Client(front.server, mode=mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "x"})
    assert result.is_error
    text = result.content[0].text
    assert text.startswith("All targets of model `default` failed:\n- openai/gpt-4o-mini: openai: auth 401:")
    assert "Incorrect API key provided" in text and KEY not in text


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_streamed_call_closes_the_upstream_connection(front, mode):
    front, fake = front
    fake.script(ModelReply(text=tuple(f"word{i} " for i in range(100)), chunk_delay=0.05))  # about 5 s in all
    first = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first.set()

    async with Client(front.server, mode=mode) as client:
        async with anyio.create_task_group() as tasks:
            arguments = {"prompt": "x", "stream": True}
            tasks.start_soon(lambda: client.call_tool("complete_text", arguments, progress_callback=on_progress))
            with anyio.fail_after(5):
                await first.wait()
            tasks.cancel_scope.cancel()
        [request] = fake.requests
        await eventually(lambda: request.outcome != "pending", within=3)  # well before the upstream would finish
    assert request.outcome == "client_disconnected"
