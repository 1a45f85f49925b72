"""Adversarial fields, one at a time, on both fronts, each sent plain and with `"stream": true` over real HTTP: wrong
types (null, booleans for numbers, floats for integers, huge and negative numbers, NaN/Infinity, strings for
arrays), unknown roles and content types, bad tools and tool choices, lone surrogates. Each must be a 400 in the
API's error shape naming the field's path (never a 5xx, never a stream that starts and then fails); and odd but
valid input (emoji, NUL, duplicate keys, integral floats, unknown fields, ...) must be answered, streamed or not.

Shared scaffolding (the served proxy, the error checks) is in test_fuzz_http_inbound.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import AnthropicFake, OpenAIFake
from tests.test_fuzz_http_inbound import AN, CT, HI, OA, Answer, Proxy, error_problems, serve_proxy, with_literals

DELETE = object()  # a patch value: remove the field


@pytest.fixture
async def proxy(openai_fake: OpenAIFake, anthropic_fake: AnthropicFake) -> AsyncIterator[Proxy]:
    async with serve_proxy(openai_fake, anthropic_fake) as served:
        yield served


def patched(path: str, patch: dict[str, Any], stream: bool) -> bytes:
    """The minimal body for `path`, `stream` set, then `patch` applied (`DELETE` removes a field)."""
    body: dict[str, Any] = {"model": "default", "messages": HI, "stream": stream}
    if path == AN:
        body["max_tokens"] = 16
    for key, value in patch.items():
        if value is DELETE:
            body.pop(key, None)
        else:
            body[key] = value
    return with_literals(body)


def msgs(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


def user(content: Any, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


def asst(**fields: Any) -> dict[str, Any]:
    return {"role": "assistant", **fields}


def after_q(*messages: Any) -> dict[str, Any]:
    """A user question, then `messages`."""
    return msgs(user("q"), *messages)


def call(**fields: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, **fields}


def image_url(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": url}


def oa_tools(*functions: dict[str, Any], kind: str = "function") -> dict[str, Any]:
    return {"tools": [{"type": kind, "function": function} for function in functions]}


def block(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def image(**source: Any) -> dict[str, Any]:
    return block("image", source=source)


def tool_use(**fields: Any) -> dict[str, Any]:
    return block("tool_use", **{"id": "t1", "name": "f", "input": {}, **fields})


def tool_result(**fields: Any) -> dict[str, Any]:
    return block("tool_result", **fields)


WEATHER = {"name": "weather", "input_schema": {"type": "object"}}
LONE = "\ud800"  # a lone surrogate: json.dumps writes it as the escape `\ud800`
M0, M1 = "messages[0]", "messages[1]"
C0, C1 = "messages[0].content[0]", "messages[1].content[0]"
CALL0 = "messages[1].tool_calls[0]"
FUNCTION, SCHEMA, SOURCE = "tools[0].function", "response_format.json_schema", "messages[0].content[0].source"
USAGE, SERIAL = "stream_options.include_usage", "disable_parallel_tool_use"


OBJECT_ARGUMENTS = {"name": "f", "arguments": {}}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


OPENAI_CASES: list[tuple[str, dict[str, Any], str]] = [
    # model
    ("model missing", {"model": DELETE}, "model"),
    ("model null", {"model": None}, "model"),
    ("model a number", {"model": 7}, "model"),
    ("model empty", {"model": ""}, "model"),
    ("model an array", {"model": ["default"]}, "model"),
    ("model 300 characters", {"model": "m" * 300}, "model"),
    ("model a lone surrogate", {"model": "gpt" + LONE}, "model"),
    # messages
    ("messages missing", {"messages": DELETE}, "messages"),
    ("messages null", {"messages": None}, "messages"),
    ("messages empty", {"messages": []}, "messages"),
    ("messages a string", {"messages": "hi"}, "messages"),
    ("messages an object", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("a message null", msgs(None), M0),
    ("a message a number", msgs(1), M0),
    ("role unknown", msgs({"role": "robot", "content": "x"}), f"{M0}.role"),
    ("role function (deprecated)", msgs({"role": "function", "name": "f", "content": "x"}), f"{M0}.role"),
    ("role a number", msgs({"role": 1, "content": "x"}), f"{M0}.role"),
    ("role missing", msgs({"content": "x"}), f"{M0}.role"),
    ("content missing", msgs({"role": "user"}), f"{M0}.content"),
    ("content a number", msgs(user(5)), f"{M0}.content"),
    ("content a boolean", msgs(user(True)), f"{M0}.content"),
    ("content an object", msgs(user({"type": "text", "text": "x"})), f"{M0}.content"),
    ("content no parts", msgs(user([])), f"{M0}.content"),
    ("a part a string", msgs(user(["x"])), C0),
    ("a part of unknown type", msgs(user([{"type": "text", "text": "a"}, {"type": "video"}])), f"{M0}.content[1].type"),
    ("a part without type", msgs(user([{"text": "a"}])), f"{C0}.type"),
    ("an audio part", msgs(user([{"type": "input_audio", "input_audio": {}}])), f"{C0}.type"),
    ("a text part's text a number", msgs(user([{"type": "text", "text": 3}])), f"{C0}.text"),
    ("image_url a string", msgs(user([image_url("https://x/y.png")])), f"{C0}.image_url"),
    ("an image's url ftp", msgs(user([image_url({"url": "ftp://x"})])), f"{C0}.image_url.url"),
    ("an image's detail", msgs(user([image_url({"url": "https://x", "detail": "max"})])), f"{C0}.image_url.detail"),
    ("a system image", msgs({"role": "system", "content": [image_url({"url": "https://x"})]}), f"{C0}.type"),
    ("content a lone surrogate", msgs(user("hi " + LONE)), f"{M0}.content"),
    ("a part's text a lone surrogate", msgs(user([{"type": "text", "text": LONE}])), f"{C0}.text"),
    ("name a number", msgs(user("x", name=5)), f"{M0}.name"),
    ("assistant without content", after_q(asst()), f"{M1}.content"),
    ("tool_calls false", after_q(asst(content="a", tool_calls=False)), f"{M1}.tool_calls"),
    ("tool_calls an object", after_q(asst(tool_calls={"id": "c1"})), f"{M1}.tool_calls"),
    ("a tool call without function", after_q(asst(tool_calls=[{"id": "c1"}])), f"{CALL0}.function"),
    ("a tool call's id empty", after_q(asst(tool_calls=[call(id="")])), f"{CALL0}.id"),
    ("a custom tool call", after_q(asst(tool_calls=[call(type="custom")])), f"{CALL0}.type"),
    ("arguments an object", after_q(asst(tool_calls=[call(function=OBJECT_ARGUMENTS)])), f"{CALL0}.function.arguments"),
    ("function_call", after_q(asst(content="a", function_call={"name": "f"})), f"{M1}.function_call"),
    ("tool without tool_call_id", msgs({"role": "tool", "content": "r"}), f"{M0}.tool_call_id"),
    ("tool content an image", msgs({"role": "tool", "tool_call_id": "c1", "content": [image_url({})]}), f"{C0}.type"),
    # numbers
    ("temperature a boolean", {"temperature": True}, "temperature"),
    ("temperature a string", {"temperature": "0.5"}, "temperature"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("temperature 2.5", {"temperature": 2.5}, "temperature"),
    ("temperature NaN", {"temperature": "NAN"}, "temperature"),
    ("temperature Infinity", {"temperature": "INF"}, "temperature"),
    ("temperature 1e999", {"temperature": "1E999"}, "temperature"),
    ("temperature 10**40", {"temperature": 10**40}, "temperature"),
    ("top_p 1.5", {"top_p": 1.5}, "top_p"),
    ("top_p -Infinity", {"top_p": "-INF"}, "top_p"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens negative", {"max_tokens": -1}, "max_tokens"),
    ("max_tokens 1.5", {"max_tokens": 1.5}, "max_tokens"),
    ("max_tokens a string", {"max_tokens": "5"}, "max_tokens"),
    ("max_tokens a boolean", {"max_tokens": True}, "max_tokens"),
    ("max_tokens 2**31", {"max_tokens": 2**31}, "max_tokens"),
    ("max_tokens 10**40", {"max_tokens": 10**40}, "max_tokens"),
    ("max_completion_tokens an array", {"max_completion_tokens": [5]}, "max_completion_tokens"),
    ("max_tokens bad beside max_completion_tokens", {"max_completion_tokens": 5, "max_tokens": "x"}, "max_tokens"),
    ("seed 2**64", {"seed": 2**64}, "seed"),
    ("seed 1.5", {"seed": 1.5}, "seed"),
    ("n 2", {"n": 2}, "n"),
    ("n a string", {"n": "1"}, "n"),
    ("n a boolean", {"n": True}, "n"),
    ("presence_penalty 3", {"presence_penalty": 3}, "presence_penalty"),
    ("frequency_penalty a string", {"frequency_penalty": "x"}, "frequency_penalty"),
    ("logit_bias an array", {"logit_bias": [1]}, "logit_bias"),
    ("a logit bias 101", {"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ("a logit bias NaN", {"logit_bias": {"50256": "NAN"}}, "logit_bias.50256"),
    ("top_k negative", {"top_k": -1}, "top_k"),
    ("min_p 2", {"min_p": 2}, "min_p"),
    ("NaN in an ignored field", {"metadata": {"a": ["NAN"]}}, "metadata.a[0]"),
    ("a lone surrogate in an ignored key", {"metadata": {LONE: 1}}, "metadata"),
    # flags and options
    ("stream a string", {"stream": "true"}, "stream"),
    ("stream a number", {"stream": 1}, "stream"),
    ("stream an array", {"stream": []}, "stream"),
    ("stream_options without stream", {"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ("stream_options a string", {"stream": True, "stream_options": "usage"}, "stream_options"),
    ("include_usage a string", {"stream_options": {"include_usage": "y"}, "stream": True}, USAGE),
    ("stop 5 sequences", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop a number", {"stop": 7}, "stop"),
    ("a stop sequence a number", {"stop": [1]}, "stop[0]"),
    ("logprobs true", {"logprobs": True}, "logprobs"),
    ("logprobs a string", {"logprobs": "true"}, "logprobs"),
    ("top_logprobs", {"top_logprobs": 2}, "top_logprobs"),
    ("functions", {"functions": []}, "functions"),
    ("audio", {"audio": {"voice": "x"}}, "audio"),
    ("modalities with audio", {"modalities": ["text", "audio"]}, "modalities"),
    ("modalities a string", {"modalities": "text"}, "modalities"),
    ("user a number", {"user": 5}, "user"),
    ("reasoning_effort a number", {"reasoning_effort": 1}, "reasoning_effort"),
    ("service_tier empty", {"service_tier": ""}, "service_tier"),
    ("parallel_tool_calls a string", {"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ("response_format a string", {"response_format": "json"}, "response_format"),
    ("response_format xml", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("json_schema missing", {"response_format": {"type": "json_schema"}}, SCHEMA),
    ("json_schema without name", {"response_format": {"type": "json_schema", "json_schema": {}}}, f"{SCHEMA}.name"),
    # tools and tool_choice
    ("tools an object", {"tools": {}}, "tools"),
    ("a tool null", {"tools": [None]}, "tools[0]"),
    ("a tool without type", {"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
    ("a custom tool", oa_tools({"name": "f"}, kind="custom"), "tools[0].type"),
    ("a tool name with a space", oa_tools({"name": "a b"}), "tools[0].function.name"),
    ("a tool name of 65", oa_tools({"name": "f" * 65}), "tools[0].function.name"),
    ("a tool name emoji", oa_tools({"name": "\U0001f600"}), "tools[0].function.name"),
    ("parameters a string", oa_tools({"name": "f", "parameters": "{}"}), "tools[0].function.parameters"),
    ("parameters an array", oa_tools({"name": "f", "parameters": []}), "tools[0].function.parameters"),
    ("a surrogate key in parameters", oa_tools({"name": "f", "parameters": {LONE: {}}}), f"{FUNCTION}.parameters"),
    ("strict a string", oa_tools({"name": "f", "strict": "yes"}), "tools[0].function.strict"),
    ("description a number", oa_tools({"name": "f", "description": 5}), "tools[0].function.description"),
    ("tool_choice unknown", {"tool_choice": "maybe"}, "tool_choice"),
    ("tool_choice a number", {"tool_choice": 1}, "tool_choice"),
    ("tool_choice without function", {"tool_choice": {"type": "function"}}, "tool_choice.function"),
    ("tool_choice an unknown tool", {"tool_choice": named("g")}, "tool_choice.function.name"),
    ("tool_choice allowed_tools", {"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type"),
]  # fmt: skip

ANTHROPIC_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("model missing", {"model": DELETE}, "model"),
    ("model null", {"model": None}, "model"),
    ("model a number", {"model": 7}, "model"),
    ("model empty", {"model": ""}, "model"),
    ("model 300 characters", {"model": "m" * 300}, "model"),
    ("model a lone surrogate", {"model": LONE}, "model"),
    ("max_tokens missing", {"max_tokens": DELETE}, "max_tokens"),
    ("max_tokens null", {"max_tokens": None}, "max_tokens"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens negative", {"max_tokens": -5}, "max_tokens"),
    ("max_tokens 1.5", {"max_tokens": 1.5}, "max_tokens"),
    ("max_tokens 2.0", {"max_tokens": 2.0}, "max_tokens"),
    ("max_tokens a string", {"max_tokens": "5"}, "max_tokens"),
    ("max_tokens a boolean", {"max_tokens": True}, "max_tokens"),
    ("max_tokens 2**31", {"max_tokens": 2**31}, "max_tokens"),
    ("max_tokens NaN", {"max_tokens": "NAN"}, "max_tokens"),
    ("messages missing", {"messages": DELETE}, "messages"),
    ("messages empty", {"messages": []}, "messages"),
    ("messages a string", {"messages": "hi"}, "messages"),
    ("a message null", msgs(None), M0),
    ("role unknown", msgs({"role": "robot", "content": "x"}), f"{M0}.role"),
    ("role tool", msgs({"role": "tool", "content": "x"}), f"{M0}.role"),
    ("role a number", msgs({"role": 1, "content": "x"}), f"{M0}.role"),
    ("content missing", msgs({"role": "user"}), f"{M0}.content"),
    ("content a number", msgs(user(5)), f"{M0}.content"),
    ("content an object", msgs(user({"type": "text", "text": "x"})), f"{M0}.content"),
    ("content no blocks", msgs(user([])), f"{M0}.content"),
    ("a block a string", msgs(user(["x"])), C0),
    ("a block without type", msgs(user([{"text": "x"}])), f"{C0}.type"),
    ("a block of unknown type", msgs(user([block("text", text="a"), block("video")])), f"{M0}.content[1].type"),
    ("a document block", msgs(user([block("document", source={})])), f"{C0}.type"),
    ("a text block's text null", msgs(user([block("text", text=None)])), f"{C0}.text"),
    ("a text block's text a lone surrogate", msgs(user([block("text", text=LONE)])), f"{C0}.text"),
    ("content a lone surrogate", msgs(user(LONE)), f"{M0}.content"),
    ("an image without source", msgs(user([block("image")])), f"{C0}.source"),
    ("an image from a file", msgs(user([image(type="file", file_id="f")])), f"{C0}.source.type"),
    ("an image of a bmp", msgs(user([image(type="base64", media_type="image/bmp", data="x")])), f"{SOURCE}.media_type"),
    ("an image without data", msgs(user([image(type="base64", media_type="image/png", data="")])), f"{C0}.source.data"),
    ("an image url ftp", msgs(user([image(type="url", url="ftp://x")])), f"{C0}.source.url"),
    ("a tool result without id", msgs(user([tool_result()])), f"{C0}.tool_use_id"),
    ("is_error a string", msgs(user([tool_result(tool_use_id="t1", is_error="yes")])), f"{C0}.is_error"),
    ("a tool result's content a number", msgs(user([tool_result(tool_use_id="t1", content=5)])), f"{C0}.content"),
    ("a video in a result", msgs(user([tool_result(tool_use_id="t", content=[block("v")])])), f"{C0}.content[0].type"),
    ("a tool use from the user", msgs(user([tool_use()])), f"{C0}.type"),
    ("an image from the assistant", after_q(asst(content=[block("image")])), f"{C1}.type"),
    ("a tool use's input a string", after_q(asst(content=[tool_use(input="{}")])), f"{C1}.input"),
    ("a tool use without id", after_q(asst(content=[tool_use(id=None)])), f"{C1}.id"),
    ("a tool use's name empty", after_q(asst(content=[tool_use(name="")])), f"{C1}.name"),
    ("system a number", {"system": 5}, "system"),
    ("system a string array", {"system": ["x"]}, "system[0]"),
    ("system an image", {"system": [block("image")]}, "system[0].type"),
    ("system a lone surrogate", {"system": LONE}, "system"),
    ("a system message's image", msgs({"role": "system", "content": [block("image")]}, user("x")), f"{C0}.type"),
    ("tools an object", {"tools": {}}, "tools"),
    ("a tool without schema", {"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ("a tool's schema a string", {"tools": [{"name": "f", "input_schema": "{}"}]}, "tools[0].input_schema"),
    ("a server tool", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ("a tool declared twice", {"tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ("a tool name empty", {"tools": [{**WEATHER, "name": ""}]}, "tools[0].name"),
    ("a tool description a number", {"tools": [{**WEATHER, "description": 5}]}, "tools[0].description"),
    ("a tool strict a string", {"tools": [{**WEATHER, "strict": "yes"}]}, "tools[0].strict"),
    ("tool_choice a string", {"tool_choice": "auto"}, "tool_choice"),
    ("tool_choice unknown", {"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ("tool_choice tool without name", {"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ("unknown tool", {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "g"}}, "tool_choice.name"),
    ("disable_parallel_tool_use a string", {"tool_choice": {"type": "auto", SERIAL: "x"}}, f"tool_choice.{SERIAL}"),
    ("temperature 1.5", {"temperature": 1.5}, "temperature"),
    ("temperature a boolean", {"temperature": True}, "temperature"),
    ("temperature NaN", {"temperature": "NAN"}, "temperature"),
    ("temperature Infinity", {"temperature": "INF"}, "temperature"),
    ("top_p negative", {"top_p": -1}, "top_p"),
    ("top_k 1.5", {"top_k": 1.5}, "top_k"),
    ("top_k negative", {"top_k": -1}, "top_k"),
    ("stop_sequences a string", {"stop_sequences": "END"}, "stop_sequences"),
    ("a stop sequence empty", {"stop_sequences": ["ok", ""]}, "stop_sequences[1]"),
    ("a stop sequence a number", {"stop_sequences": [1]}, "stop_sequences[0]"),
    ("stream a string", {"stream": "true"}, "stream"),
    ("stream a number", {"stream": 0}, "stream"),
    ("metadata a string", {"metadata": "x"}, "metadata"),
    ("metadata.user_id a number", {"metadata": {"user_id": 7}}, "metadata.user_id"),
    ("thinking enabled", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ("thinking a string", {"thinking": "on"}, "thinking"),
    ("output_config.format", {"output_config": {"format": {"type": "json_schema"}}}, "output_config.format"),
    ("output_config a string", {"output_config": "x"}, "output_config"),
    ("mcp_servers", {"mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
    ("container", {"container": "c1"}, "container"),
]  # fmt: skip

COUNT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("model missing", {"model": DELETE}, "model"),
    ("messages empty", {"messages": []}, "messages"),
    ("role unknown", msgs({"role": "robot", "content": "x"}), f"{M0}.role"),
    ("a block of unknown type", msgs(user([block("video")])), f"{C0}.type"),
    ("tools an object", {"tools": {}}, "tools"),
    ("tool_choice unknown", {"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ("system a number", {"system": 5}, "system"),
]


async def run_cases(proxy: Proxy, path: str, cases: list[tuple[str, dict[str, Any], str]], stream: bool) -> None:
    problems = []
    for label, patch, param in cases:
        answer = await proxy.post(path, patched(path, patch, stream))
        problems += [f"{label}: {p}" for p in error_problems(path, answer, 400, param)]
        if path != OA and answer.headers.get("request-id") != answer.headers.get("x-request-id"):
            problems.append(f"{label}: no request-id header")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_front_bad_fields_are_400s_naming_their_path(proxy, stream):
    await run_cases(proxy, OA, OPENAI_CASES, stream)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_front_bad_fields_are_400s_naming_their_path(proxy, stream):
    await run_cases(proxy, AN, ANTHROPIC_CASES, stream)


async def test_count_tokens_bad_fields_are_400s_naming_their_path(proxy):
    await run_cases(proxy, CT, COUNT_CASES, False)


async def test_more_than_100000_messages_are_a_400_on_both_fronts(proxy):
    """The OpenAI front had no limit: 600,000 tiny messages (20 MB) held the event loop for ~10 s."""
    many = [{"role": "user", "content": "x"}] * 100_001
    for path in (OA, AN):
        answer = await proxy.post(path, patched(path, {"messages": many}, stream=False))
        assert not error_problems(path, answer, 400, "messages", "100001")


# --- odd but valid ---------------------------------------------------------------------------------------------

SCHEMA_64_DEEP = json.loads('{"a":' * 63 + "{}" + "}" * 63)
DEVELOPER = {"role": "developer", "content": [{"type": "text", "text": "be brief"}]}
DATA_IMAGE = image_url({"url": "data:image/png;base64,iVBORw0KGgo="})
TOOL_REPLY = {"role": "tool", "tool_call_id": "c1", "content": "r"}
PAIR = "\\ud83d\\ude00"  # an escaped surrogate pair: one emoji
ODD_OPENAI: list[tuple[str, dict[str, Any] | bytes]] = [
    ("emoji, ZWJ, U+10FFFF", msgs(user("\U0001f469\u200d\U0001f52c \U0010ffff é"))),
    ("a NUL in content", msgs(user("a\x00b"))),
    (
        "an escaped surrogate pair",
        b'{"model": "default", "messages": [{"role": "user", "content": "%s"}]}' % PAIR.encode(),
    ),
    (
        "a duplicate key (the last wins)",
        b'{"model": "x", "model": "default", "messages": [{"role": "user", "content": "x"}]}',
    ),
    ("max_tokens 2.0 and n 1.0", {"max_tokens": 2.0, "n": 1.0}),
    ("null optional fields", {"temperature": None, "tools": None, "stop": None, "user": None}),
    ("no tools and tool_choice auto", {"tools": [], "tool_choice": "auto"}),
    ("unknown fields", {"store": True, "metadata": {"a": {"b": [1, 2.5, None]}}, "x-new": 1}),
    ("developer message, extra keys", msgs(DEVELOPER, user([{"type": "text", "text": "hi", "x": 1}]))),
    ("a data: image", msgs(user([DATA_IMAGE]))),
    ("a tool round trip", after_q(asst(tool_calls=[call()]), TOOL_REPLY)),
    ("an assistant refusal part", after_q(asst(content=[{"type": "refusal", "refusal": "no"}]), user("ok"))),
    ("temperature 2, top_p 0", {"temperature": 2, "top_p": 0}),
    ("seed at int64's end", {"seed": -(2**63)}),
    ("a JSON schema 64 levels deep", oa_tools({"name": "f", "parameters": SCHEMA_64_DEEP})),
]
THINKING = block("thinking", thinking="hm", signature="s")
CACHED = {"system": [block("text", text="s", cache_control={"type": "ephemeral"})]}
ODD_ANTHROPIC: list[tuple[str, dict[str, Any] | bytes]] = [
    ("emoji, ZWJ, U+10FFFF", msgs(user("\U0001f469\u200d\U0001f52c \U0010ffff é"))),
    ("a NUL in a text block", msgs(user([block("text", text="a\x00b")]))),
    (
        "an escaped surrogate pair",
        b'{"model": "default", "max_tokens": 9, "messages": [{"role": "user", "content": "%s"}]}' % PAIR.encode(),
    ),
    (
        "a duplicate key (the last wins)",
        b'{"model": "default", "max_tokens": "x", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}',
    ),
    ("a system message mid-conversation", msgs(user("a"), {"role": "system", "content": "brief"}, user("b"))),
    ("thinking blocks dropped", after_q(asst(content=[THINKING, block("text", text="a")]), user("b"))),
    ("cache_control anywhere", {**CACHED, **msgs(user([block("text", text="x", cache_control="?")]))}),
    ("unknown fields and metadata keys", {"metadata": {"user_id": None, "x": 1}, "x-new": [1]}),
    ("thinking disabled, effort", {"thinking": {"type": "disabled"}, "output_config": {"effort": "low"}}),
    ("a custom tool, tool_choice none", {"tools": [{**WEATHER, "type": "custom"}], "tool_choice": {"type": "none"}}),
    (
        "a tool round trip, is_error",
        after_q(asst(content=[tool_use()]), user([tool_result(tool_use_id="t1", is_error=True)])),
    ),
    ("top_k 0, temperature 1", {"top_k": 0, "temperature": 1, "service_tier": "auto"}),
    ("empty system blocks", {"system": []}),
    ("max_tokens 2**31-1", {"max_tokens": 2**31 - 1}),
]


def streamed(data: bytes) -> bytes:
    """`data` with `"stream": true` last (so it wins over an earlier `stream`), keeping duplicate keys as sent."""
    return data.rstrip()[:-1] + b', "stream": true}'


def answer_problems(path: str, answer: Answer, stream: bool) -> list[str]:
    if answer.status != 200:
        return [f"{answer.status}: {answer.body[:300]!r}"]
    if not stream:
        kind = answer.json().get("object" if path == OA else "type")
        return [] if kind in ("chat.completion", "message") else [f"not an answer: {answer.body[:300]!r}"]
    ended = (
        answer.body.endswith(b"\n\ndata: [DONE]\n\n") if path == OA else b"event: message_stop\n" in answer.body[-80:]
    )
    return [] if ended else [f"the stream does not end well: {answer.body[-300:]!r}"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", [OA, AN])
async def test_odd_but_valid_input_is_answered(proxy, path, stream):
    problems = []
    for label, case in ODD_OPENAI if path == OA else ODD_ANTHROPIC:
        data = (streamed(case) if stream else case) if isinstance(case, bytes) else patched(path, case, stream)
        answer = await proxy.post(path, data)
        problems += [f"{label}: {p}" for p in answer_problems(path, answer, stream)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", [OA, AN, CT])
async def test_a_256_character_model_name_is_only_an_unknown_model(proxy, path, stream):
    answer = await proxy.post(path, patched(path, {"model": "m" * 256}, stream))
    assert not error_problems(path, answer, 404, words="m" * 256)
