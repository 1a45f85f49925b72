"""Validates the fake OpenAI upstream (tests/fakes) against the official `openai` SDK and at the byte level."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes import (
    DEFAULT_OPENAI_TEXT,
    FakeServerThread,
    ModelReply,
    OpenAIFake,
    RecordedRequest,
    Reply,
    ToolCall,
    html_error,
    openai_error,
    openai_text,
    openai_tool_call,
    tool_reply,
)
from tests.fakes.openai_fake import NO_API_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]
GO_DURATION = re.compile(r"^(\d+(?:\.\d+)?(?:h|ms|m|s))+$")


def sdk(fake: OpenAIFake, max_retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="test-key", max_retries=max_retries)


async def post_raw(
    fake: OpenAIFake, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST without an SDK; returns status, headers (lower-cased names) and the raw body bytes."""
    headers = {"Authorization": "Bearer test-key", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.base_url + "/chat/completions", json=body, headers=headers) as response,
    ):
        raw = await response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}, raw


def data_lines(raw: bytes) -> list[str]:
    """The payloads of the `data:` events, asserting the exact `data: …\\n\\n` framing."""
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
    return [event[len("data: ") :] for event in events]


def chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in data_lines(raw) if data != "[DONE]"]


# --- happy paths -----------------------------------------------------------------------------------------------
async def test_default_reply_non_streaming_with_usage_and_headers(openai_fake: OpenAIFake) -> None:
    async with sdk(openai_fake) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == DEFAULT_OPENAI_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        12,
        6,
        18,
    )
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["x-request-id"])
    assert completion._request_id == raw.headers["x-request-id"]
    for kind in ("requests", "tokens"):
        assert raw.headers[f"x-ratelimit-limit-{kind}"].isdigit()
        assert raw.headers[f"x-ratelimit-remaining-{kind}"].isdigit()
        assert GO_DURATION.match(raw.headers[f"x-ratelimit-reset-{kind}"])


async def test_requests_are_recorded(openai_fake: OpenAIFake) -> None:
    async with sdk(openai_fake) as client:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=0.5)
    [request] = openai_fake.requests
    assert isinstance(request, RecordedRequest)
    assert (request.method, request.path, request.outcome) == ("POST", "/v1/chat/completions", "completed")
    assert request.headers["AUTHORIZATION"] == request.headers["authorization"] == "Bearer test-key"
    assert request.headers["x-stainless-retry-count"] == "0"
    assert request.json == {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0.5}
    assert json.loads(request.body) == request.json


async def test_scripted_text_streams_through_sdk_helper(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("Hel", "lo", " world", input_tokens=7, output_tokens=3))
    async with (
        sdk(openai_fake) as client,
        client.chat.completions.stream(
            model="gpt-4o", messages=MESSAGES, stream_options={"include_usage": True}
        ) as stream,
    ):
        pieces = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    assert pieces == ["", "Hel", "lo", " world"]  # the role chunk carries content ""
    assert final.choices[0].message.content == "Hello world"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (7, 3)


async def test_stream_bytes_are_exact_and_role_chunk_comes_first(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("a", "b"))
    status, headers, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    parsed = chunks(raw)
    assert [c["choices"][0]["delta"] for c in parsed] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "a"},
        {"content": "b"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in parsed] == [None, None, None, "stop"]
    assert len({(c["id"], c["created"]) for c in parsed}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in parsed)


async def test_usage_chunk_only_when_include_usage(openai_fake: OpenAIFake) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    _, _, with_usage = await post_raw(openai_fake, body)
    _, _, without = await post_raw(openai_fake, body | {"stream_options": {"include_usage": False}})
    last = chunks(with_usage)[-1]
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 18
    assert all(c["usage"] is None for c in chunks(with_usage)[:-1])
    assert all(c["choices"] for c in chunks(without))


async def test_streamed_tool_call_arrives_in_fragments_and_accumulates(openai_fake: OpenAIFake) -> None:
    call = openai_tool_call("get_weather", {"location": "Paris"}, id="call_abc", fragments=4)
    openai_fake.script(call, call)
    _, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    deltas = [c["choices"][0]["delta"] for c in chunks(raw)]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] is None
    assert deltas[0]["tool_calls"] == [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    ]
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert len(fragments) == 4 and "".join(fragments) == '{"location":"Paris"}'
    assert all("id" not in d["tool_calls"][0] for d in deltas[1:-1])
    assert chunks(raw)[-1]["choices"][0]["finish_reason"] == "tool_calls"

    async with sdk(openai_fake) as client, client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        final = await stream.get_final_completion()
    [tool_call] = final.choices[0].message.tool_calls or []
    assert (tool_call.id, tool_call.function.name) == ("call_abc", "get_weather")
    assert json.loads(tool_call.function.arguments) == {"location": "Paris"}


async def test_parallel_and_non_streamed_tool_calls(openai_fake: OpenAIFake) -> None:
    reply = tool_reply(ToolCall("a", {"x": 1}), ToolCall("b", '{"y": 2}'), text=["Calling."])
    openai_fake.script(reply, reply)
    async with sdk(openai_fake) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
        async with client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
            streamed = await stream.get_final_completion()
    for result in (completion, streamed):
        message = result.choices[0].message
        assert message.content == "Calling."
        assert result.choices[0].finish_reason == "tool_calls"
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
        assert calls == [("call_fake_0", "a", {"x": 1}), ("call_fake_1", "b", {"y": 2})]


async def test_models_endpoint(openai_fake: OpenAIFake) -> None:
    async with sdk(openai_fake) as client:
        models = [model.id async for model in client.models.list()]
    assert models == ["gpt-4o-mini", "gpt-4o"]
    assert openai_fake.requests[0].path == "/v1/models"


async def test_callable_script_item_sees_the_request(openai_fake: OpenAIFake) -> None:
    openai_fake.script(lambda request: openai_text("echo: " + request.json["messages"][-1]["content"]))
    async with sdk(openai_fake) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
        again = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: Say hello"
    assert again.choices[0].message.content == DEFAULT_OPENAI_TEXT
    assert openai_fake.pending_replies == 0


# --- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_error_status_maps_to_sdk_exception(
    openai_fake: OpenAIFake, status: int, exception: type[openai.APIStatusError]
) -> None:
    openai_fake.script(openai_error(status, message=f"boom {status}", code="some_code"))
    async with sdk(openai_fake) as client:
        with pytest.raises(exception) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    error = caught.value
    assert error.status_code == status
    assert error.message.endswith(f"boom {status}")
    assert error.code == "some_code"
    assert set(error.response.json()["error"]) == {"message", "type", "param", "code"}
    assert error.request_id is not None and error.request_id.startswith("req_")


async def test_html_502_is_internal_server_error_with_text_body(openai_fake: OpenAIFake) -> None:
    openai_fake.script(html_error(502))
    async with sdk(openai_fake) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["content-type"] == "text/html"
    assert "502 Bad Gateway" in caught.value.response.text


NO_KEY = {"Authorization": openai.omit}  # a request without the header (an SDK client cannot be made without a key)


@pytest.mark.parametrize("expected_key", [None, "right-key"], ids=["any-key", "one-key"])
async def test_a_missing_api_key_is_a_401_with_no_code_and_a_wrong_one_is_invalid_api_key(
    expected_key: str | None,
) -> None:
    async with OpenAIFake(api_key=expected_key) as fake, sdk(fake) as client:
        with pytest.raises(openai.AuthenticationError) as chat:
            await client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=NO_KEY)
        with pytest.raises(openai.AuthenticationError) as models:
            await client.models.list(extra_headers=NO_KEY)
        if expected_key is not None:
            with pytest.raises(openai.AuthenticationError) as wrong:
                await client.chat.completions.create(model="m", messages=MESSAGES)  # `test-key`
            assert (wrong.value.code, wrong.value.type) == ("invalid_api_key", "invalid_request_error")
            assert "test-key" not in wrong.value.message
        sent = [request.header("authorization") for request in fake.requests]
    assert sent[:2] == [None, None] and sent[2:] == (["Bearer test-key"] if expected_key else [])
    for caught in (chat, models):  # as the real API answers a missing key
        assert caught.value.status_code == 401 and caught.value.code is None
        assert caught.value.body == {
            "message": NO_API_KEY,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    assert NO_API_KEY.startswith("You didn't provide an API key. You need to provide your API key in an Authorization")


@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer "])
async def test_an_authorization_header_naming_no_key_is_a_missing_api_key(authorization: str) -> None:
    async with OpenAIFake(api_key="right-key") as fake:
        status, _, raw = await post_raw(fake, {"model": "m", "messages": MESSAGES}, {"Authorization": authorization})
    assert status == 401
    assert json.loads(raw) == {
        "error": {"message": NO_API_KEY, "type": "invalid_request_error", "param": None, "code": None}
    }


async def test_a_compatible_persona_keeps_its_own_code_for_a_missing_key() -> None:
    async with OpenAIFake("vllm", api_key="right-key") as fake:
        status, _, raw = await post_raw(fake, {"model": "m", "messages": MESSAGES}, {"Authorization": ""})
    assert status == 401
    assert json.loads(raw)["error"]["code"] == 401  # vLLM's code is the status: only the `openai` persona has none


async def test_invalid_body_is_400(openai_fake: OpenAIFake) -> None:
    status, _, raw = await post_raw(openai_fake, {"model": "m"})
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "missing_required_parameter"


async def test_a_refused_request_consumes_no_scripted_reply(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("scripted"))
    status, _, _ = await post_raw(openai_fake, {"model": "m"})
    assert status == 400 and openai_fake.pending_replies == 1
    status, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES})
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "scripted"


async def test_unknown_routes_are_a_recorded_404_in_the_openai_shape(openai_fake: OpenAIFake) -> None:
    async with aiohttp.ClientSession() as session, session.delete(openai_fake.origin + "/v1/nope") as response:
        raw = await response.read()
    assert response.status == 404 and response.content_type == "application/json"
    assert raw == (
        b'{"error": {"message": "Invalid URL (DELETE /v1/nope)", "type": "invalid_request_error", "param": null, '
        b'"code": null}}'
    )
    assert [(r.method, r.path, r.outcome) for r in openai_fake.requests] == [("DELETE", "/v1/nope", "completed")]


async def test_an_unknown_url_is_answered_as_the_real_api_does_and_only_it_lacks_a_code(
    openai_fake: OpenAIFake,
) -> None:
    async with sdk(openai_fake) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.post("/whatever", cast_to=object, body={})
    assert caught.value.body == {
        "message": "Invalid URL (POST /v1/whatever)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    openai_fake.script(openai_error(404))  # a 404 from the model endpoint keeps its `model_not_found`
    status, _, raw = await post_raw(openai_fake, {"model": "gpt-nope", "messages": MESSAGES})
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"


async def test_retry_after_ms_makes_the_sdk_retry(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_error(429, retry_after_ms=1), openai_error(503, retry_after_ms=1), openai_text("ok"))
    started = time.monotonic()
    async with sdk(openai_fake, max_retries=2) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "ok"
    assert [r.headers["x-stainless-retry-count"] for r in openai_fake.requests] == ["0", "1", "2"]
    assert time.monotonic() - started < 0.4  # 1 ms sleeps, not the ≥0.375 s backoff


async def test_should_retry_false_stops_the_sdk_retrying(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_error(500, should_retry=False))
    async with sdk(openai_fake, max_retries=2) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(openai_fake.requests) == 1


# --- stream faults ---------------------------------------------------------------------------------------------
async def read_stream(fake: OpenAIFake, max_retries: int = 0) -> str:
    async with sdk(fake, max_retries) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_mid_stream_error_raises_in_sdk_and_is_not_retried(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("a", "b", "c", error_after=2, error_message="upstream exploded"))
    with pytest.raises(openai.APIError, match="upstream exploded"):
        await read_stream(openai_fake, max_retries=2)
    assert len(openai_fake.requests) == 1
    _, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    assert b"[DONE]" in raw  # the script was consumed; the default reply follows


async def test_cut_stream_raises_in_sdk(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("a", "b", "c", cut_after=2))
    with pytest.raises(openai.APIConnectionError):
        await read_stream(openai_fake)
    assert openai_fake.requests[0].outcome == "cut"


@pytest.mark.parametrize(("cut_after", "events_seen"), [(2, 2), (99, 6)])
async def test_cut_stream_sends_exactly_n_events_then_drops_the_connection(
    openai_fake: OpenAIFake, cut_after: int, events_seen: int
) -> None:
    openai_fake.script(openai_text("a", "b", "c", cut_after=cut_after))
    received = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            openai_fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": "Bearer k"},
        ) as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in response.content.iter_any():
                received += piece
    assert len(data_lines(received)) == events_seen  # 99: everything incl. [DONE], but the body never ends


async def test_crlf_and_keepalive_variants_parse_in_sdk(openai_fake: OpenAIFake) -> None:
    reply = openai_text("x", "y", crlf=True, keepalive=True)
    openai_fake.script(reply, reply)
    _, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    assert raw.startswith(b": keep-alive\r\n\r\ndata: {")
    assert raw.endswith(b"data: [DONE]\r\n\r\n")
    assert b"\n\n" not in raw.replace(b"\r\n", b"")
    assert await read_stream(openai_fake) == "xy"
    openai_fake.script(openai_text("x", "y", keepalive=True))
    assert await read_stream(openai_fake) == "xy"


async def test_malformed_chunk_raises_in_sdk(openai_fake: OpenAIFake) -> None:
    reply = openai_text("a", "b", malformed_at=2)
    assert openai_fake.render_events(reply)[2] == b"data: {not json\n\n"
    openai_fake.script(reply)
    with pytest.raises(json.JSONDecodeError):
        await read_stream(openai_fake)


async def test_omitted_done_still_ends_the_stream_cleanly(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("a", "b", omit_terminal=True), openai_text("a", "b", omit_terminal=True))
    _, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    assert await read_stream(openai_fake) == "ab"


async def test_injected_bytes_and_non_stream_body_cut(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text("a", inject={1: b": custom comment\n\n"}), Reply(json={"x": 1}, cut_body_after=3))
    _, _, raw = await post_raw(openai_fake, {"model": "m", "messages": MESSAGES, "stream": True})
    assert raw.split(b"\n\n")[1] == b": custom comment"
    async with sdk(openai_fake) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=MESSAGES)


async def test_delays_before_headers_and_before_first_byte(openai_fake: OpenAIFake) -> None:
    openai_fake.script(ModelReply(text=("a",), delay_headers=0.3), ModelReply(text=("a",), delay_body=0.3))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
        for expect_headers_late in (True, False):
            started = time.monotonic()
            async with session.post(openai_fake.base_url + "/chat/completions", json=body) as response:
                headers_at = time.monotonic() - started
                await response.read()
                body_at = time.monotonic() - started
            assert body_at >= 0.3
            assert (headers_at >= 0.3) is expect_headers_late


async def test_chunk_delay_spaces_events_and_client_disconnect_is_recorded(openai_fake: OpenAIFake) -> None:
    openai_fake.script(openai_text(*"abcdefgh", chunk_delay=0.2))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            openai_fake.base_url + "/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": "Bearer k"},
        ) as response,
    ):
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        assert openai_fake.requests[0].outcome == "pending"
        response.close()
    for _ in range(100):
        if openai_fake.requests[0].outcome != "pending":
            break
        await asyncio.sleep(0.02)
    assert openai_fake.requests[0].outcome == "client_disconnected"


# --- compat personas -------------------------------------------------------------------------------------------
async def test_ollama_persona(start_fake: Any) -> None:
    fake: OpenAIFake = await start_fake(OpenAIFake("ollama"))
    fake.script(openai_tool_call("f", {"a": 1}), openai_error(500))
    status, headers, raw = await post_raw(fake, {"model": "llama3", "messages": MESSAGES, "stream": True})
    assert status == 200 and "x-request-id" not in headers and "x-ratelimit-limit-requests" not in headers
    parsed = chunks(raw)
    assert all(c["choices"] and c["choices"][0]["delta"]["role"] == "assistant" for c in parsed)  # no usage chunk
    assert all(c["system_fingerprint"] == "fp_ollama" for c in parsed)
    tool_chunks = [c for c in parsed if "tool_calls" in c["choices"][0]["delta"]]
    assert [c["choices"][0]["delta"]["tool_calls"] for c in tool_chunks] == [
        [{"id": "call_fake_0", "index": 0, "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    ]
    status, _, raw = await post_raw(fake, {"model": "llama3", "messages": MESSAGES})
    assert status == 500
    assert json.loads(raw) == {
        "error": {"message": "Internal Server Error", "type": "api_error", "param": None, "code": None}
    }
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="ollama", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="llama3", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        usage = [c.usage async for c in stream if not c.choices]
    assert [u.total_tokens for u in usage if u] == [18]


async def test_vllm_persona_int_code_and_in_stream_error(start_fake: Any) -> None:
    fake: OpenAIFake = await start_fake(OpenAIFake("vllm"))
    fake.script(openai_error(400, message="bad"), openai_text("a", "b", error_after=2))
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert caught.value.response.json() == {
            "error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}
        }
        with pytest.raises(openai.APIError, match="Internal Server Error"):
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass
    assert fake.render_events(openai_text("a", error_after=1))[1] == (
        b'data: {"error":{"message":"Internal Server Error","type":"InternalServerError","param":null,"code":500}}\n\n'
    )


async def test_llamacpp_persona_timings_and_error_shape(start_fake: Any) -> None:
    fake: OpenAIFake = await start_fake(OpenAIFake("llamacpp"))
    _, _, raw = await post_raw(fake, {"model": "m", "messages": MESSAGES, "stream": True})
    fake.script(openai_error(400, message="context too long"))
    parsed = chunks(raw)
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert "timings" in parsed[-1] and all("timings" not in c for c in parsed[:-1])
    assert parsed[-1]["timings"]["predicted_n"] == 6
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="none", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        text = await read_stream(fake)
    assert caught.value.response.json() == {
        "error": {"code": 400, "message": "context too long", "type": "invalid_request_error"}
    }
    assert text == DEFAULT_OPENAI_TEXT


# --- running in a thread ---------------------------------------------------------------------------------------
def test_fake_server_thread_serves_a_blocking_client() -> None:
    with FakeServerThread(OpenAIFake()) as server:
        server.script(openai_text("from", " a thread"))
        with openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0) as client:
            completion = client.chat.completions.create(model="m", messages=MESSAGES)
            stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in stream)
    assert completion.choices[0].message.content == "from a thread"
    assert streamed == DEFAULT_OPENAI_TEXT
    assert [r.outcome for r in server.requests] == ["completed", "completed"]
