"""One HTTP status -> `UpstreamError` table for every codec: `error_for_status` (proxy/providers/http_provider.py).

The OpenAI wire (`openai_wire.classify`: the OpenAI and OpenAI-compatible codecs, their stream decoder's in-stream
errors that carry a status in `code`) and the Anthropic codec (`anthropic_stream.upstream_error`) map every status in
the table, and any other 4xx/5xx, exactly as `error_for_status` does: a body's `type`/`code` never overrides the
status, it only refines a bad request (context length, content filter). 402 (billing) is a permission error: fall back,
do not retry.
"""

from __future__ import annotations

import json

import pytest

from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamPermissionError,
)
from proxy.providers import http_provider
from proxy.providers.anthropic import AnthropicCodec
from proxy.providers.base import Codec
from proxy.providers.http_provider import error_for_status
from proxy.providers.openai import OpenAICodec
from proxy.providers.openai_compatible import OpenAICompatibleCodec

TABLE = sorted(http_provider._ERROR_BY_STATUS)  # every status the table names
OTHERS = [405, 410, 418, 451, 499, 500, 501, 502, 504, 520, 599]  # 4xx/5xx it leaves to the ranges
STATUSES = TABLE + OTHERS
# body types that would say something else than the status, were they asked
MISLEADING_TYPES = ["overloaded_error", "rate_limit_error", "authentication_error", "not_found_error", "api_error"]

CODECS: dict[str, Codec] = {
    "openai": OpenAICodec("openai", api_key="sk-status-table"),
    "openai_compatible": OpenAICompatibleCodec("local", base_url="http://127.0.0.1:9/v1", api_key="local-key"),
    "anthropic": AnthropicCodec("claude", api_key="sk-ant-status-table"),
}


def error_body(codec: str, status: int, error_type: str | None) -> bytes:
    if codec == "anthropic":
        return json.dumps({"type": "error", "error": {"type": error_type, "message": f"status {status}"}}).encode()
    error = {"message": f"status {status}", "type": error_type, "param": None, "code": None}
    return json.dumps({"error": error}).encode()


def test_the_table_covers_what_the_codecs_tables_did() -> None:
    # the OpenAI wire's table lacked 402; the Anthropic codec's also named 500, 502 and 504 (the 5xx range says so)
    assert {400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 503, 529} <= set(TABLE)
    assert error_for_status(402) is UpstreamPermissionError
    assert UpstreamPermissionError.retryable is False


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("status", STATUSES)
def test_every_codec_maps_every_status_as_the_table_does(codec: str, status: int) -> None:
    expected = error_for_status(status)
    for error_type in [None, *MISLEADING_TYPES]:
        error = CODECS[codec].decode_error(status, {}, error_body(codec, status, error_type))
        assert type(error) is expected, (codec, status, error_type)
        assert error.kind is expected.kind and error.status == status


@pytest.mark.parametrize("status", STATUSES)
def test_an_in_stream_error_with_a_status_in_its_code_maps_as_the_table_does(status: int) -> None:
    # vLLM and llama.cpp put the HTTP status in an integer `code`, also in an error event inside a 200 stream
    body = json.dumps({"error": {"message": f"status {status}", "type": "overloaded_error", "code": status}})
    decoder = CODECS["openai_compatible"].stream_decoder()
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(f"data: {body}\n\n".encode())
        decoder.close()
    assert type(caught.value) is error_for_status(status) and caught.value.status == status


@pytest.mark.parametrize("codec", ["openai", "openai_compatible"])
def test_the_openai_wire_still_refines_a_bad_request_by_its_code(codec: str) -> None:
    for status in [400, 413, 422, 418]:
        for code, refined in [("context_length_exceeded", ContextLengthExceeded), ("content_filter", ContentFiltered)]:
            body = json.dumps({"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": code}})
            assert type(CODECS[codec].decode_error(status, {}, body.encode())) is refined
    body = json.dumps({"error": {"message": "m", "type": None, "param": None, "code": "context_length_exceeded"}})
    assert type(CODECS[codec].decode_error(402, {}, body.encode())) is UpstreamPermissionError  # not a bad request


def test_the_anthropic_codec_still_refines_a_bad_request_by_its_message() -> None:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 9"}})
    assert type(CODECS["anthropic"].decode_error(400, {}, body.encode())) is ContextLengthExceeded
    assert type(CODECS["anthropic"].decode_error(500, {}, body.encode())) is error_for_status(500)
    assert error_for_status(400) is UpstreamBadRequest
