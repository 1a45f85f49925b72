"""Golden-file and unit tests for the OpenAI Chat Completions codec (proxy/providers/openai.py).

Fixtures live in tests/fixtures/openai/:
- encode/<case>.request.json  {model, stream, request: <normalized ChatRequest as JSON>}
  encode/<case>.body.json     the exact upstream body expected
- responses/<case>.response.json  {status, headers, body | body_text}
  responses/<case>.expected.json  {"response": {...}} or {"error": {...}}
- stream/<case>.sse               a raw SSE transcript
  stream/<case>.expected.json     {"chunks": [...], "done": bool, "error": {...} | null}
Set UPDATE_GOLDEN=1 to rewrite the expected files from the codec (then review the diff).

The loaders and comparers are in tests/codec_helpers.py (shared with the other codec tests).
"""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionChunk,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
    completion_create_params,
)

from proxy.config.model import ProviderConfig, Secret
from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
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
from proxy.providers.openai import OpenAICodec
from proxy.types import ChatRequest
from tests.codec_helpers import (
    FIXTURES_DIR,
    case_names,
    check_golden,
    decode_outcome,
    error_as_json,
    load_response,
    one_byte_at_a_time,
    reassemble,
    request_from_json,
    run_stream,
    sse_data_lines,
)

FIXTURES = FIXTURES_DIR / "openai"
API_KEY = "test-fixture-openai-key-0123456789"


@pytest.fixture
def codec() -> OpenAICodec:
    return OpenAICodec("openai", api_key=API_KEY)


# --- encoding -------------------------------------------------------------------------------------------

ENCODE_CASES = case_names(FIXTURES / "encode", ".request.json")
SDK_PARAMS = (
    completion_create_params.CompletionCreateParamsStreaming.__optional_keys__
    | completion_create_params.CompletionCreateParamsStreaming.__required_keys__
    | completion_create_params.CompletionCreateParamsNonStreaming.__optional_keys__
)
SDK_MESSAGE_KEYS = {
    role: cls.__optional_keys__ | cls.__required_keys__
    for role, cls in {
        "system": ChatCompletionSystemMessageParam,
        "user": ChatCompletionUserMessageParam,
        "assistant": ChatCompletionAssistantMessageParam,
        "tool": ChatCompletionToolMessageParam,
    }.items()
}


@pytest.mark.parametrize("case", ENCODE_CASES)
def test_encode_matches_golden_body(codec: OpenAICodec, case: str) -> None:
    spec = json.loads((FIXTURES / "encode" / f"{case}.request.json").read_text())
    request = request_from_json(spec["request"])
    before = repr(request)
    call = codec.encode(request, spec["model"], stream=spec["stream"])
    assert repr(request) == before  # never mutated
    assert call.method == "POST"
    assert call.url == "https://api.openai.com/v1/chat/completions"
    # compact UTF-8 JSON, exactly as json.dumps(separators=(",", ":"), ensure_ascii=False) makes it
    body = json.loads(call.body)
    assert call.body == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    check_golden(FIXTURES / "encode" / f"{case}.body.json", body)
    assert codec.encode(request, spec["model"], stream=spec["stream"]).body == call.body  # deterministic


@pytest.mark.parametrize("case", ENCODE_CASES)
def test_encoded_body_uses_only_sdk_parameter_names(codec: OpenAICodec, case: str) -> None:
    spec = json.loads((FIXTURES / "encode" / f"{case}.request.json").read_text())
    body = json.loads(codec.encode(request_from_json(spec["request"]), spec["model"], stream=spec["stream"]).body)
    assert set(body) <= SDK_PARAMS
    for message in body["messages"]:
        assert set(message) <= SDK_MESSAGE_KEYS[message["role"]]
    for tool in body.get("tools", ()):
        assert set(tool) == {"type", "function"}
        assert set(tool["function"]) <= {"name", "description", "parameters", "strict"}


def test_encode_non_ascii_is_raw_utf8(codec: OpenAICodec) -> None:
    call = codec.encode(ChatRequest.from_prompt("héllo 日本 👋"), "gpt-4o", stream=False)
    assert "héllo 日本 👋".encode() in call.body
    assert b" " not in call.body.replace("héllo 日本 👋".encode(), b"")


def test_stream_flags_only_when_streaming(codec: OpenAICodec) -> None:
    request = ChatRequest.from_prompt("hi", stream=True)  # the codec follows its `stream` argument
    assert "stream" not in json.loads(codec.encode(request, "gpt-4o", stream=False).body)
    body = json.loads(codec.encode(request, "gpt-4o", stream=True).body)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_extras_are_merged_last_and_not_mutated(codec: OpenAICodec) -> None:
    extra = {"temperature": 1.5, "metadata": MappingProxyType({"a": "b"})}
    request = ChatRequest.from_prompt("hi", temperature=0.1, extra=extra)
    body = json.loads(codec.encode(request, "gpt-4o", stream=False).body)
    assert body["temperature"] == 1.5
    assert body["metadata"] == {"a": "b"}
    assert extra == {"temperature": 1.5, "metadata": MappingProxyType({"a": "b"})}


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("o1", "max_completion_tokens"),
        ("o1-mini", "max_completion_tokens"),
        ("o3", "max_completion_tokens"),
        ("o3-mini-2025-01-31", "max_completion_tokens"),
        ("o4-mini", "max_completion_tokens"),
        ("gpt-5", "max_completion_tokens"),
        ("gpt-5-mini", "max_completion_tokens"),
        ("gpt-5.1", "max_completion_tokens"),
        ("GPT-5-nano", "max_completion_tokens"),
        ("gpt-4o", "max_tokens"),
        ("gpt-4.1-mini", "max_tokens"),
        ("gpt-3.5-turbo", "max_tokens"),
        ("omni-moderation-latest", "max_tokens"),
    ],
)
def test_max_tokens_field_by_model(codec: OpenAICodec, model: str, field: str) -> None:
    body = json.loads(codec.encode(ChatRequest.from_prompt("hi", max_tokens=7), model, stream=False).body)
    assert body[field] == 7
    assert ({"max_tokens", "max_completion_tokens"} - {field}).isdisjoint(body)


def test_headers_and_url_are_precomputed() -> None:
    codec = OpenAICodec(
        "azureish",
        base_url="https://example.test/openai/v1/",
        api_key="sk-abc",
        organization="org-1",
        project="proj_2",
        headers={"X-Custom": "yes"},
    )
    first = codec.encode(ChatRequest.from_prompt("a"), "gpt-4o", stream=False)
    second = codec.encode(ChatRequest.from_prompt("b"), "gpt-4o", stream=True)
    assert first.url == "https://example.test/openai/v1/chat/completions"
    assert dict(first.headers) == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": "Bearer sk-abc",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj_2",
        "X-Custom": "yes",
    }
    assert first.headers is second.headers  # built once, shared read-only
    with pytest.raises(TypeError):
        first.headers["Authorization"] = "Bearer other"  # type: ignore[index]


def test_no_authorization_without_api_key() -> None:
    call = OpenAICodec("keyless").encode(ChatRequest.from_prompt("hi"), "gpt-4o", stream=False)
    assert "Authorization" not in call.headers


def test_from_config_reveals_secrets_and_defaults_base_url() -> None:
    cfg = ProviderConfig(
        name="openai",
        type="openai",
        api_key=Secret("sk-live-123"),
        organization="org-9",
        headers={"X-Team": Secret("search")},
    )
    codec = OpenAICodec.from_config(cfg)
    call = codec.encode(ChatRequest.from_prompt("hi"), "gpt-4o", stream=False)
    assert codec.provider == "openai"
    assert call.url == "https://api.openai.com/v1/chat/completions"
    assert call.headers["Authorization"] == "Bearer sk-live-123"
    assert call.headers["OpenAI-Organization"] == "org-9"
    assert call.headers["X-Team"] == "search"
    custom = OpenAICodec.from_config(dataclasses.replace(cfg, base_url="http://gateway:8080/v1"))
    assert custom.url == "http://gateway:8080/v1/chat/completions"


# --- decoding replies and errors ------------------------------------------------------------------------

RESPONSE_CASES = case_names(FIXTURES / "responses", ".response.json")


@pytest.mark.parametrize("case", RESPONSE_CASES)
def test_decode_matches_golden(codec: OpenAICodec, case: str) -> None:
    status, headers, body = load_response(FIXTURES / "responses" / f"{case}.response.json")
    outcome = decode_outcome(codec, status, headers, body)
    check_golden(FIXTURES / "responses" / f"{case}.expected.json", outcome)
    if not 200 <= status < 300:  # decode() raises exactly what decode_error() returns
        assert error_as_json(codec.decode_error(status, headers, body)) == outcome["error"]


@pytest.mark.parametrize("case", [c for c in RESPONSE_CASES if not c.startswith(("error_", "invalid_", "missing_"))])
def test_success_fixtures_are_real_shaped(case: str) -> None:
    _, _, body = load_response(FIXTURES / "responses" / f"{case}.response.json")
    ChatCompletion.model_validate_json(body)  # the official SDK's response type accepts them


@pytest.mark.parametrize("case", RESPONSE_CASES)
def test_errors_never_show_the_api_key(codec: OpenAICodec, case: str) -> None:
    status, headers, body = load_response(FIXTURES / "responses" / f"{case}.response.json")
    try:
        codec.decode(status, headers, body)
    except UpstreamError as error:
        assert API_KEY not in str(error)
        assert API_KEY not in error.describe()


@pytest.mark.parametrize(
    ("status", "error_type", "code", "expected"),
    [
        (400, "invalid_request_error", None, UpstreamBadRequest),
        (400, "invalid_request_error", "context_length_exceeded", ContextLengthExceeded),
        (413, "invalid_request_error", "context_length_exceeded", ContextLengthExceeded),
        (422, None, "content_filter", ContentFiltered),
        (400, None, "content_policy_violation", ContentFiltered),
        (401, "invalid_request_error", "invalid_api_key", UpstreamAuthError),
        (403, None, None, UpstreamPermissionError),
        (404, None, "model_not_found", UpstreamNotFound),
        (405, None, None, UpstreamBadRequest),
        (408, None, None, UpstreamServerError),
        (409, None, None, UpstreamServerError),
        (429, "tokens", "rate_limit_exceeded", UpstreamRateLimited),
        (429, "insufficient_quota", "insufficient_quota", UpstreamRateLimited),
        (500, "server_error", None, UpstreamServerError),
        (502, None, None, UpstreamServerError),
        (503, None, None, UpstreamOverloaded),
        (504, None, None, UpstreamServerError),
        (520, None, None, UpstreamServerError),
        (529, "overloaded_error", None, UpstreamOverloaded),
        # the status decides; the code only refines a bad request
        (500, None, "context_length_exceeded", UpstreamServerError),
        (429, None, "invalid_api_key", UpstreamRateLimited),
    ],
)
def test_classification_by_status_and_code(
    codec: OpenAICodec, status: int, error_type: str | None, code: str | None, expected: type[UpstreamError]
) -> None:
    body = json.dumps({"error": {"message": "whatever text", "type": error_type, "param": None, "code": code}})
    error = codec.decode_error(status, {}, body.encode())
    assert type(error) is expected
    assert (error.status, error.error_type, error.code, error.provider) == (status, error_type, code, "openai")
    assert error.message.startswith("whatever text")


def test_classification_ignores_message_text(codec: OpenAICodec) -> None:
    body = b'{"error":{"message":"maximum context length exceeded; rate limit; overloaded","type":null,"code":null}}'
    assert type(codec.decode_error(400, {}, body)) is UpstreamBadRequest


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n",
        b"null",
        b"[]",
        b"42",
        b'"just a string"',
        b'{"error": 5}',
        b'{"error": {"message": ["a", "list"], "code": {"nested": true}}}',
        b'{"error": {"message": null}}',
        b"\xff\xfe\x00garbage",
        b"<html>" + b"x" * 100_000,
        b'{"unexpected": "shape"}',
    ],
)
def test_decode_error_never_raises(codec: OpenAICodec, body: bytes) -> None:
    error = codec.decode_error(502, {"Retry-After": "soon"}, body)
    assert isinstance(error, UpstreamServerError)
    assert error.message
    if b"list" not in body:
        assert error.message.startswith("HTTP 502")
    assert len(error.message) < 300
    assert error.retry_after is None


def test_non_json_excerpt_is_short_and_collapsed(codec: OpenAICodec) -> None:
    error = codec.decode_error(502, {}, b"<html>\n\n  <body>" + b"word " * 200 + b"</body></html>")
    assert error.message.startswith("HTTP 502 with a non-JSON body: <html> <body>word word")
    assert len(error.message) <= len("HTTP 502 with a non-JSON body: ") + 201


def test_decode_200_with_error_body_is_classified(codec: OpenAICodec) -> None:
    body = b'{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}'
    with pytest.raises(UpstreamRateLimited) as info:
        codec.decode(200, {}, body)
    assert "insufficient_quota" in info.value.message


def test_protocol_error_excerpt_is_bounded(codec: OpenAICodec) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        codec.decode(200, {"x-request-id": "req_1"}, b"{" + b"a" * 5000)
    assert "not valid JSON" in info.value.message
    assert len(info.value.message) < 300
    assert info.value.request_id == "req_1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "tool_calls"),
        ("eos", "stop"),
        ("end_turn", "stop"),
        (None, None),
        (7, "stop"),
    ],
)
def test_finish_reason_normalization(codec: OpenAICodec, raw: object, expected: str | None) -> None:
    body = {"id": "x", "model": "m", "choices": [{"index": 0, "message": {"content": "t"}, "finish_reason": raw}]}
    assert codec.decode(200, {}, json.dumps(body).encode()).finish_reason == expected


def test_an_unusable_usage_is_dropped_with_a_warning_naming_the_provider_and_the_field(caplog) -> None:
    body = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": "2"}}
    response = OpenAICodec("my-openai").decode(200, {}, json.dumps(body).encode())
    assert (response.text, response.usage) == ("hi", None)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [
        'provider my-openai: its usage is ignored, the answer kept: `usage.completion_tokens` is "2", '
        "not a count of tokens"
    ]


def test_lenient_reply_without_usage_or_optional_keys(codec: OpenAICodec) -> None:
    response = codec.decode(200, {}, b'{"choices":[{"message":{"content":"hi"}}]}')
    assert (response.text, response.usage, response.id, response.model, response.finish_reason) == (
        "hi",
        None,
        None,
        "",
        None,
    )


# --- streaming ------------------------------------------------------------------------------------------

STREAM_CASES = case_names(FIXTURES / "stream", ".sse")


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_matches_golden_whole_and_byte_by_byte(codec: OpenAICodec, case: str) -> None:
    transcript = (FIXTURES / "stream" / f"{case}.sse").read_bytes()
    whole = run_stream(codec, [transcript])
    check_golden(FIXTURES / "stream" / f"{case}.expected.json", whole)
    assert run_stream(codec, one_byte_at_a_time(transcript)) == whole
    middle = len(transcript) // 2
    assert run_stream(codec, [transcript[:middle], b"", transcript[middle:]]) == whole


@pytest.mark.parametrize("case", ["text", "tool_call_fragments", "parallel_tool_calls", "crlf_keepalive"])
def test_stream_fixtures_are_real_shaped(case: str) -> None:
    for data in sse_data_lines((FIXTURES / "stream" / f"{case}.sse").read_bytes()):
        if data != "[DONE]":
            ChatCompletionChunk.model_validate_json(data)


def test_crlf_transcript_decodes_like_lf(codec: OpenAICodec) -> None:
    transcript = (FIXTURES / "stream" / "crlf_keepalive.sse").read_bytes()
    assert b"\r\n" in transcript and b": keep-alive" in transcript
    assert run_stream(codec, [transcript]) == run_stream(codec, [transcript.replace(b"\r\n", b"\n")])


def test_streamed_tool_call_fragments_reassemble(codec: OpenAICodec) -> None:
    outcome = run_stream(codec, one_byte_at_a_time((FIXTURES / "stream" / "tool_call_fragments.sse").read_bytes()))
    calls = reassemble(outcome["chunks"])
    assert list(calls) == [0]
    assert calls[0]["id"] == "call_4XzlBrQxnZuZ0pJ3TpLmFa1e"
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert outcome["chunks"][-2]["finish_reason"] == "tool_calls"
    assert outcome["chunks"][-1]["usage"]["input_tokens"] == 44


def test_streamed_parallel_tool_calls_reassemble(codec: OpenAICodec) -> None:
    outcome = run_stream(codec, [(FIXTURES / "stream" / "parallel_tool_calls.sse").read_bytes()])
    calls = reassemble(outcome["chunks"])
    assert {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
        0: ("call_P1", "get_weather", {"city": "Paris"}),
        1: ("call_T2", "get_time", {"tz": "Asia/Tokyo"}),
    }


def test_stream_cut_raises_interrupted_with_partial_text(codec: OpenAICodec) -> None:
    decoder = codec.stream_decoder()
    chunks = decoder.feed((FIXTURES / "stream" / "cut_no_done.sse").read_bytes())
    assert "".join(c.text for c in chunks) == "The answer is"
    assert not decoder.done
    with pytest.raises(StreamInterrupted) as info:
        decoder.close()
    assert info.value.partial_text == "The answer is"
    assert info.value.provider == "openai"


def test_stream_role_only_chunk_yields_nothing(codec: OpenAICodec) -> None:
    decoder = codec.stream_decoder()
    assert decoder.feed(b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n') == []


def test_stream_ignores_bytes_after_done(codec: OpenAICodec) -> None:
    decoder = codec.stream_decoder()
    assert decoder.feed(b"data: [DONE]\n\n") == []
    assert decoder.done
    assert decoder.feed(b"data: {not json}\n\n") == []
    assert decoder.close() == []


def test_stream_error_after_content_in_same_feed_keeps_the_content(codec: OpenAICodec) -> None:
    decoder = codec.stream_decoder()
    chunks = decoder.feed((FIXTURES / "stream" / "error_chunk_server.sse").read_bytes())
    assert "".join(c.text for c in chunks) == "Once upon"
    with pytest.raises(UpstreamServerError):
        decoder.close()


def test_stream_error_held_behind_content_is_raised_by_raise_pending_once(codec: OpenAICodec) -> None:
    decoder = codec.stream_decoder()
    decoder.raise_pending()  # nothing held back: nothing raised
    chunks = decoder.feed((FIXTURES / "stream" / "error_chunk_server.sse").read_bytes())
    assert "".join(c.text for c in chunks) == "Once upon"
    with pytest.raises(UpstreamServerError):
        decoder.raise_pending()
    decoder.raise_pending()  # raised once, not again


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"message": "m", "type": "server_error", "code": None}, UpstreamServerError),
        ({"message": "m", "type": None, "code": None}, UpstreamServerError),
        ({"message": "m", "type": "tokens", "code": "rate_limit_exceeded"}, UpstreamRateLimited),
        ({"message": "m", "type": "invalid_request_error", "code": "context_length_exceeded"}, ContextLengthExceeded),
        ({"message": "m", "type": "invalid_request_error", "code": None}, UpstreamBadRequest),
        ({"message": "m", "type": "invalid_request_error", "code": "content_filter"}, ContentFiltered),
        ({"message": "m", "type": "overloaded_error", "code": None}, UpstreamOverloaded),
        ({"message": "m", "type": "authentication_error", "code": None}, UpstreamAuthError),
        ({"message": "m", "type": "BadRequestError", "code": 400}, UpstreamBadRequest),
        ({"message": "m", "type": "whatever", "code": 503}, UpstreamOverloaded),
    ],
)
def test_stream_error_classification(codec: OpenAICodec, error: dict[str, Any], expected: type) -> None:
    decoder = codec.stream_decoder()
    with pytest.raises(UpstreamError) as info:
        decoder.feed(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    assert type(info.value) is expected
    assert info.value.message == "m"
