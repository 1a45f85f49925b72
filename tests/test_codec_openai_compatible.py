"""Golden-file and unit tests for the OpenAI-compatible codec (Ollama, vLLM, llama.cpp, LM Studio).

Same fixture layout as tests/test_codec_openai.py, under tests/fixtures/openai_compatible/.
"""

from __future__ import annotations

import json

import pytest

from proxy.config.model import ProviderConfig, Secret
from proxy.errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamServerError,
)
from proxy.providers.openai_compatible import OpenAICompatibleCodec
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
)

FIXTURES = FIXTURES_DIR / "openai_compatible"
BASE_URL = "http://localhost:11434/v1/"
LOCAL_TOKEN = "local-secret-token-42"


@pytest.fixture
def codec() -> OpenAICompatibleCodec:
    return OpenAICompatibleCodec("local", base_url=BASE_URL, api_key=LOCAL_TOKEN)


# --- construction and encoding --------------------------------------------------------------------------


def test_no_authorization_header_without_a_key() -> None:
    codec = OpenAICompatibleCodec("ollama", base_url=BASE_URL)
    call = codec.encode(ChatRequest.from_prompt("hi"), "llama3.2", stream=False)
    assert call.url == "http://localhost:11434/v1/chat/completions"
    assert dict(call.headers) == {"Content-Type": "application/json", "Accept": "application/json"}


def test_bearer_header_with_a_key(codec: OpenAICompatibleCodec) -> None:
    call = codec.encode(ChatRequest.from_prompt("hi"), "llama3.2", stream=False)
    assert call.headers["Authorization"] == f"Bearer {LOCAL_TOKEN}"


def test_from_config_requires_base_url() -> None:
    with pytest.raises(ValueError, match=r"provider `ollama` \(type openai_compatible\) needs a base_url"):
        OpenAICompatibleCodec.from_config(ProviderConfig(name="ollama", type="openai_compatible"))


def test_constructor_requires_base_url() -> None:
    with pytest.raises(ValueError, match="needs a base_url"):
        OpenAICompatibleCodec("vllm", base_url="")


def test_from_config_with_empty_key_sends_no_authorization() -> None:
    cfg = ProviderConfig(
        name="vllm", type="openai_compatible", base_url="http://gpu-box:8000/v1", api_key=Secret(""), headers={}
    )
    codec = OpenAICompatibleCodec.from_config(cfg)
    assert isinstance(codec, OpenAICompatibleCodec)
    call = codec.encode(ChatRequest.from_prompt("hi"), "m", stream=False)
    assert call.url == "http://gpu-box:8000/v1/chat/completions"
    assert "Authorization" not in call.headers


ENCODE_CASES = case_names(FIXTURES / "encode", ".request.json")


@pytest.mark.parametrize("case", ENCODE_CASES)
def test_encode_matches_golden_body(codec: OpenAICompatibleCodec, case: str) -> None:
    spec = json.loads((FIXTURES / "encode" / f"{case}.request.json").read_text())
    call = codec.encode(request_from_json(spec["request"]), spec["model"], stream=spec["stream"])
    body = json.loads(call.body)
    check_golden(FIXTURES / "encode" / f"{case}.body.json", body)
    assert "max_completion_tokens" not in body


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5", "qwen3:8b", "o1"])
def test_always_max_tokens(codec: OpenAICompatibleCodec, model: str) -> None:
    body = json.loads(codec.encode(ChatRequest.from_prompt("hi", max_tokens=9), model, stream=False).body)
    assert body["max_tokens"] == 9
    assert "max_completion_tokens" not in body


# --- decoding -------------------------------------------------------------------------------------------

RESPONSE_CASES = case_names(FIXTURES / "responses", ".response.json")


@pytest.mark.parametrize("case", RESPONSE_CASES)
def test_decode_matches_golden(codec: OpenAICompatibleCodec, case: str) -> None:
    status, headers, body = load_response(FIXTURES / "responses" / f"{case}.response.json")
    outcome = decode_outcome(codec, status, headers, body)
    check_golden(FIXTURES / "responses" / f"{case}.expected.json", outcome)
    if "error" in outcome:
        assert LOCAL_TOKEN not in outcome["error"]["message"]
        assert error_as_json(codec.decode_error(status, headers, body)) == outcome["error"]
    else:
        assert outcome["response"]["request_id"] is None  # these servers send no x-request-id


def test_zero_usage_is_unknown_but_real_usage_is_kept(codec: OpenAICompatibleCodec) -> None:
    reply = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}]}
    zero = codec.decode(200, {}, json.dumps({**reply, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}).encode())
    assert zero.usage is None
    real = codec.decode(200, {}, json.dumps({**reply, "usage": {"prompt_tokens": 3, "completion_tokens": 0}}).encode())
    assert real.usage is not None and real.usage.input_tokens == 3


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (
            400,
            {"error": {"message": "m", "type": "BadRequestError", "param": None, "code": 400}},
            UpstreamBadRequest,
            "400",
        ),
        (404, {"object": "error", "message": "m", "type": "NotFoundError", "code": 404}, UpstreamNotFound, "404"),
        (500, {"error": {"code": 500, "message": "m", "type": "server_error"}}, UpstreamServerError, "500"),
        (503, {"error": {"code": 503, "message": "m", "type": "unavailable_error"}}, UpstreamOverloaded, "503"),
        (401, {"error": "m"}, UpstreamAuthError, None),
    ],
)
def test_error_shapes(
    codec: OpenAICompatibleCodec, status: int, body: dict, expected: type[UpstreamError], code: str | None
) -> None:
    error = codec.decode_error(status, {}, json.dumps(body).encode())
    assert type(error) is expected
    assert error.message == "m"
    assert error.code == code
    assert error.request_id is None


# --- streaming ------------------------------------------------------------------------------------------

STREAM_CASES = case_names(FIXTURES / "stream", ".sse")


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_matches_golden_whole_and_byte_by_byte(codec: OpenAICompatibleCodec, case: str) -> None:
    transcript = (FIXTURES / "stream" / f"{case}.sse").read_bytes()
    whole = run_stream(codec, [transcript])
    check_golden(FIXTURES / "stream" / f"{case}.expected.json", whole)
    assert run_stream(codec, one_byte_at_a_time(transcript)) == whole


def test_whole_tool_calls_without_index_stay_separate(codec: OpenAICompatibleCodec) -> None:
    outcome = run_stream(codec, [(FIXTURES / "stream" / "ollama_whole_tool_calls.sse").read_bytes()])
    calls = reassemble(outcome["chunks"])
    assert {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
        0: ("call_a1", "get_weather", {"city": "Berlin"}),
        1: ("call_b2", "get_weather", {"city": "Rome"}),  # arguments sent as an object, re-encoded as JSON text
    }
    assert [c["finish_reason"] for c in outcome["chunks"] if c["finish_reason"]] == ["tool_calls"]


def test_stream_content_as_typed_parts_gives_their_text(codec: OpenAICompatibleCodec) -> None:
    # Mistral's reasoning models (magistral) stream `delta.content` as a list of typed parts, thinking first; as in a
    # whole reply, the text of the parts that have one is the answer (it was a malformed-stream error).
    def chunk(content: object, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        return f"data: {json.dumps({'id': 'c1', 'model': 'magistral', 'choices': [choice]})}\n\n".encode()

    thinking = [{"type": "thinking", "thinking": [{"type": "text", "text": "The user greets me."}]}]
    transcript = b"".join(
        [chunk(""), chunk(thinking), chunk([{"type": "text", "text": "Hel"}]), chunk("lo"), chunk(None, "stop")]
    )
    outcome = run_stream(codec, [transcript + b"data: [DONE]\n\n"])
    assert outcome["done"] and outcome["error"] is None
    assert "".join(c["text"] for c in outcome["chunks"]) == "Hello"
    bad = run_stream(codec, [chunk([5]) + b"data: [DONE]\n\n"])
    assert bad["error"]["class"] == "UpstreamProtocolError" and "`content[0]` is an integer" in bad["error"]["message"]


def test_stream_without_usage_chunk_has_no_usage(codec: OpenAICompatibleCodec) -> None:
    outcome = run_stream(codec, [(FIXTURES / "stream" / "ollama_no_usage.sse").read_bytes()])
    assert outcome["done"] and outcome["error"] is None
    assert all(c["usage"] is None for c in outcome["chunks"])
    assert "".join(c["text"] for c in outcome["chunks"]) == "Rayleigh scattering."


def test_error_inside_stream_uses_the_integer_code_as_status(codec: OpenAICompatibleCodec) -> None:
    outcome = run_stream(codec, one_byte_at_a_time((FIXTURES / "stream" / "vllm_error_in_stream.sse").read_bytes()))
    assert outcome["error"]["class"] == "UpstreamServerError"
    assert (outcome["error"]["status"], outcome["error"]["code"]) == (500, "500")
    assert "".join(c["text"] for c in outcome["chunks"]) == "The"


def test_llamacpp_context_overflow_type_is_context_length(codec: OpenAICompatibleCodec) -> None:
    from proxy.errors import ContextLengthExceeded

    body = json.dumps(
        {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size",
                "type": "exceed_context_size_error",
            }
        }
    ).encode()
    error = codec.decode_error(400, {}, body)
    assert isinstance(error, ContextLengthExceeded) and error.status == 400
