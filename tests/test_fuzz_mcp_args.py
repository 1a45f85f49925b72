"""MCP tool arguments, adversarially, through the SDK's `Client` in both protocol eras: missing, wrong types, extra
keys, huge and deeply nested values, unknown names. Every call gets a tool result (never a protocol error or an
exception); a bad one is an `isError` result naming the argument in `_meta.param`, short enough to read; the server
answers normally afterwards. Parameters too malformed for a tool result (`arguments` that is not an object, a
non-text name or prompt argument) are JSON-RPC `invalid params` errors that say what is wrong, in both eras over
streamable HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import Client

from proxy.fronts.mcp_server import McpFront
from proxy.fronts.tool_results import ERROR_META_KEY, MAX_LISTED_PROBLEMS
from tests.test_mcp_serve import http_server
from tests.test_mcp_server import CONFIG, MODES, build_engine

FUZZ_CONFIG = CONFIG + (
    "  maybe:\n"
    '    text: "Topic: {{ topic }}. Tone: [{{ tone }}]"\n'
    "    arguments:\n"
    "      topic: {required: true}\n"
    '      tone: {description: "optional, without a default"}\n'
)


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@asynccontextmanager
async def connect(mode: str) -> AsyncIterator[Client]:
    engine = build_engine(FUZZ_CONFIG)
    try:
        async with Client(McpFront(engine).server, mode=mode) as client:
            yield client
    finally:
        await engine.aclose()


BAD_CALLS = [
    # (tool, arguments, the argument named in _meta.param, words in the message)
    ("complete_text", {"prompt": "x", "max_tokens": True}, "max_tokens", ["not true or false"]),
    ("complete_text", {"prompt": "x", "max_tokens": 10**30}, "max_tokens", ["at most 2147483647"]),
    ("complete_text", {"prompt": "x", "max_tokens": 10**400}, "max_tokens", ["at most 2147483647"]),
    ("complete_text", {"prompt": "x", "temperature": False}, "temperature", ["not true or false"]),
    ("complete_text", {"prompt": None}, "prompt", ["valid string"]),
    ("complete_text", {"prompt": nested(200)}, "prompt", ["valid string", "[[[["]),
    ("complete_text", {"prompt": "x", "model": "wrods"}, "model", ["unknown model `wrods`"]),
    ("complete_text", {"prompt": "x", "modle": "words"}, "modle", ["unknown argument `modle`", "`model`?"]),
    ("complete_text", {"prompt": "x", "k" * 100_000: 1}, "k" * 100, ["unknown argument `kkk", "...`"]),
    ("complete_chat", {"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name", [
        "invalid argument `messages[0]`", "unknown key `name`"
    ]),
    ("complete_chat", {"messages": [{"role": "user", "text": "hi"}]}, "messages[0].content", ["`messages[0].content`"]),
    ("complete_chat", {"messages": [{"role": "user", "content": "hi", "k" * 100_000: 1}]}, "messages[0]." + "k" * 88, [
        "unknown key `kkk", "...`"  # the key clipped, not echoed whole
    ]),
    ("complete_chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens", ["true"]),
    ("complete_template", {"template": "greet", "arguments": {"name": "x"}, "max_tokens": True}, "max_tokens", [
        "not true or false"
    ]),
    ("complete_template", {"template": "greet", "arguments": {"name": "x"}, "max_tokens": 2**31}, "max_tokens", [
        "at most"
    ]),
    ("complete_template", {"template": "gret"}, "template", ["did you mean `greet`"]),
    ("complete_template", {"template": "greet", "arguments": "name=x"}, "arguments", ["valid dictionary"]),
    ("complete_template", {"template": "greet", "arguments": {"nam": "x"}}, "arguments", ["unknown argument `nam`"]),
    ("get_metrics", {"provider": "ecoh"}, "provider", ["unknown provider `ecoh`"]),
    ("list_providers", {"include_metrics": None}, "include_metrics", ["valid boolean"]),
]  # fmt: skip


def error_of(result) -> tuple[str, dict]:
    assert result.is_error, result
    [content] = result.content
    assert "Traceback" not in content.text and "internal error" not in content.text
    return content.text, result.meta[ERROR_META_KEY]


@pytest.mark.parametrize("mode", MODES)
async def test_bad_arguments_are_tool_errors_naming_the_argument(mode):
    async with connect(mode) as client:
        for tool, arguments, param, words in BAD_CALLS:
            text, meta = error_of(await client.call_tool(tool, arguments))
            assert meta["param"] == param, (tool, arguments, text)
            for word in words:
                assert word in text, (tool, text)
            assert len(text) < 1000
        assert (await client.call_tool("complete_text", {"prompt": "still here"})).content[0].text == "still here"


@pytest.mark.parametrize("mode", MODES)
async def test_thousands_of_bad_arguments_get_a_short_answer(mode):
    async with connect(mode) as client:
        text, meta = error_of(
            await client.call_tool("complete_text", {"prompt": "x", **{f"k{i}": i for i in range(3000)}})
        )
        assert text.count("\n") == MAX_LISTED_PROBLEMS and text.endswith(
            "... and 2990 more problems with the arguments"
        )
        assert meta["problems"] == 3000 and len(meta["params"]) == MAX_LISTED_PROBLEMS
        arguments = {"text": "a", **{f"k{i}": i for i in range(3000)}}
        text, meta = error_of(
            await client.call_tool("complete_template", {"template": "shout", "arguments": arguments})
        )
        assert "2990 more unknown arguments" in text and len(text) < 1000 and meta["param"] == "arguments"


@pytest.mark.parametrize("mode", MODES)
async def test_odd_but_valid_values_are_answered(mode):
    async with connect(mode) as client:
        # Deeply nested JSON as a template argument, lax numbers, and a temperature the client cannot encode (sent as
        # null by the SDK) are answers, not failures.
        for tool, arguments in [
            ("complete_template", {"template": "shout", "arguments": {"text": nested(200)}}),
            ("complete_text", {"prompt": "x", "max_tokens": "5"}),
            ("complete_text", {"prompt": "x", "max_tokens": 2**31 - 1}),
            ("complete_text", {"prompt": "x", "temperature": float("inf")}),
            ("complete_chat", {"messages": [{"role": "user", "content": "hi"}] * 2000}),
        ]:
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, (tool, result.content[0].text)


@pytest.mark.parametrize("mode", MODES)
async def test_an_optional_argument_left_out_prints_nothing(mode):
    async with connect(mode) as client:
        result = await client.call_tool("complete_template", {"template": "maybe", "arguments": {"topic": "tea"}})
        assert not result.is_error
        prompt = await client.get_prompt("maybe", {"topic": "tea"})
        assert prompt.messages[0].content.text == "Topic: tea. Tone: []"  # not "[None]"


# --- malformed params over the wire (what the SDK's typed Client cannot send) ----------------------------------

MALFORMED = [
    ("tools/call", {"name": "complete_text", "arguments": ["x"]}, "`arguments` of tool `complete_text` must be"),
    ("tools/call", {"name": "complete_text", "arguments": "prompt=x"}, "must be an object (name: value), got a string"),
    ("tools/call", {"name": 5}, "`tools/call` needs the tool's `name` as a string, got an integer"),
    ("tools/call", {"name": None}, "`tools/call` needs the tool's `name` as a string, got null"),
    ("tools/call", {"arguments": {}}, "`tools/call` needs the tool's `name` (a string)"),
    ("prompts/get", {"name": "greet", "arguments": {"name": 5}}, "argument `name` must be a string, got an integer"),
    ("prompts/get", {"name": "greet", "arguments": {"name": True}}, "argument `name` must be a string, got a boolean"),
    ("prompts/get", {"name": "greet", "arguments": ["x"]}, "`arguments` of prompt `greet` must be an object"),
    ("prompts/get", {"name": ["greet"]}, "`prompts/get` needs the prompt's `name` as a string, got an array"),
]  # fmt: skip


async def post_legacy(http, url: str) -> Callable[[str, dict], Awaitable[dict]]:
    """A 2025-11-25 session: initialize, then post raw JSON-RPC; returns the JSON-RPC reply of each request."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}
    response = await http.post(
        url, headers=headers, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}
    )
    headers |= {"mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def send(method: str, params: dict) -> dict:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        reply = await http.post(url, headers=headers, json=body)
        return json.loads(reply.text.split("data: ", 1)[1]) if reply.text.startswith("event:") else reply.json()

    return send


async def post_modern(http, url: str) -> Callable[[str, dict], Awaitable[dict]]:
    """2026-07-28: no session; each request carries its envelope and the method and name headers."""
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }

    async def send(method: str, params: dict) -> dict:
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": method,
            "mcp-name": str(params.get("name")),
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": envelope}}
        return (await http.post(url, headers=headers, json=body)).json()

    return send


@pytest.mark.parametrize("era", [post_legacy, post_modern])
async def test_malformed_params_are_invalid_params_naming_the_problem(era):
    async with http_server(FUZZ_CONFIG) as (url, _stop), httpx2.AsyncClient(timeout=30) as http:
        send = await era(http, url)
        for method, params, words in MALFORMED:
            if era is post_modern and not isinstance(params.get("name"), str):
                continue  # 2026-07-28 carries the name in a header too: the SDK refuses the mismatch first (-32020)
            reply = await send(method, params)
            assert reply["error"]["code"] == -32602, (params, reply)
            assert words in reply["error"]["message"], reply
        answer = await send("tools/call", {"name": "complete_text", "arguments": {"prompt": "still here"}})
        assert answer["result"]["content"][0]["text"] == "still here"
