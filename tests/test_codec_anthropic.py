"""Tests of the Anthropic Messages codec: request bodies (golden files), replies, errors and the stream decoder.

Golden files live in tests/fixtures/anthropic/: `<case>.request.json` is the body expected for the normalized
request `REQUEST_CASES[case]`; `<case>.response.json` and `<case>.sse` are real-shaped upstream replies.
Regenerate the request goldens after an intended change with `UPDATE_GOLDEN=1 python -m pytest tests/...`
(and review the diff).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic.types as sdk
import pytest
from anthropic.types import message_create_params

from proxy.config.model import ProviderConfig, Secret
from proxy.errors import (
    ContextLengthExceeded,
    RequestError,
    StreamInterrupted,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
)
from proxy.providers.anthropic import AnthropicCodec, messages_url
from proxy.types import (
    ChatRequest,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDef,
    Usage,
)
from tests.codec_helpers import FIXTURES_DIR, check_golden, fixture_bytes, one_byte_at_a_time

FIXTURES = FIXTURES_DIR / "anthropic"
API_KEY = "test-anthropic-key-not-real-0123456789"
MODEL = "claude-sonnet-4-5-20250929"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["°C", "°F"]}},
    "required": ["location"],
}


def codec(**kwargs: Any) -> AnthropicCodec:
    return AnthropicCodec("claude", api_key=API_KEY, **kwargs)


# --- requests: golden bodies --------------------------------------------------------------------------------

REQUEST_CASES: dict[str, tuple[ChatRequest, bool]] = {
    # temperature capped, top_p, stop -> stop_sequences, user -> metadata, seed/response_format dropped
    "basic": (
        ChatRequest(
            messages=(Message("system", "You are terse."), Message("user", "Count to five.")),
            max_tokens=256,
            temperature=1.7,
            top_p=0.9,
            stop=("4", "\n\n"),
            seed=42,
            response_format={"type": "json_object"},
            user="user-1234",
        ),
        False,
    ),
    # system/developer anywhere are hoisted and joined; the default max_tokens applies
    "system_hoisting": (
        ChatRequest(
            messages=(
                Message("system", "You are a pirate."),
                Message("user", "Hello"),
                Message("developer", (TextPart("Answer in "), TextPart("French."))),  # type: ignore[arg-type]
                Message("assistant", "Ahoy!"),
                Message("system", "   "),
                Message("user", "Where is the treasure?"),
            )
        ),
        False,
    ),
    # same-role turns merge (also across a hoisted system message); names are dropped
    "role_merging": (
        ChatRequest(
            messages=(
                Message("user", "First question.", name="alice"),
                Message("system", "Be brief."),
                Message("user", (TextPart("Second question."), TextPart("Third."))),
                Message("assistant", "One."),
                Message("assistant", "Two."),
                Message("user", "Thanks"),
            ),
            max_tokens=100,
        ),
        False,
    ),
    # tools, tool_choice required + parallel off, assistant tool_calls, tool results folded with the next user text
    "tool_calls": (
        ChatRequest(
            messages=(
                Message("user", "Weather and time in Paris?"),
                Message(
                    "assistant",
                    "",
                    tool_calls=(
                        ToolCall("toolu_01A", "get_weather", '{"location": "Paris", "unit": "°C"}'),
                        ToolCall("toolu_01B", "get_time", ""),
                    ),
                ),
                Message("tool", "18°C and sunny", tool_call_id="toolu_01A"),
                Message("tool", (TextPart("14:05"), TextPart(" CEST")), tool_call_id="toolu_01B"),
                Message("user", "And tomorrow?"),
                Message(
                    "assistant",
                    "Let me look.",
                    tool_calls=(ToolCall("toolu_01C", "get_weather", '{"location":"Paris","day":"tomorrow"}'),),
                ),
                Message("tool", "", tool_call_id="toolu_01C"),
            ),
            tools=(
                ToolDef("get_weather", "Current weather for a place", WEATHER_SCHEMA, strict=True),
                ToolDef("get_time"),
            ),
            tool_choice=ToolChoice("required"),
            parallel_tool_calls=False,
            max_tokens=512,
        ),
        False,
    ),
    # data: URIs become base64 sources, http(s) URLs url sources; images also inside tool results
    "images": (
        ChatRequest(
            messages=(
                Message(
                    "user",
                    (
                        TextPart("What is in these images?"),
                        ImagePart(f"data:image/png;base64,{PNG}", detail="high"),
                        ImagePart(
                            "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
                        ),
                    ),
                ),
                Message("assistant", tool_calls=(ToolCall("toolu_01S", "screenshot", "{}"),)),
                Message(
                    "tool",
                    (TextPart("Here it is:"), ImagePart(f"data:IMAGE/JPEG;base64,{PNG}")),
                    tool_call_id="toolu_01S",
                ),
            ),
            max_tokens=300,
        ),
        False,
    ),
    # a leading assistant turn gets a placeholder user turn; the final assistant prefill loses trailing whitespace
    "assistant_first_and_prefill": (
        ChatRequest(
            messages=(
                Message("system", "Continue the story."),
                Message("assistant", "Once upon a time"),
                Message("user", "Go on."),
                Message("assistant", (TextPart("There was "), TextPart("a dragon that  \n"))),
            ),
            max_tokens=64,
        ),
        False,
    ),
    # empty and whitespace-only text is dropped; a turn left empty disappears and its neighbours merge
    "empty_blocks": (
        ChatRequest(
            messages=(
                Message("user", (TextPart("Hi"), TextPart(""), TextPart("  \n"))),
                Message("assistant", "   "),
                Message("user", "Still there?"),
                Message("assistant", None, tool_calls=(ToolCall("toolu_01E", "ping", "{}"),)),
                Message("tool", "pong", tool_call_id="toolu_01E"),
            ),
            max_tokens=32,
        ),
        False,
    ),
    # streaming, a named tool choice, and `extra` merged last (top_k, thinking pass through untouched)
    "stream_extra": (
        ChatRequest(
            messages=(Message("user", "Think, then call the tool."),),
            tools=(
                ToolDef("lookup", "Look something up", {"type": "object", "properties": {"q": {"type": "string"}}}),
            ),
            tool_choice=ToolChoice("tool", "lookup"),
            max_tokens=2048,
            temperature=0.2,
            extra={"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        ),
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
def test_encode_matches_golden_body(case: str) -> None:
    request, stream = REQUEST_CASES[case]
    body = json.loads(codec().encode(request, MODEL, stream=stream).body)
    check_golden(FIXTURES / f"{case}.request.json", body)


# The 1.x SDK dropped the sampling parameters from its types, but the API still accepts them (MIGRATION.md:
# "pass them via extra_body"), so they are allowed on top of the SDK's keys.
SAMPLING_KEYS = {"temperature", "top_p", "top_k"}
SDK_TOP_LEVEL = message_create_params.MessageCreateParamsStreaming.__optional_keys__ | (
    message_create_params.MessageCreateParamsStreaming.__required_keys__
)
BLOCK_TYPES: dict[str, Any] = {
    "text": sdk.TextBlockParam,
    "image": sdk.ImageBlockParam,
    "tool_use": sdk.ToolUseBlockParam,
    "tool_result": sdk.ToolResultBlockParam,
}
SOURCE_TYPES: dict[str, Any] = {"base64": sdk.Base64ImageSourceParam, "url": sdk.URLImageSourceParam}
TOOL_CHOICE_TYPES: dict[str, Any] = {
    "auto": sdk.ToolChoiceAutoParam,
    "any": sdk.ToolChoiceAnyParam,
    "tool": sdk.ToolChoiceToolParam,
    "none": sdk.ToolChoiceNoneParam,
}


def keys_of(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


def assert_block_shape(block: dict[str, Any]) -> None:
    assert set(block) <= keys_of(BLOCK_TYPES[block["type"]]), block
    if block["type"] == "image":
        assert set(block["source"]) <= keys_of(SOURCE_TYPES[block["source"]["type"]])
    if block["type"] == "tool_result" and isinstance(block.get("content"), list):
        for inner in block["content"]:
            assert_block_shape(inner)


@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
def test_encoded_body_uses_only_sdk_keys(case: str) -> None:
    request, stream = REQUEST_CASES[case]
    body = json.loads(codec().encode(request, MODEL, stream=stream).body)
    assert set(body) - set(request.extra) <= SDK_TOP_LEVEL | SAMPLING_KEYS
    for message in body["messages"]:
        assert set(message) == {"role", "content"}
        assert message["role"] in {"user", "assistant"}
        if isinstance(message["content"], list):
            for block in message["content"]:
                assert_block_shape(block)
    for tool in body.get("tools", ()):
        assert set(tool) <= keys_of(sdk.ToolParam)
    if "tool_choice" in body:
        assert set(body["tool_choice"]) <= keys_of(TOOL_CHOICE_TYPES[body["tool_choice"]["type"]])
    if "metadata" in body:
        assert set(body["metadata"]) <= keys_of(sdk.MetadataParam)


def test_encode_is_compact_utf8_deterministic_and_does_not_mutate() -> None:
    request, _ = REQUEST_CASES["tool_calls"]
    before = copy.deepcopy(request)
    first = codec().encode(request, MODEL, stream=False)
    second = codec().encode(request, MODEL, stream=False)
    assert first.body == second.body
    assert b'": ' not in first.body and b", " not in first.body.replace(b"Weather and", b"")
    assert "18°C".encode() in first.body  # raw UTF-8, not \u escapes
    assert request == before
    assert WEATHER_SCHEMA["required"] == ["location"]


def test_encode_streaming_flag() -> None:
    request, _ = REQUEST_CASES["basic"]
    assert json.loads(codec().encode(request, MODEL, stream=True).body)["stream"] is True
    assert "stream" not in json.loads(codec().encode(request, MODEL, stream=False).body)


def test_encode_accepts_read_only_mappings_in_schemas_and_extra() -> None:
    from types import MappingProxyType

    schema = MappingProxyType({"type": "object", "properties": MappingProxyType({"q": {"type": "string"}})})
    request = ChatRequest(
        messages=(Message("user", "hi"),),
        tools=(ToolDef("search", None, schema),),
        extra=MappingProxyType({"thinking": MappingProxyType({"type": "disabled"})}),
    )
    body = json.loads(codec().encode(request, MODEL, stream=False).body)
    assert body["tools"][0]["input_schema"]["properties"] == {"q": {"type": "string"}}
    assert body["thinking"] == {"type": "disabled"}


# --- requests: headers, URL, config ---------------------------------------------------------------------


def test_headers_and_url() -> None:
    call = codec(headers={"anthropic-beta": "context-1m-2025-08-07"}).encode(
        ChatRequest.from_prompt("hi"), MODEL, stream=True
    )
    assert call.method == "POST"
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert dict(call.headers) == {
        "x-api-key": API_KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-beta": "context-1m-2025-08-07",
    }


def test_user_headers_override_defaults_case_insensitively_and_no_key_means_no_header() -> None:
    plain = AnthropicCodec("local", headers={"Authorization": "Bearer tok", "Anthropic-Version": "2099-01-01"})
    assert dict(plain.headers) == {
        "content-type": "application/json",
        "accept": "application/json",
        "Authorization": "Bearer tok",
        "Anthropic-Version": "2099-01-01",
    }


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/v1/", "https://api.anthropic.com/v1/messages"),
        ("http://127.0.0.1:8080/proxy/anthropic/v1/messages", "http://127.0.0.1:8080/proxy/anthropic/v1/messages"),
        ("http://127.0.0.1:8080/prefix", "http://127.0.0.1:8080/prefix/v1/messages"),
    ],
)
def test_messages_url_normalization(base_url: str, expected: str) -> None:
    assert messages_url(base_url) == expected
    assert AnthropicCodec("p", base_url=base_url).url == expected


def test_from_config_reveals_secrets_and_defaults_the_version() -> None:
    cfg = ProviderConfig(
        name="claude-prod",
        type="anthropic",
        api_key=Secret(API_KEY),
        base_url="https://gateway.example/anthropic/v1",
        headers={"anthropic-beta": Secret("prompt-caching-2024-07-31")},
    )
    made = AnthropicCodec.from_config(cfg)
    assert made.provider == "claude-prod"
    assert made.url == "https://gateway.example/anthropic/v1/messages"
    assert made.headers["x-api-key"] == API_KEY
    assert made.headers["anthropic-version"] == "2023-06-01"
    assert made.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert API_KEY not in repr(made)
    versioned = AnthropicCodec.from_config(ProviderConfig(name="x", type="anthropic", api_version="2024-01-01"))
    assert versioned.headers["anthropic-version"] == "2024-01-01"
    assert "x-api-key" not in versioned.headers


def test_default_max_tokens_is_used_only_when_the_request_has_none() -> None:
    small = AnthropicCodec("p", default_max_tokens=77)
    assert json.loads(small.encode(ChatRequest.from_prompt("hi"), MODEL, stream=False).body)["max_tokens"] == 77
    explicit = ChatRequest.from_prompt("hi", max_tokens=5)
    assert json.loads(small.encode(explicit, MODEL, stream=False).body)["max_tokens"] == 5


# --- requests: tool choice and errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (ToolChoice("auto"), None, {"type": "auto"}),
        (ToolChoice("required"), None, {"type": "any"}),
        (ToolChoice("none"), None, {"type": "none"}),
        (ToolChoice("tool", "t"), None, {"type": "tool", "name": "t"}),
        (ToolChoice("auto"), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice("tool", "t"), False, {"type": "tool", "name": "t", "disable_parallel_tool_use": True}),
        (ToolChoice("none"), False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
        (None, None, None),
    ],
)
def test_tool_choice_mapping(choice: ToolChoice | None, parallel: bool | None, expected: dict | None) -> None:
    request = ChatRequest(
        messages=(Message("user", "hi"),), tools=(ToolDef("t"),), tool_choice=choice, parallel_tool_calls=parallel
    )
    body = json.loads(codec().encode(request, MODEL, stream=False).body)
    assert body.get("tool_choice") == expected
    assert body["tools"] == [{"name": "t", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_choice_without_tools_is_not_sent() -> None:
    request = ChatRequest(messages=(Message("user", "hi"),), tool_choice=ToolChoice("none"))
    assert "tool_choice" not in json.loads(codec().encode(request, MODEL, stream=False).body)


@pytest.mark.parametrize(
    "arguments",
    ['{"location": "Par', "[1, 2]", "not json", '{"a": NaN}', '{"a": -Infinity}', '{"a": 1e999}', "[" * 5000],
)  # NaN, Infinity and 1e999 Python reads, but the body sent to Anthropic must be JSON (it was a 500)
def test_bad_tool_call_arguments_raise_request_error_naming_the_call(arguments: str) -> None:
    request = ChatRequest(
        messages=(
            Message("user", "hi"),
            Message("assistant", tool_calls=(ToolCall("toolu_bad1", "get_weather", arguments),)),
            Message("tool", "x", tool_call_id="toolu_bad1"),
        )
    )
    with pytest.raises(RequestError) as caught:
        codec().encode(request, MODEL, stream=False)
    assert "toolu_bad1" in caught.value.message and "get_weather" in caught.value.message
    assert "messages[1]" in caught.value.message
    assert caught.value.status_code == 400


def test_tool_call_arguments_are_read_without_a_decoder_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # json.loads with parse_float/parse_constant builds a JSONDecoder (and its scanner) on every call: ~2.5 us per
    # tool call in the history, on every request. The codec keeps one.
    built: list[object] = []
    original = json.JSONDecoder.__init__

    def counting(self: json.JSONDecoder, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(json.JSONDecoder, "__init__", counting)
    calls = tuple(ToolCall(f"toolu_{n}", "f", '{"a": 1.5, "b": [1, -2.5e3, {"c": null}]}') for n in range(3))
    request = ChatRequest(
        messages=(
            Message("user", "hi"),
            Message("assistant", tool_calls=calls),
            *(Message("tool", "x", tool_call_id=call.id) for call in calls),
        )
    )
    body = codec().encode(request, MODEL, stream=False).body
    monkeypatch.undo()
    assert built == []
    blocks = [b for m in json.loads(body)["messages"] if isinstance(m["content"], list) for b in m["content"]]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    assert [b["input"] for b in uses] == [{"a": 1.5, "b": [1, -2500.0, {"c": None}]}] * 3


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("data:image/svg+xml;base64,PHN2Zz4=", "image/svg+xml"),
        ("data:image/png,rawbytes", "base64"),
        ("file:///etc/passwd", "http(s)"),
    ],
)
def test_unsupported_images_raise_request_error(url: str, fragment: str) -> None:
    request = ChatRequest(messages=(Message("user", (TextPart("look"), ImagePart(url))),))
    with pytest.raises(RequestError, match=r"messages\[0\]") as caught:
        codec().encode(request, MODEL, stream=False)
    assert fragment in caught.value.message


def test_images_in_assistant_messages_raise_request_error() -> None:
    request = ChatRequest(
        messages=(Message("user", "hi"), Message("assistant", (ImagePart("https://example.com/a.png"),)))
    )
    with pytest.raises(RequestError, match="assistant"):
        codec().encode(request, MODEL, stream=False)


@pytest.mark.parametrize(
    "messages",
    [
        (Message("system", "only a system prompt"),),
        (Message("user", "  "),),
        (Message("tool", "result without id"),),
    ],
)
def test_requests_without_sendable_turns_raise_request_error(messages: tuple[Message, ...]) -> None:
    with pytest.raises(RequestError):
        codec().encode(ChatRequest(messages=messages), MODEL, stream=False)


def test_tool_results_come_first_in_a_user_turn() -> None:
    request = ChatRequest(
        messages=(
            Message("user", "go"),
            Message("assistant", tool_calls=(ToolCall("toolu_1", "f", "{}"),)),
            Message("user", "note written before the result"),
            Message("tool", "done", tool_call_id="toolu_1"),
        )
    )
    last = json.loads(codec().encode(request, MODEL, stream=False).body)["messages"][-1]
    assert [block["type"] for block in last["content"]] == ["tool_result", "text"]


# --- replies --------------------------------------------------------------------------------------------


def response_fixture(case: str) -> bytes:
    return fixture_bytes("anthropic", f"{case}.response.json")


def test_decode_text_joins_blocks_and_sums_cached_usage() -> None:
    reply = codec().decode(200, {"Request-Id": "req_011CSHoEeqs5C35K2UUqR7Fy"}, response_fixture("text"))
    assert reply.text == "Hi! My name is Claude. How can I help?"
    assert reply.tool_calls == ()
    assert reply.finish_reason == "stop"
    assert reply.usage == Usage(
        input_tokens=2095 + 1800 + 100, output_tokens=503, cached_input_tokens=1800, cache_creation_input_tokens=100
    )
    assert reply.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert reply.model == "claude-sonnet-4-5-20250929"
    assert reply.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert reply.provider == "claude"
    assert reply.stop_sequence is None


def test_decode_tool_use() -> None:
    reply = codec().decode(200, {}, response_fixture("tool_use"))
    assert reply.text == "I'll check the current weather in Paris for you."
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == (
        ToolCall("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", '{"location":"Paris","unit":"°C"}'),
        ToolCall("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_time", "{}"),
    )
    assert json.loads(reply.tool_calls[0].arguments) == {"location": "Paris", "unit": "°C"}


def test_decode_tool_only_reply_has_no_text() -> None:
    reply = codec().decode(200, {}, response_fixture("tool_only"))
    assert reply.text is None
    assert [call.name for call in reply.tool_calls] == ["get_weather"]
    assert reply.usage == Usage(input_tokens=120, output_tokens=40)


def test_decode_keeps_the_stop_sequence_and_tolerates_null_cache_counters() -> None:
    reply = codec().decode(200, {}, response_fixture("stop_sequence"))
    assert (reply.text, reply.finish_reason, reply.stop_sequence) == ("1, 2, 3", "stop", "4")
    assert reply.usage == Usage(input_tokens=20, output_tokens=8)


def test_decode_ignores_thinking_and_counts_thinking_tokens() -> None:
    reply = codec().decode(200, {}, response_fixture("thinking"))
    assert (reply.text, reply.finish_reason) == ("4", "length")
    assert reply.usage is not None and reply.usage.reasoning_tokens == 21


def test_a_bad_thinking_token_count_is_named_by_its_full_path_and_only_the_usage_is_lost(caplog) -> None:
    body = json.loads(response_fixture("thinking"))
    body["usage"]["output_tokens_details"] = {"thinking_tokens": "21"}
    reply = codec().decode(200, {}, json.dumps(body).encode())
    assert reply.text == "4" and reply.usage is None
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [
        "provider claude: its usage is ignored, the answer kept: "
        '`usage.output_tokens_details.thinking_tokens` is "21", not a count of tokens'
    ]


def test_decode_refusal_is_content_filter_with_empty_text() -> None:
    reply = codec().decode(200, {}, response_fixture("refusal"))
    assert (reply.text, reply.finish_reason) == ("", "content_filter")


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_mapping(stop_reason: str, finish_reason: str) -> None:
    body = json.loads(response_fixture("text"))
    body["stop_reason"] = stop_reason
    assert codec().decode(200, {}, json.dumps(body).encode()).finish_reason == finish_reason


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b"",
        b"[]",
        b'{"id":"msg_1","type":"message"}',
        b'{"content":[{"type":"text"}]}',
        b'{"content":[{"type":"tool_use","id":"t","name":"f","input":"{}"}]}',
        b'{"content":[],"stop_reason":7}',
    ],
)
def test_decode_malformed_replies_raise_protocol_errors(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        codec().decode(200, {}, body)
    assert caught.value.provider == "claude"


def test_a_usage_that_is_not_one_is_dropped_and_the_answer_kept() -> None:
    reply = codec().decode(200, {}, b'{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":"many"}}')
    assert (reply.text, reply.usage) == ("hi", None)


def test_a_good_reply_is_not_decoded_to_text_for_an_excerpt_it_never_needs() -> None:
    # The body is parsed as bytes; a text copy of it (~14 us for a 14 KB non-ASCII answer) is made only for the
    # excerpt of a malformed reply.
    decodes: list[tuple[object, ...]] = []

    class Body(bytes):
        def decode(self, *args: Any, **kwargs: Any) -> str:
            decodes.append((*args, *kwargs.values()))
            return bytes.decode(self, *args, **kwargs)

    assert codec().decode(200, {}, Body(response_fixture("text"))).text == "Hi! My name is Claude. How can I help?"
    assert all("replace" not in call for call in decodes), decodes
    with pytest.raises(UpstreamProtocolError, match=r"not a Messages response .*msg_1"):
        codec().decode(200, {}, Body(b'{"id":"msg_1","type":"message"}'))
    with pytest.raises(UpstreamProtocolError, match="the reply is empty"):
        codec().decode(200, {}, Body(b"  "))


def test_protocol_error_excerpt_is_short() -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        codec().decode(200, {}, b"<html>" + b"x" * 5000 + b"</html>")
    assert len(caught.value.message) < 260


def test_decode_of_a_non_2xx_raises_the_classified_error() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    with pytest.raises(UpstreamOverloaded):
        codec().decode(529, {}, body)


# --- errors ---------------------------------------------------------------------------------------------


def error_body(error_type: str, message: str, request_id: str | None = "req_body_1") -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "error_type", "message", "expected"),
    [
        (400, "invalid_request_error", "messages: text content blocks must be non-empty", UpstreamBadRequest),
        (400, "invalid_request_error", "prompt is too long: 210266 tokens > 200000 maximum", ContextLengthExceeded),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, decrease input length",
            ContextLengthExceeded,
        ),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", UpstreamBadRequest),
        (401, "authentication_error", "invalid x-api-key", UpstreamAuthError),
        (402, "billing_error", "Your credit balance is too low to access the Anthropic API.", UpstreamPermissionError),
        (
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
            UpstreamPermissionError,
        ),
        (404, "not_found_error", "model: claude-nope", UpstreamNotFound),
        (408, "timeout_error", "Request timed out", UpstreamServerError),
        (409, "conflict_error", "Conflict", UpstreamServerError),
        (422, "invalid_request_error", "Unprocessable", UpstreamBadRequest),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            UpstreamRateLimited,
        ),
        (500, "api_error", "Internal server error", UpstreamServerError),
        (503, "overloaded_error", "Service unavailable", UpstreamOverloaded),
        (504, "timeout_error", "Gateway timeout", UpstreamServerError),
        (529, "overloaded_error", "Overloaded", UpstreamOverloaded),
        (418, "invalid_request_error", "teapot", UpstreamBadRequest),
        (599, "api_error", "odd server status", UpstreamServerError),
    ],
)
def test_decode_error_classification(status: int, error_type: str, message: str, expected: type) -> None:
    error = codec().decode_error(status, {}, error_body(error_type, message))
    assert type(error) is expected
    assert error.message == message
    assert (error.provider, error.status, error.error_type) == ("claude", status, error_type)
    assert error.request_id == "req_body_1"


def test_decode_error_prefers_the_request_id_header() -> None:
    error = codec().decode_error(500, {"request-id": "req_header"}, error_body("api_error", "boom"))
    assert error.request_id == "req_header"


def test_429_retry_after_seconds() -> None:
    headers = {"retry-after": "17", "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"}
    error = codec().decode_error(429, headers, error_body("rate_limit_error", "slow down"))
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 17.0
    assert error.retryable


def test_429_rfc3339_reset_headers() -> None:
    reset = datetime.fromtimestamp(time.time() + 30, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "Anthropic-RateLimit-Tokens-Reset": reset,
        "anthropic-ratelimit-requests-reset": datetime.fromtimestamp(time.time() - 5, tz=UTC).isoformat(),
    }
    error = codec().decode_error(429, headers, error_body("rate_limit_error", "slow down"))
    assert error.retry_after is not None and 25 <= error.retry_after <= 31


def test_reset_headers_do_not_count_outside_429() -> None:
    reset = datetime.fromtimestamp(time.time() + 30, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    error = codec().decode_error(529, {"anthropic-ratelimit-tokens-reset": reset}, error_body("overloaded_error", "x"))
    assert error.retry_after is None


def test_html_502_gives_a_clear_message_with_a_short_excerpt() -> None:
    html = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>" + b"<p>cloudflare</p>" * 100 + b"</body>"
    error = codec().decode_error(502, {"content-type": "text/html"}, html)
    assert type(error) is UpstreamServerError
    assert error.message.startswith("HTTP 502 with a non-JSON body: <html> <head><title>502 Bad Gateway</title>")
    assert len(error.message) < 260
    assert error.error_type is None and error.retryable


@pytest.mark.parametrize("body", [b"", b"   ", b'{"unexpected":"shape"}', b"[1,2]", b"\xff\xfe\x00garbage"])
def test_decode_error_never_raises(body: bytes) -> None:
    error = codec().decode_error(503, {}, body)
    assert isinstance(error, UpstreamOverloaded)
    assert error.message.startswith("HTTP 503")


def test_errors_never_contain_the_api_key() -> None:
    leaked = f"invalid x-api-key: {API_KEY}"
    errors: list[UpstreamError] = [
        codec().decode_error(401, {}, error_body("authentication_error", leaked)),
        codec().decode_error(502, {}, f"<html>{API_KEY}</html>".encode()),
    ]
    with pytest.raises(UpstreamProtocolError) as caught:
        codec().decode(200, {}, f"not json {API_KEY}".encode())
    errors.append(caught.value)
    decoder = codec().stream_decoder()
    with pytest.raises(UpstreamAuthError) as streamed:
        decoder.feed(
            b'event: error\ndata: {"type":"error","error":{"type":"authentication_error","message":"'
            + leaked.encode()
            + b'"}}\n\n'
        )
    errors.append(streamed.value)
    for error in errors:
        assert API_KEY not in str(error) and API_KEY not in error.describe()
        assert "***" in str(error)


# --- streaming ------------------------------------------------------------------------------------------


def sse(case: str) -> bytes:
    return fixture_bytes("anthropic", f"{case}.sse")


def feed_whole(data: bytes) -> list[StreamChunk]:
    decoder = codec().stream_decoder()
    chunks = decoder.feed(data)
    chunks += decoder.close()
    assert decoder.done
    return chunks


def feed_bytewise(data: bytes) -> list[StreamChunk]:
    decoder = codec().stream_decoder()
    chunks: list[StreamChunk] = []
    for piece in one_byte_at_a_time(data):
        chunks += decoder.feed(piece)
    chunks += decoder.close()
    return chunks


def test_stream_text() -> None:
    chunks = feed_whole(sse("text"))
    assert chunks[0] == StreamChunk(id="msg_01XFDUDYJgAACzvnptvVoYEL", model="claude-sonnet-4-5-20250929")
    assert [c.text for c in chunks if c.text] == ["Bonjour, ", "ça va? 🙂", " Très bien."]
    assert chunks[-1] == StreamChunk(
        finish_reason="stop",
        usage=Usage(input_tokens=25 + 10 + 5, output_tokens=12, cached_input_tokens=5, cache_creation_input_tokens=10),
    )
    assert len(chunks) == 5  # start, three texts, the final one: ping and the comment make none


def test_stream_tool_use_uses_tool_ordinals_and_fills_empty_arguments() -> None:
    chunks = feed_whole(sse("tool_use"))
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    assert deltas[0] == ToolCallDelta(index=0, id="toolu_01NRLabsLyVHZPKxbKvkfSMn", name="get_weather")
    assert "".join(d.arguments for d in deltas if d.index == 0) == '{"location": "Paris"}'
    assert all(d.arguments for d in deltas if d.id is None)  # empty fragments are not emitted
    assert [d for d in deltas if d.index == 1] == [
        ToolCallDelta(index=1, id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_time"),
        ToolCallDelta(index=1, arguments="{}"),
    ]
    assert "".join(c.text for c in chunks) == "I'll check the current weather in Paris for you."
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage == Usage(input_tokens=377, output_tokens=65)


def test_stream_ignores_thinking() -> None:
    chunks = feed_whole(sse("thinking"))
    assert [c.text for c in chunks if c.is_content] == ["4"]
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage == Usage(input_tokens=40, output_tokens=30, reasoning_tokens=21)


def test_stream_usage_reported_in_message_delta_only() -> None:
    chunks = feed_whole(sse("usage_in_delta"))
    assert chunks[0] == StreamChunk(id="msg_usage_omitted", model="claude-test")
    assert chunks[-1].usage == Usage(input_tokens=112, output_tokens=6, cached_input_tokens=100)


def test_stream_without_any_usage_reports_none() -> None:
    data = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"x"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert feed_whole(data)[-1] == StreamChunk(finish_reason="stop")


@pytest.mark.parametrize("case", ["text", "tool_use", "thinking", "usage_in_delta"])
def test_stream_fed_one_byte_at_a_time_equals_fed_whole(case: str) -> None:
    assert feed_bytewise(sse(case)) == feed_whole(sse(case))


@pytest.mark.parametrize("case", ["text", "tool_use"])
def test_stream_crlf_line_endings(case: str) -> None:
    crlf = sse(case).replace(b"\n", b"\r\n")
    assert b"\r\n\r\n" in crlf
    assert feed_whole(crlf) == feed_whole(sse(case))
    assert feed_bytewise(crlf) == feed_whole(sse(case))


def test_stream_mid_stream_error_event_raises_the_classified_error() -> None:
    decoder = codec().stream_decoder()
    data = sse("error_midstream")
    split = data.index(b"event: error")
    chunks = decoder.feed(data[:split])
    assert "".join(c.text for c in chunks) == "Once upon"
    with pytest.raises(UpstreamOverloaded) as caught:
        decoder.feed(data[split:])
    error = caught.value
    assert (error.message, error.error_type, error.provider) == ("Overloaded", "overloaded_error", "claude")
    assert error.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert error.status is None and error.retryable


def test_stream_error_event_behind_text_in_one_feed_is_raised_by_raise_pending_once() -> None:
    decoder = codec().stream_decoder()
    decoder.raise_pending()  # nothing held back: nothing raised
    chunks = decoder.feed(sse("error_midstream"))
    assert "".join(c.text for c in chunks) == "Once upon"
    with pytest.raises(UpstreamOverloaded) as caught:
        decoder.raise_pending()
    assert caught.value.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    decoder.raise_pending()  # raised once, not again


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("rate_limit_error", UpstreamRateLimited),
        ("api_error", UpstreamServerError),
        ("invalid_request_error", UpstreamBadRequest),
        ("something_new", UpstreamServerError),
    ],
)
def test_stream_error_event_types(error_type: str, expected: type) -> None:
    event = f'event: error\ndata: {{"type":"error","error":{{"type":"{error_type}","message":"m"}}}}\n\n'
    with pytest.raises(expected):
        codec().stream_decoder().feed(event.encode())


def test_cut_stream_raises_stream_interrupted_with_partial_text_on_close() -> None:
    decoder = codec().stream_decoder()
    chunks = decoder.feed(sse("cut"))
    assert "".join(c.text for c in chunks) == "Once upon a time"
    assert not decoder.done
    with pytest.raises(StreamInterrupted) as caught:
        decoder.close()
    assert caught.value.partial_text == "Once upon a time"
    assert caught.value.provider == "claude"


def test_stream_cut_after_message_delta_is_still_interrupted() -> None:
    data = sse("text")
    decoder = codec().stream_decoder()
    chunks = decoder.feed(data[: data.index(b"event: message_stop")])
    assert chunks[-1].finish_reason == "stop"
    with pytest.raises(StreamInterrupted):
        decoder.close()


def test_empty_stream_is_interrupted() -> None:
    decoder = codec().stream_decoder()
    assert decoder.feed(b"") == []
    with pytest.raises(StreamInterrupted) as caught:
        decoder.close()
    assert caught.value.partial_text == ""


def test_malformed_stream_json_raises_protocol_error() -> None:
    decoder = codec().stream_decoder()
    # The chunks decoded before the bad event come first; the error follows on the next call.
    chunks = decoder.feed(sse("malformed"))
    assert chunks and not decoder.done
    with pytest.raises(UpstreamProtocolError, match="invalid JSON in a `content_block_delta` event"):
        decoder.close()


def test_malformed_stream_json_alone_raises_at_once() -> None:
    decoder = codec().stream_decoder()
    bad = b'event: content_block_delta\ndata: {"type":"content_block_delta",\n\n'
    with pytest.raises(UpstreamProtocolError, match="invalid JSON in a `content_block_delta` event"):
        decoder.feed(bad)


@pytest.mark.parametrize(
    "data",
    [
        b"data: [1, 2]\n\n",
        b'event: message_start\ndata: {"type":"message_start","message":"nope"}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}\n\n',
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use"}}\n\n',
    ],
)
def test_wrong_shaped_stream_events_raise_protocol_errors(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        codec().stream_decoder().feed(data)


def test_events_after_message_stop_are_ignored_and_decoders_are_independent() -> None:
    made = codec()
    first, second = made.stream_decoder(), made.stream_decoder()
    chunks = first.feed(sse("text") + b'event: error\ndata: {"type":"error","error":{"type":"api_error"}}\n\n')
    assert first.done and not second.done
    assert chunks == feed_whole(sse("text"))


# --- the fixtures themselves are real-shaped (checked against the official SDK's models) --------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.response.json")), ids=lambda p: p.name)
def test_response_fixtures_parse_as_sdk_messages(path: Path) -> None:
    sdk.Message.model_validate_json(path.read_bytes())


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.sse")), ids=lambda p: p.name)
def test_sse_fixture_events_parse_as_sdk_stream_events(path: Path) -> None:
    from pydantic import TypeAdapter

    from proxy.providers.sse import SseDecoder

    adapter: TypeAdapter[Any] = TypeAdapter(sdk.RawMessageStreamEvent)
    checked = 0
    for event in SseDecoder().feed(path.read_bytes()):
        try:
            payload = json.loads(event.data)
        except json.JSONDecodeError:
            assert path.name == "malformed.sse"
            continue
        assert payload["type"] == event.event
        if event.event in {"ping", "error", "future_event_type"}:
            continue
        if event.event == "message_start":  # the SDK's own usage_omitted fixture has no usage here
            payload["message"].setdefault("usage", {"input_tokens": 0, "output_tokens": 0})
        adapter.validate_python(payload)
        checked += 1
    assert checked >= 1
