"""Tests of the helpers `proxy.providers.http_provider` shares with both codecs: reading a reply header whatever its
case (request ids for both codecs, the content type named when a stream request gets no event stream)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamProtocolError
from proxy.providers.anthropic import AnthropicCodec
from proxy.providers.http_provider import HttpProvider, header_value
from proxy.providers.openai import OpenAICodec

ANTHROPIC_ERROR = b'{"type":"error","error":{"type":"api_error","message":"boom"}}'


@pytest.mark.parametrize("key", ["x-request-id", "X-Request-ID", "X-REQUEST-ID"])
def test_header_value_finds_a_header_in_a_plain_dict_whatever_its_case(key: str) -> None:
    assert header_value({"Content-Type": "text/plain", key: "req_1"}, "x-request-id") == "req_1"


def test_header_value_of_an_absent_header_is_none() -> None:
    assert header_value({"Content-Type": "text/plain"}, "x-request-id") is None
    assert header_value({}, "x-request-id") is None


def test_header_value_reads_the_transports_case_insensitive_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"X-Request-Id": "req_2"}))
    assert header_value(headers, "x-request-id") == "req_2"


@pytest.mark.parametrize("key", ["request-id", "Request-Id", "REQUEST-ID"])
def test_the_anthropic_codec_reads_its_request_id_header_whatever_its_case(key: str) -> None:
    error = AnthropicCodec("claude").decode_error(500, {key: "req_ant"}, ANTHROPIC_ERROR)
    assert error.request_id == "req_ant"


@pytest.mark.parametrize("key", ["x-request-id", "X-Request-ID"])
def test_the_openai_codec_reads_its_request_id_header_whatever_its_case(key: str) -> None:
    error = OpenAICodec("openai").decode_error(500, {key: "req_oai"}, b'{"error":{"message":"boom"}}')
    assert error.request_id == "req_oai"


@pytest.mark.parametrize("key", ["content-type", "Content-Type", "CONTENT-TYPE"])
def test_a_stream_answered_by_a_page_names_its_content_type_whatever_the_headers_case(key: str) -> None:
    provider = HttpProvider(OpenAICodec("openai"), transport=None, type="openai")  # type: ignore[arg-type]
    with pytest.raises(UpstreamProtocolError) as info:
        provider._whole_reply(200, {key: "Text/HTML; charset=utf-8"}, b"<html>Gateway says hi</html>")
    assert "not an event stream (text/html)" in info.value.message


def test_a_stream_answered_by_a_page_without_a_content_type_says_so() -> None:
    provider = HttpProvider(OpenAICodec("openai"), transport=None, type="openai")  # type: ignore[arg-type]
    with pytest.raises(UpstreamProtocolError) as info:
        provider._whole_reply(200, {}, b"<html>Gateway says hi</html>")
    assert "not an event stream (no content type)" in info.value.message
