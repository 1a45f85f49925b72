"""Validates the fake Anthropic upstream (tests/fakes) against the official `anthropic` SDK and at the byte level."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anthropic
import httpx2
import pytest

from tests.fakes import (
    DEFAULT_ANTHROPIC_TEXT,
    AnthropicFake,
    FakeServerThread,
    ToolCall,
    anthropic_error,
    anthropic_text,
    anthropic_tool_use,
    html_error,
    tool_reply,
)

MESSAGES = [{"role": "user", "content": "Say hello"}]
BODY = {"model": "claude-test", "max_tokens": 100, "messages": MESSAGES}
GOOD_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def sdk(fake: AnthropicFake, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test-key", max_retries=max_retries)


async def post_raw(
    fake: AnthropicFake, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fake.base_url + "/v1/messages", json=body, headers=GOOD_HEADERS if headers is None else headers
        ) as response,
    ):
        raw = await response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}, raw


def named_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs, asserting the `event: x\\ndata: {json with type x}\\n\\n` framing."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


async def stream_text(fake: AnthropicFake, max_retries: int = 0) -> str:
    async with sdk(fake, max_retries) as client, client.messages.stream(**BODY) as stream:
        return await stream.get_final_text()


# --- happy paths -----------------------------------------------------------------------------------------------
async def test_default_reply_non_streaming_with_usage_and_headers(anthropic_fake: AnthropicFake) -> None:
    async with sdk(anthropic_fake) as client:
        raw = await client.messages.with_raw_response.create(**BODY)
    message = await raw.parse()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == DEFAULT_ANTHROPIC_TEXT  # type: ignore[union-attr]
    assert (message.stop_reason, message.model) == ("end_turn", "claude-test")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 6)
    assert re.fullmatch(r"req_011C[A-Za-z0-9]{20}", raw.headers["request-id"])
    assert message._request_id == raw.headers["request-id"]
    now = datetime.now(UTC)
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert raw.headers[f"anthropic-ratelimit-{kind}-limit"].isdigit()
        reset = datetime.fromisoformat(raw.headers[f"anthropic-ratelimit-{kind}-reset"])
        assert raw.headers[f"anthropic-ratelimit-{kind}-reset"].endswith("Z")
        assert now - timedelta(seconds=5) < reset < now + timedelta(minutes=5)


async def test_requests_are_recorded(anthropic_fake: AnthropicFake) -> None:
    async with sdk(anthropic_fake) as client:
        await client.messages.create(**BODY, stop_sequences=["END"])
    [request] = anthropic_fake.requests
    assert (request.method, request.path, request.outcome) == ("POST", "/v1/messages", "completed")
    assert request.headers["Anthropic-Version"] is not None
    assert request.json == BODY | {"stop_sequences": ["END"]}


async def test_streaming_text_accumulates_in_sdk_helper(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("Hel", "lo", " world", input_tokens=30, output_tokens=9, cached_tokens=4))
    async with sdk(anthropic_fake) as client, client.messages.stream(**BODY) as stream:
        pieces = [event.delta.text async for event in stream if event.type == "content_block_delta"]  # type: ignore[union-attr]
        message = await stream.get_final_message()
    assert pieces == ["Hel", "lo", " world"]
    assert message.content[0].text == "Hello world"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 9)  # output from message_delta
    assert message.usage.cache_read_input_tokens == 4


async def test_stream_event_order_is_exact(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(tool_reply(ToolCall("get_weather", {"location": "Paris"}, fragments=3), text=["I'll check."]))
    status, headers, raw = await post_raw(anthropic_fake, BODY | {"stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = named_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == ([], None, 1)
    assert events[5][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_fake_0",
        "name": "get_weather",
        "input": {},
    }
    fragments = [data["delta"]["partial_json"] for _, data in events[6:10]]
    assert fragments[0] == "" and "".join(fragments) == '{"location":"Paris"}'
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == 6
    assert b'data: {"type": "ping"}\n\n' in raw


async def test_tool_use_streamed_and_not(anthropic_fake: AnthropicFake) -> None:
    reply = anthropic_tool_use("get_weather", {"location": "Paris"}, id="toolu_01abc")
    anthropic_fake.script(reply, reply)
    async with sdk(anthropic_fake) as client:
        message = await client.messages.create(**BODY)
        async with client.messages.stream(**BODY) as stream:
            streamed = await stream.get_final_message()
    for result in (message, streamed):
        assert result.stop_reason == "tool_use"
        [block] = result.content
        assert block.type == "tool_use"
        assert (block.id, block.name, block.input) == ("toolu_01abc", "get_weather", {"location": "Paris"})


async def test_callable_script_item_sees_the_request(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(lambda request: anthropic_text(f"max_tokens={request.json['max_tokens']}"))
    assert await stream_text(anthropic_fake) == "max_tokens=100"
    assert await stream_text(anthropic_fake) == DEFAULT_ANTHROPIC_TEXT


# --- request checks and errors ---------------------------------------------------------------------------------
async def test_missing_version_header_is_400_with_request_id(anthropic_fake: AnthropicFake) -> None:
    status, headers, raw = await post_raw(anthropic_fake, BODY, {"x-api-key": "k"})
    assert status == 400
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"},
        "request_id": headers["request-id"],
    }


async def test_missing_api_key_is_401(anthropic_fake: AnthropicFake) -> None:
    status, headers, raw = await post_raw(anthropic_fake, BODY, {"anthropic-version": "2023-06-01"})
    assert status == 401
    body = json.loads(raw)
    assert body["error"]["type"] == "authentication_error"
    assert body["request_id"] == headers["request-id"]


async def test_wrong_api_key_and_missing_max_tokens() -> None:
    async with AnthropicFake(api_key="right-key") as fake:
        async with sdk(fake) as client:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(**BODY)
        assert "test-key" not in str(caught.value)
        status, _, raw = await post_raw(
            fake, {"model": "m", "messages": MESSAGES}, GOOD_HEADERS | {"x-api-key": "right-key"}
        )
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "max_tokens: Field required"


async def test_a_refused_request_consumes_no_scripted_reply(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("scripted"))
    status, _, _ = await post_raw(anthropic_fake, BODY, {"x-api-key": "test-key"})  # no anthropic-version
    assert status == 400 and anthropic_fake.pending_replies == 1
    status, _, raw = await post_raw(anthropic_fake, BODY)
    assert status == 200 and json.loads(raw)["content"][0]["text"] == "scripted"


async def test_unknown_routes_are_a_recorded_404_in_the_anthropic_shape(anthropic_fake: AnthropicFake) -> None:
    async with aiohttp.ClientSession() as session, session.get(anthropic_fake.base_url + "/v1/models") as response:
        raw = await response.read()
    assert response.status == 404 and response.content_type == "application/json"
    assert raw == (
        b'{"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}, '
        b'"request_id": "' + response.headers["request-id"].encode() + b'"}'
    )
    assert [(r.method, r.path, r.outcome) for r in anthropic_fake.requests] == [("GET", "/v1/models", "completed")]


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.RequestTooLargeError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
async def test_error_status_maps_to_sdk_exception(
    anthropic_fake: AnthropicFake, status: int, error_type: str, exception: type[anthropic.APIStatusError]
) -> None:
    anthropic_fake.script(anthropic_error(status, message=f"boom {status}"))
    async with sdk(anthropic_fake) as client:
        with pytest.raises(exception) as caught:
            await client.messages.create(**BODY)
    error = caught.value
    assert error.status_code == status
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": f"boom {status}"},
        "request_id": error.request_id,
    }
    assert error.request_id is not None and error.request_id.startswith("req_")


async def test_html_502_is_internal_server_error(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(html_error(502))
    async with sdk(anthropic_fake) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(**BODY)
    assert caught.value.status_code == 502
    assert "502 Bad Gateway" in caught.value.response.text


async def test_retry_after_ms_makes_the_sdk_retry(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(
        anthropic_error(529, retry_after_ms=1),
        anthropic_error(429, retry_after_ms=1, retry_after=1),
        anthropic_text("ok"),
    )
    started = time.monotonic()
    assert await stream_text(anthropic_fake, max_retries=2) == "ok"
    assert [r.headers["x-stainless-retry-count"] for r in anthropic_fake.requests] == ["0", "1", "2"]
    assert time.monotonic() - started < 0.4
    assert anthropic_fake.requests[1].body == anthropic_fake.requests[0].body


# --- stream faults ---------------------------------------------------------------------------------------------
async def test_error_event_mid_stream_raises_status_200_and_is_not_retried(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("a", "b", error_after=4))
    with pytest.raises(anthropic.APIStatusError) as caught:
        await stream_text(anthropic_fake, max_retries=2)
    assert type(caught.value) is anthropic.APIStatusError
    assert caught.value.status_code == 200
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert len(anthropic_fake.requests) == 1


async def test_cut_stream_raises_in_sdk(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("a", "b", cut_after=4))
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):  # 2.x lets httpx2's error through
        await stream_text(anthropic_fake)
    assert anthropic_fake.requests[0].outcome == "cut"


async def test_unknown_event_types_are_ignored_by_sdk(anthropic_fake: AnthropicFake) -> None:
    reply = anthropic_text("a", "b", unknown_event_at=4)
    assert anthropic_fake.render_events(reply)[4].startswith(b"event: future_event\n")
    anthropic_fake.script(reply)
    assert await stream_text(anthropic_fake) == "ab"


async def test_crlf_and_keepalive_variants_parse_in_sdk(anthropic_fake: AnthropicFake) -> None:
    reply = anthropic_text("x", "y", crlf=True, keepalive=True)
    anthropic_fake.script(reply, reply)
    _, _, raw = await post_raw(anthropic_fake, BODY | {"stream": True})
    assert raw.startswith(b": keep-alive\r\n\r\nevent: message_start\r\ndata: {")
    assert raw.endswith(b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n')
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert await stream_text(anthropic_fake) == "xy"


async def test_malformed_event_raises_in_sdk(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("a", "b", malformed_at=3))
    with pytest.raises(json.JSONDecodeError):
        await stream_text(anthropic_fake)


async def test_omitted_message_stop_ends_cleanly(anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(anthropic_text("a", "b", omit_terminal=True), anthropic_text("a", "b", omit_terminal=True))
    _, _, raw = await post_raw(anthropic_fake, BODY | {"stream": True})
    assert [name for name, _ in named_events(raw)][-1] == "message_delta"
    async with sdk(anthropic_fake) as client, client.messages.stream(**BODY) as stream:
        texts = [event.delta.text async for event in stream if event.type == "content_block_delta"]  # type: ignore[union-attr]
    assert texts == ["a", "b"]


def test_fake_server_thread_serves_a_blocking_client() -> None:
    with FakeServerThread(AnthropicFake()) as server:
        server.script(anthropic_text("threaded"))
        with anthropic.Anthropic(base_url=server.base_url, api_key="test-key", max_retries=0) as client:
            message = client.messages.create(**BODY)
    assert message.content[0].text == "threaded"  # type: ignore[union-attr]
    assert server.requests[0].outcome == "completed"
