"""The MCP front in-process, through the SDK's `Client(server)` in both protocol eras (`auto` = 2026-07-28 and
`legacy` = the 2025-11-25 handshake), on engines built from YAML with `mock` providers.

Covers every tool (schemas, results, structured content), every error path as an `isError` result in the user's
terms, streaming as progress notifications, cancellation reaching the provider, prompts (list, get, errors,
list_changed after a reload) and the shutdown gate. Upstream traffic over real sockets: test_mcp_upstream.py;
transports: test_mcp_serve.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.types import PromptListChangedNotification

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.fronts.tool_results import ERROR_META_KEY
from proxy.providers.base import Provider
from proxy.runtime import Runtime
from proxy.types import ChatRequest, ChatResponse, StreamChunk

MODES = ["auto", "legacy"]
SECRET = "test-mcp-key-never-shown-0123"
WORDS = "one two three four five six"

CONFIG = f"""
version: 1
providers:
  echo: {{type: mock, mock: {{echo: true}}}}
  words: {{type: mock, mock: {{reply: "{WORDS}", chunk_size: 1}}}}
  down: {{type: mock, mock: {{fault: {{status: 503, message: down for maintenance}}}}}}
  broken: {{type: mock, mock: {{fault: {{status: 500, message: disk on fire}}}}}}
  limited: {{type: mock, mock: {{fault: {{status: 429, retry_after: 7s}}}}}}
  cut: {{type: mock, mock: {{reply: alpha beta gamma delta epsilon, fault: {{cut_after: 2}}}}}}
  gate: {{type: python, class: "tests.test_mcp_server:GateProvider"}}
  keyed: {{type: openai, api_key: "${{TEST_KEY}}", base_url: "http://127.0.0.1:9/v1"}}
  unset: {{type: anthropic, api_key: "${{UNSET_TEST_KEY}}"}}
models:
  default: {{targets: [{{provider: echo, model: echo-1}}]}}
  words: {{description: "six words, one per chunk", targets: [{{provider: words, model: words-1}}]}}
  failing: {{targets: [{{provider: down, model: m-down}}, {{provider: broken, model: m-broken}}]}}
  limited: {{targets: [{{provider: limited, model: m-limited}}]}}
  cut: {{targets: [{{provider: cut, model: m-cut}}]}}
  gate: {{targets: [{{provider: gate, model: gate-1}}]}}
  keyed: {{targets: [{{provider: keyed, model: gpt-4o-mini}}, {{provider: unset, model: claude-x}}]}}
retry: {{max_attempts: 1, initial_backoff: 1ms, max_backoff: 1ms}}
cache: {{backend: none}}
templates:
  greet:
    description: Greet someone by name
    system: You are kind.
    text: "Write a greeting for {{{{ name }}}}, in a {{{{ mood }}}} mood."
    arguments:
      name: {{description: Who to greet, required: true}}
      mood: {{description: The greeting's mood, default: cheerful}}
    model: words
    max_tokens: 100
  shout:
    text: "{{{{ text | upper }}}}"
    arguments:
      text: {{required: true}}
"""


class GateProvider(Provider):
    """A provider that answers nothing until cancelled; `started` is set once a call is under way (for a stream,
    after its first chunk) and `stopped` counts calls that ended (cancelled or closed)."""

    type = "python"

    def __init__(self, *, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.stopped = 0

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped += 1
        raise AssertionError("unreachable")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        try:
            yield StreamChunk(text="first ")
            self.started.set()
            await asyncio.Event().wait()
        finally:
            self.stopped += 1


async def eventually(condition: Callable[[], object], within: float = 5) -> None:
    """Wait until `condition()` is true (another task or process is making it so); fail after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (state owned by code without an event to wait on)
            await anyio.sleep(0.005)


def build_engine(text: str = CONFIG) -> Engine:
    return Engine(Runtime.build(load_config_text(text, env={"TEST_KEY": SECRET})))


@pytest.fixture
async def front() -> AsyncIterator[McpFront]:
    engine = build_engine()
    yield McpFront(engine)
    await engine.aclose()


@asynccontextmanager
async def connect(front: McpFront, mode: str, **kwargs: Any) -> AsyncIterator[Client]:
    async with Client(front.server, mode=mode, **kwargs) as client:
        yield client


def error_text(result) -> str:
    assert result.is_error, result
    assert result.structured_content is None
    [content] = result.content
    text = content.text
    assert "Traceback" not in text and not text.startswith("Error executing tool")
    return text


def error_meta(result) -> dict[str, Any]:
    return result.meta[ERROR_META_KEY]


# --- tools: schemas ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_listed_with_descriptions_typed_arguments_and_output_schemas(front, mode):
    async with connect(front, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"complete_text", "complete_chat", "complete_template", "list_providers", "get_metrics"}
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40
        assert tool.output_schema is not None
        for name, schema in tool.input_schema["properties"].items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"
    text = tools["complete_text"].input_schema
    assert text["required"] == ["prompt"]
    assert set(text["properties"]) == {"prompt", "model", "max_tokens", "temperature", "stream", "system"}
    assert text["properties"]["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert tools["complete_chat"].input_schema["required"] == ["messages"]
    assert tools["complete_template"].input_schema["required"] == ["template"]
    assert set(tools["complete_template"].input_schema["properties"]) == {
        "template", "arguments", "model", "max_tokens", "temperature", "stream",
    }  # fmt: skip
    assert "required" not in tools["list_providers"].input_schema
    assert set(tools["get_metrics"].input_schema["properties"]) == {"provider"}
    completion = tools["complete_text"].output_schema
    assert set(completion["required"]) >= {
        "text", "model", "provider", "finish_reason", "usage", "cost", "cached", "attempts", "latency_ms",
    }  # fmt: skip
    assert tools["list_providers"].annotations.read_only_hint is True


# --- tools: answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_complete_text_returns_the_text_and_structured_details(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "hello there", "system": "be brief"})
    assert not result.is_error
    assert [c.text for c in result.content] == ["hello there"]
    data = result.structured_content
    assert data["text"] == "hello there"
    assert (data["provider"], data["model"], data["route"]) == ("echo", "echo-1", "default")
    assert data["finish_reason"] == "stop"
    assert data["usage"]["output_tokens"] > 0 and data["usage"]["input_tokens"] > 0
    assert data["cached"] is False and data["cost"] == 0.0
    assert data["attempts"] == [
        {"target": "echo/echo-1", "attempt": 1, "error_kind": None, "status": None, "message": None, "delay": 0.0}
    ]
    assert data["latency_ms"] >= 0


@pytest.mark.parametrize("mode", MODES)
async def test_complete_text_passes_model_and_max_tokens(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "hi", "model": "words", "max_tokens": 2})
    data = result.structured_content
    assert data["route"] == "words" and data["provider"] == "words"
    assert data["text"] == WORDS[:8] and data["finish_reason"] == "length"  # the mock truncates to max_tokens


@pytest.mark.parametrize("mode", MODES)
async def test_complete_chat_sends_the_conversation(front, mode):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_chat", {"messages": messages})
    assert result.structured_content["text"] == "second question"  # echo: the last user message
    assert result.content[0].text == "second question"


@pytest.mark.parametrize("mode", MODES)
async def test_complete_template_renders_with_the_templates_settings(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_template", {"template": "greet", "arguments": {"name": "Ada"}})
        overridden = await client.call_tool(
            "complete_template", {"template": "greet", "arguments": {"name": "Ada"}, "model": "default"}
        )
    assert result.structured_content["route"] == "words"  # the template's model
    assert result.structured_content["text"] == WORDS
    # the echo model answers with the rendered prompt itself: arguments and defaults were applied
    assert overridden.structured_content["text"] == "Write a greeting for Ada, in a cheerful mood."


@pytest.mark.parametrize("mode", MODES)
async def test_list_providers_describes_models_and_providers_without_secrets(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("list_providers", {})
        with_metrics = await client.call_tool("list_providers", {"include_metrics": True})
    assert not result.is_error
    data = result.structured_content
    assert json.loads(result.content[0].text) == data
    assert data["config"]["version"] == front.engine.runtime.config.version_hash
    assert data["config"]["loaded_at"]
    models = {m["name"]: m for m in data["models"]}
    assert models["default"]["default"] is True and models["words"]["default"] is False
    assert models["failing"]["targets"] == ["down/m-down", "broken/m-broken"]
    assert models["words"]["description"] == "six words, one per chunk"
    providers = {p["name"]: p for p in data["providers"]}
    assert providers["echo"]["type"] == "mock" and providers["echo"]["enabled"] is True
    assert providers["echo"]["models"] == ["echo-1"]
    assert providers["echo"]["breaker"]["state"] == "closed"
    assert "requests_per_minute" in providers["echo"]["limits"]
    assert providers["unset"]["enabled"] is False
    assert "UNSET_TEST_KEY" in providers["unset"]["disabled_reason"]
    assert "metrics" not in providers["echo"] or providers["echo"]["metrics"] is None
    assert "request_count" in {p["name"]: p for p in with_metrics.structured_content["providers"]}["echo"]["metrics"]
    for shown in (result, with_metrics):
        assert SECRET not in shown.content[0].text and SECRET not in json.dumps(shown.structured_content)


@pytest.mark.parametrize("mode", MODES)
async def test_get_metrics_counts_requests_and_attempts(front, mode):
    async with connect(front, mode) as client:
        await client.call_tool("complete_text", {"prompt": "a"})
        await client.call_tool("complete_text", {"prompt": "b", "model": "failing"})
        await client.call_tool("list_providers", {})  # not a completion request: not counted
        everything = await client.call_tool("get_metrics", {})
        one = await client.call_tool("get_metrics", {"provider": "down"})
    data = everything.structured_content
    assert (data["total_requests"], data["success_requests"], data["failed_requests"]) == (2, 1, 1)
    assert data["provider_usage"]["echo"] == 1 and data["provider_errors"]["down"] == 1
    assert data["provider_metrics"]["broken"]["error_count"] == 1
    assert {"latency_ms", "cache", "fallbacks", "retries"} <= set(data)
    assert set(one.structured_content["provider_usage"]) == {"down"}


# --- tools: errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_model_names_the_known_models(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "x", "model": "gpt-5"})
    text = error_text(result)
    assert "unknown model `gpt-5`" in text and "`default`" in text and "`words`" in text
    assert error_meta(result)["param"] == "model"
    assert "failing" in error_meta(result)["known_models"]


@pytest.mark.parametrize("mode", MODES)
async def test_all_targets_failed_gives_each_targets_reason(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "x", "model": "failing"})
        disabled = await client.call_tool("complete_text", {"prompt": "x", "model": "keyed"})
    lines = error_text(result).splitlines()
    assert lines[0] == "All targets of model `failing` failed:"
    assert lines[1].startswith("- down/m-down:") and "503" in lines[1] and "down for maintenance" in lines[1]
    assert lines[2].startswith("- broken/m-broken:") and "500" in lines[2] and "disk on fire" in lines[2]
    assert [f["target"] for f in error_meta(result)["failures"]] == ["down/m-down", "broken/m-broken"]
    text = error_text(disabled)
    assert "UNSET_TEST_KEY" in text and SECRET not in text


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limited_says_when_to_retry(front, mode):
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "x", "model": "limited"})
    text = error_text(result)
    assert "429" in text and text.endswith("Retry after 7.0 s.")
    assert error_meta(result)["retry_after"] == 7.0


async def test_our_own_rate_limit_says_when_to_retry():
    config = CONFIG.replace(
        "echo: {type: mock, mock: {echo: true}}",
        "echo: {type: mock, mock: {echo: true}, limits: {requests_per_minute: 1, max_wait: 0s}}",
    )
    engine = build_engine(config)
    try:
        async with connect(McpFront(engine), "auto") as client:
            assert not (await client.call_tool("complete_text", {"prompt": "x"})).is_error
            result = await client.call_tool("complete_text", {"prompt": "x"})
    finally:
        await engine.aclose()
    text = error_text(result)
    assert "requests/min" in text and "Retry after 60 s." in text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("complete_text", {}, ["`complete_text` needs the argument `prompt`"]),
        ("complete_text", {"prompt": ""}, ["invalid argument `prompt`", "at least 1 character"]),
        ("complete_text", {"prompt": "x", "max_tokens": 0}, ["invalid argument `max_tokens`", "greater than"]),
        ("complete_text", {"prompt": "x", "temperature": 9}, ["invalid argument `temperature`", "less than"]),
        ("complete_text", {"prompt": "x", "stream": "often"}, ["invalid argument `stream`", "boolean"]),
        ("complete_text", {"prompt": "x", "max_token": 5}, ["unknown argument `max_token`", "`max_tokens`?"]),
        ("complete_chat", {"messages": []}, ["invalid argument `messages`", "at least 1 item"]),
        ("complete_chat", {"messages": [{"role": "bot", "content": "x"}]}, ["`messages[0].role`", "'user'"]),
        ("complete_chat", {"messages": [{"role": "user"}]}, ["`messages[0].content`"]),
        ("complete_chat", {"messages": [{"role": "system", "content": "x"}]}, ["at least one user or assistant"]),
        ("complete_template", {"template": "gret"}, ["unknown template `gret`", "did you mean `greet`"]),
        ("complete_template", {"template": "greet", "arguments": {"nam": "x"}}, ["unknown argument `nam`"]),
        ("complete_template", {"template": "greet"}, ["missing required argument `name`"]),
        ("get_metrics", {"provider": "nope"}, ["unknown provider `nope`", "`echo`"]),
    ],
)
async def test_bad_arguments_name_the_argument(front, mode, tool, arguments, expected):
    async with connect(front, mode) as client:
        result = await client.call_tool(tool, arguments)
    text = error_text(result)
    for part in expected:
        assert part in text
    assert error_meta(result)["param"]


@pytest.mark.parametrize("mode", MODES)
async def test_an_internal_error_is_reported_without_its_text(front, mode, monkeypatch, caplog):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals: /etc/shadow")

    monkeypatch.setattr(front.engine, "complete", broken)
    async with connect(front, mode) as client:
        result = await client.call_tool("complete_text", {"prompt": "x"})
    text = error_text(result)
    assert "internal error in the proxy (RuntimeError)" in text and "shadow" not in text
    assert "shadow" in caplog.text  # the details go to the log


# --- streaming --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_streamed_text_arrives_as_progress_in_order(front, mode):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(front, mode) as client:
        result = await client.call_tool(
            "complete_text", {"prompt": "x", "model": "words", "stream": True}, progress_callback=on_progress
        )
    deltas = [message for _, _, message in seen]
    assert deltas == ["one ", "two ", "three ", "four ", "five ", "six"]
    assert [progress for progress, _, _ in seen] == [4, 8, 14, 19, 24, 27]  # characters so far
    assert all(total is None for _, total, _ in seen)
    assert result.structured_content["text"] == WORDS == "".join(deltas)
    assert result.content[0].text == WORDS


@pytest.mark.parametrize("mode", MODES)
async def test_stream_without_a_progress_token_simply_completes(front, mode):
    async with connect(front, mode) as client:
        arguments = {"messages": [{"role": "user", "content": "a b"}], "stream": True}
        result = await client.call_tool("complete_chat", arguments)
    assert result.structured_content["text"] == "a b" and result.structured_content["finish_reason"] == "stop"


@pytest.mark.parametrize("mode", MODES)
async def test_a_stream_cut_midway_is_an_error_naming_the_partial_output(front, mode):
    seen: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message)

    async with connect(front, mode) as client:
        result = await client.call_tool(
            "complete_text", {"prompt": "x", "model": "cut", "stream": True}, progress_callback=on_progress
        )
    text = error_text(result)
    assert seen == ["alpha ", "beta "]
    assert text.startswith("The answer was cut off after 11 characters:")
    assert text.endswith("Partial output (incomplete):\nalpha beta ")
    assert error_meta(result)["partial_text"] == "alpha beta "


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True])
async def test_client_cancellation_cancels_the_upstream_call(front, mode, stream):
    gate: GateProvider = front.engine.runtime.providers["gate"]
    async with connect(front, mode) as client:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                lambda: client.call_tool("complete_text", {"prompt": "x", "model": "gate", "stream": stream})
            )
            with anyio.fail_after(5):
                await gate.started.wait()
            assert gate.stopped == 0 and front.in_flight == 1
            tasks.cancel_scope.cancel()  # the client gives up: the SDK cancels the request
        await eventually(lambda: gate.stopped and not front.in_flight)  # the cancellation reaches the server task
        # the connection still serves
        assert not (await client.call_tool("complete_text", {"prompt": "still here"})).is_error
    assert gate.stopped == 1


# --- prompts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_templates_are_listed_as_prompts_with_their_arguments(front, mode):
    async with connect(front, mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"greet", "shout"}
    greet = prompts["greet"]
    assert greet.description == "Greet someone by name"
    assert [(a.name, a.description, a.required) for a in greet.arguments] == [
        ("name", "Who to greet", True),
        ("mood", "The greeting's mood", False),
    ]
    assert prompts["shout"].description  # a template without a description still says what it is


@pytest.mark.parametrize("mode", MODES)
async def test_get_prompt_renders_the_template(front, mode):
    async with connect(front, mode) as client:
        got = await client.get_prompt("greet", {"name": "Ada", "mood": "grumpy"})
        shout = await client.get_prompt("shout", {"text": "hey"})
    assert got.description == "Greet someone by name"
    assert [(m.role, m.content.text) for m in got.messages] == [
        ("user", "You are kind."),  # MCP prompts have no system role: the system text comes first
        ("user", "Write a greeting for Ada, in a grumpy mood."),
    ]
    assert [m.content.text for m in shout.messages] == ["HEY"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("greet", {}, "missing required argument `name`"),
        ("greet", {"name": "x", "colour": "red"}, "unknown argument `colour`"),
        ("gret", {"name": "x"}, "unknown prompt `gret` (did you mean `greet`?); known prompts: `greet`, `shout`"),
    ],
)
async def test_prompt_errors_are_invalid_params_naming_the_problem(front, mode, name, arguments, expected):
    async with connect(front, mode) as client:
        with pytest.raises(MCPError) as raised:
            await client.get_prompt(name, arguments)
    assert raised.value.code == -32602
    assert expected in raised.value.message


RELOADED = (
    CONFIG.split("templates:")[0]
    + """templates:
  farewell:
    description: Say goodbye
    text: "Goodbye {{ name }}"
    arguments:
      name: {required: true}
"""
)


async def reload_config(front: McpFront, text: str) -> None:
    """What a config reload does to the engine: build the new runtime from the old one, swap it in, close the old."""
    runtime = Runtime.build(load_config_text(text, env={"TEST_KEY": SECRET}), previous=front.engine.runtime)
    await front.engine.swap(runtime).aclose()


async def test_a_reload_that_changes_prompts_notifies_2026_clients(front):
    async with connect(front, "auto") as client:
        assert client.server_capabilities.prompts.list_changed is True
        async with client.listen(prompts_list_changed=True) as subscription:
            await reload_config(front, RELOADED)
            await front.on_reload(None, front.engine.runtime)  # as the reloader calls its listeners
            with anyio.fail_after(5):
                event = await subscription.__aiter__().__anext__()
        assert type(event).__name__ == "PromptsListChanged"
        assert [p.name for p in (await client.list_prompts()).prompts] == ["farewell"]
        assert (await client.get_prompt("farewell", {"name": "Bo"})).messages[0].content.text == "Goodbye Bo"
        result = await client.call_tool("complete_template", {"template": "farewell", "arguments": {"name": "Bo"}})
        assert result.structured_content["text"] == "Goodbye Bo"


async def test_a_reload_that_changes_prompts_notifies_legacy_clients(front):
    received: list[Any] = []
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        received.append(message)
        if isinstance(message, PromptListChangedNotification):
            changed.set()

    async with connect(front, "legacy", message_handler=on_message) as client:
        assert client.server_capabilities.prompts.list_changed is True
        await client.list_prompts()
        await reload_config(front, RELOADED)
        assert await front.refresh() is True
        with anyio.fail_after(5):
            await changed.wait()
        assert [p.name for p in (await client.list_prompts()).prompts] == ["farewell"]
    # the closed connection is forgotten: notifying again reaches nobody and fails nothing
    await front.notify_prompts_changed()
    assert not front._legacy_connections


async def test_a_reload_without_prompt_changes_does_not_notify(front):
    await reload_config(front, CONFIG.replace("retry: {max_attempts: 1", "retry: {max_attempts: 2"))
    assert await front.refresh() is False
    new_engine = build_engine()
    try:
        assert await front.refresh(new_engine) is False
        assert front.engine is new_engine
    finally:
        await new_engine.aclose()


# --- shutdown ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_drain_refuses_new_calls_and_waits_for_running_ones(mode):
    config = CONFIG.replace("words: {type: mock, mock: {", "words: {type: mock, mock: {latency: 200ms, ")
    engine = build_engine(config)
    front = McpFront(engine)
    results: list[Any] = []
    try:
        async with connect(front, mode) as client:

            async def call() -> None:
                results.append(await client.call_tool("complete_text", {"prompt": "x", "model": "words"}))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                await eventually(lambda: front.in_flight)
                assert await front.drain(grace_period=5) is True
                refused = await client.call_tool("complete_text", {"prompt": "late"})
    finally:
        await engine.aclose()
    assert [r.structured_content["text"] for r in results] == [WORDS]  # the running call finished normally
    assert "shutting down" in error_text(refused)
