"""Bad upstream replies to whole (not streamed) requests: the real providers (YAML -> codec -> aiohttp transport)
against the fake OpenAI and Anthropic upstreams on 127.0.0.1, answering with what a broken server sends.

Every bad reply must become an `UpstreamError` of the right class (so retry/fallback does the right thing), whose
message names the provider's part that was wrong; never another exception, never a silently emptied answer.
Covered: fields missing, null or of the wrong type (choices, message, content, tool calls, arguments, usage),
bodies that are not JSON objects, HTML at 200, empty, truncated, not UTF-8, nested too deeply, with a 5,000-digit
number, an error body at 200; gzip claimed but not sent, a body larger than the bound, a body that stalls; every
interesting status with a JSON, an empty and an HTML body (3xx: a redirect, not followed); `retry-after` in
seconds, as an HTTP date, as garbage and absurdly large. The last tests go through the engine and both HTTP fronts:
a malformed reply is retried, then falls back, and the attempts say what was wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest

from proxy.config import load_config_text
from proxy.errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from proxy.fronts import anthropic_api, openai_api
from proxy.providers import transport
from proxy.providers.base import Provider
from proxy.providers.registry import build_provider
from proxy.providers.retry_after import MAX_RETRY_AFTER
from proxy.types import ChatRequest, ChatResponse
from tests.fakes import AnthropicFake, ErrorReply, ModelReply, OpenAIFake, Reply, html_error
from tests.http_server import engine_app

KEYS = {"openai": "test-fuzz-openai-key-0123456789abcdef", "anthropic": "test-fuzz-anthropic-key-0123456789abcdef"}
FAST = "{connect: 1s, first_token: 300ms, total: 2s}"
HELLO = ChatRequest.from_prompt("hello", max_tokens=50)


# --- providers built from YAML, each pointed at a fake --------------------------------------------------------


@dataclass
class Upstream:
    kind: str  # openai | anthropic
    provider: Provider
    fake: Any  # OpenAIFake | AnthropicFake

    async def complete(self, request: ChatRequest = HELLO) -> ChatResponse:
        return await self.provider.complete(request, "m-1")

    async def fails(self, *replies: Any) -> UpstreamError:
        """Script `replies`, make one call, and return the `UpstreamError` it raised (never anything else)."""
        self.fake.script(*replies)
        with pytest.raises(UpstreamError) as caught:
            await self.complete()
        error = caught.value
        assert error.provider == "up"
        assert KEYS[self.kind] not in str(error)
        return error


def provider_yaml(kind: str, base_url: str) -> str:
    return (
        "version: 1\n"
        "providers:\n"
        f"  up: {{type: {kind}, base_url: '{base_url}', api_key: '{KEYS[kind]}', timeout: {FAST}}}\n"
        "models:\n"
        "  default: {targets: [{provider: up, model: m-1}]}\n"
    )


@pytest.fixture
async def make_upstream(start_fake) -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    built: list[Provider] = []

    async def make(kind: str) -> Upstream:
        fake = await start_fake(OpenAIFake(api_key=KEYS[kind]) if kind == "openai" else AnthropicFake())
        config = load_config_text(provider_yaml(kind, fake.base_url), env={})
        provider = build_provider(config.providers["up"], default_max_tokens=100)
        built.append(provider)
        return Upstream(kind, provider, fake)

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture(params=["openai", "anthropic"])
async def up(request: pytest.FixtureRequest, make_upstream) -> Upstream:
    return await make_upstream(request.param)


@pytest.fixture
async def oai(make_upstream) -> Upstream:
    return await make_upstream("openai")


@pytest.fixture
async def claude(make_upstream) -> Upstream:
    return await make_upstream("anthropic")


def completion(message: Any = None, *, finish_reason: Any = "stop", **top: Any) -> dict[str, Any]:
    """An OpenAI `chat.completion` body; `message` replaces the default one, `top` any top-level field."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fuzz",
        "object": "chat.completion",
        "model": "m-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"} if message is None else message,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    body.update(top)
    return body


def anthropic_message(**top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_fuzz",
        "type": "message",
        "role": "assistant",
        "model": "m-1",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    body.update(top)
    return body


def raw(body: bytes, **options: Any) -> Reply:
    return Reply(body=body, content_type=options.pop("content_type", "application/json"), **options)


DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError, not ValueError
TOOL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


# --- OpenAI: fields missing, null or of the wrong type ----------------------------------------------------------

OPENAI_MALFORMED = {
    "choices-empty": (completion(choices=[]), "no `choices`"),
    "choices-object": (completion(choices={"0": {}}), "no `choices`"),
    "choice-number": (completion(choices=[7]), "no `choices`"),
    "message-null": (completion(choices=[{"index": 0, "message": None, "finish_reason": "stop"}]), "no `message`"),
    "message-missing": (completion(choices=[{"index": 0, "finish_reason": "stop"}]), "no `message`"),
    "message-string": (completion("hi"), "`choices[0].message` is a string"),
    "content-number": (completion({"role": "assistant", "content": 42}), "`content` is an integer"),
    "content-object": (completion({"role": "assistant", "content": {"text": "hi"}}), "`content` is an object"),
    "content-part-number": (completion({"role": "assistant", "content": [1]}), "`content[0]` is an integer"),
    "content-part-text-number": (completion({"content": [{"type": "text", "text": 5}]}), "`content[0].text` is a"),
    "refusal-number": (completion({"role": "assistant", "content": None, "refusal": 3}), "`refusal` is an integer"),
    "tool-calls-object": (completion({"content": None, "tool_calls": {"0": TOOL}}), "`tool_calls` is an object"),
    "tool-call-string": (completion({"content": None, "tool_calls": ["f()"]}), "`tool_calls[0]` is a string"),
    "tool-call-no-function": (completion({"tool_calls": [{"id": "c", "type": "function"}]}), "no `function`"),
    "tool-call-no-name": (completion({"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}), "no function"),
    "tool-arguments-number": (
        completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 5}}]}),
        "`tool_calls[0].function.arguments` is an integer",
    ),
    "body-list": ([completion()], "not a JSON object"),
    "body-null": (None, "not a JSON object"),
    "body-string": ("chat", "not a JSON object"),
}


@pytest.mark.parametrize("case", list(OPENAI_MALFORMED), ids=list(OPENAI_MALFORMED))
async def test_openai_reply_of_the_wrong_shape_is_malformed_and_names_the_part(oai: Upstream, case: str) -> None:
    body, names = OPENAI_MALFORMED[case]
    error = await oai.fails(raw(json.dumps(body).encode()))
    assert isinstance(error, UpstreamProtocolError), error
    assert names in error.message
    assert error.status == 200


OPENAI_UNREADABLE = {
    "empty": (b"", "the response body is empty"),
    "html": (b"<html><body>Bad gateway</body></html>", "not valid JSON: <html>"),
    "truncated": (json.dumps(completion()).encode()[:40], "not valid JSON"),
    "not-utf8": (json.dumps(completion()).encode().replace(b'"hi"', b'"h\xffi"'), "not valid UTF-8"),
    "deeply-nested": (DEEP, "nested too deeply"),
    "5000-digit-number": (b'{"choices": [], "usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}", "a number too long"),
}


@pytest.mark.parametrize("case", list(OPENAI_UNREADABLE), ids=list(OPENAI_UNREADABLE))
async def test_openai_unreadable_body_is_malformed(oai: Upstream, case: str) -> None:
    body, says = OPENAI_UNREADABLE[case]
    error = await oai.fails(raw(body, content_type="text/html" if case == "html" else "application/json"))
    assert isinstance(error, UpstreamProtocolError), error
    assert says in error.message
    assert len(error.message) < 400  # an excerpt, not the body


async def test_openai_replies_that_are_odd_but_whole_are_answers(oai: Upstream) -> None:
    """Absent and null optional fields, an unknown finish reason, an object for arguments, a byte order mark."""
    oai.fake.script(
        raw(json.dumps(completion(finish_reason="brand_new_reason", usage=None)).encode()),
        raw(json.dumps(completion({"role": "assistant", "content": None, "tool_calls": [TOOL]})).encode()),
        raw(json.dumps(completion(choices=[{"index": 0, "finish_reason": "content_filter"}])).encode()),
        raw(
            json.dumps(
                completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]})
            ).encode()
        ),
        raw(b"\xef\xbb\xbf" + json.dumps(completion()).encode()),
    )
    first = await oai.complete()
    assert (first.text, first.finish_reason, first.usage) == ("hi", "stop", None)
    tools = await oai.complete()
    assert tools.text is None and [(c.name, json.loads(c.arguments)) for c in tools.tool_calls] == [("f", {"a": 1})]
    filtered = await oai.complete()
    assert (filtered.text, filtered.finish_reason) == (None, "content_filter")
    as_object = await oai.complete()
    assert json.loads(as_object.tool_calls[0].arguments) == {"a": 1}
    assert (await oai.complete()).text == "hi"


async def test_openai_tool_arguments_that_are_not_json_pass_through(oai: Upstream) -> None:
    """A model can write broken JSON; that is the model's answer, not a broken reply: the client sees it as is."""
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
    oai.fake.script(raw(json.dumps(completion({"content": None, "tool_calls": [bad]})).encode()))
    response = await oai.complete()
    assert response.tool_calls[0].arguments == '{"a": '


@pytest.mark.parametrize("choices", [None, [], "none"], ids=["null", "empty", "string"])
async def test_an_error_body_at_200_wins_over_missing_choices(oai: Upstream, choices: Any) -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    error = await oai.fails(Reply(json={**body, "choices": choices}))
    assert isinstance(error, UpstreamRateLimited)
    assert error.message == "Rate limit reached"


# --- Anthropic: the same, in its shapes ------------------------------------------------------------------------

ANTHROPIC_MALFORMED = {
    "content-null": (anthropic_message(content=None), "no `content` list"),
    "content-string": (anthropic_message(content="hi"), "no `content` list"),
    "block-number": (anthropic_message(content=[1]), "a content block is not an object"),
    "text-number": (anthropic_message(content=[{"type": "text", "text": 5}]), "a text block without text"),
    "tool-input-string": (
        anthropic_message(content=[{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]),
        "tool_use block without id, name and input object",
    ),
    "stop-reason-number": (anthropic_message(stop_reason=5), "stop_reason is not a string"),
    "body-list": ([anthropic_message()], "no `content` list"),
}


@pytest.mark.parametrize("case", list(ANTHROPIC_MALFORMED), ids=list(ANTHROPIC_MALFORMED))
async def test_anthropic_reply_of_the_wrong_shape_is_malformed_and_names_the_part(claude: Upstream, case: str) -> None:
    body, names = ANTHROPIC_MALFORMED[case]
    error = await claude.fails(raw(json.dumps(body).encode()))
    assert isinstance(error, UpstreamProtocolError), error
    assert names in error.message


# A usage that is not one loses only the usage: the answer was generated and paid for, so it is kept, and the
# rate limiter keeps its estimate; a warning names the field. (A count written as a whole float, `12.0`, is a count.)
OPENAI_BAD_USAGE = {
    "usage-string": (completion(usage={"prompt_tokens": "3", "completion_tokens": 2}), '`usage.prompt_tokens` is "3"'),
    "usage-negative": (completion(usage={"prompt_tokens": 3, "completion_tokens": -2}), "completion_tokens` is -2"),
    "usage-float": (completion(usage={"prompt_tokens": 3.5}), "`usage.prompt_tokens` is 3.5"),
    "usage-bool": (completion(usage={"prompt_tokens": True}), "`usage.prompt_tokens` is a boolean"),
    "usage-list": (completion(usage=[3, 2]), "`usage` is an array"),
    "cached-negative": (
        completion(usage={"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": -1}}),
        "`usage.prompt_tokens_details.cached_tokens` is -1",
    ),
}
ANTHROPIC_BAD_USAGE = {
    "usage-string": (anthropic_message(usage={"input_tokens": "3", "output_tokens": 2}), '`usage.input_tokens` is "3"'),
    "usage-negative": (
        anthropic_message(usage={"input_tokens": 3, "output_tokens": -2}),
        "`usage.output_tokens` is -2",
    ),
    "usage-list": (anthropic_message(usage=[1]), "`usage` is an array, not an object"),
}


@pytest.mark.parametrize("case", list(OPENAI_BAD_USAGE), ids=list(OPENAI_BAD_USAGE))
async def test_an_openai_answer_with_a_bad_usage_is_kept_without_its_usage(oai: Upstream, case: str, caplog) -> None:
    body, names = OPENAI_BAD_USAGE[case]
    oai.fake.script(raw(json.dumps(body).encode()))
    answer = await oai.complete()
    assert (answer.text, answer.usage) == ("hi", None)
    assert any(names in r.getMessage() and "usage is ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", list(ANTHROPIC_BAD_USAGE), ids=list(ANTHROPIC_BAD_USAGE))
async def test_an_anthropic_answer_with_a_bad_usage_is_kept_without_its_usage(claude: Upstream, case, caplog) -> None:
    body, names = ANTHROPIC_BAD_USAGE[case]
    claude.fake.script(raw(json.dumps(body).encode()))
    answer = await claude.complete()
    assert answer.usage is None and answer.text
    assert any(names in r.getMessage() and "usage is ignored" in r.getMessage() for r in caplog.records)


async def test_token_counts_written_as_whole_floats_are_counts(oai: Upstream, claude: Upstream) -> None:
    oai.fake.script(raw(json.dumps(completion(usage={"prompt_tokens": 3.0, "completion_tokens": 2.0})).encode()))
    usage = (await oai.complete()).usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (3, 2)
    assert type(usage.input_tokens) is int
    claude.fake.script(raw(json.dumps(anthropic_message(usage={"input_tokens": 4.0, "output_tokens": 1.0})).encode()))
    usage = (await claude.complete()).usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (4, 1)


ANTHROPIC_UNREADABLE = {
    "empty": (b"", "the reply is empty"),
    "html": (b"<html>oops</html>", "the reply is not JSON: <html>"),
    "not-utf8": (json.dumps(anthropic_message()).encode().replace(b'"hi"', b'"h\xffi"'), "not valid UTF-8"),
    "deeply-nested": (DEEP, "nested too deeply"),
    "5000-digit-number": (b'{"usage": {"input_tokens": ' + b"9" * 5000 + b"}}", "a number too long"),
}


@pytest.mark.parametrize("case", list(ANTHROPIC_UNREADABLE), ids=list(ANTHROPIC_UNREADABLE))
async def test_anthropic_unreadable_body_is_malformed(claude: Upstream, case: str) -> None:
    body, says = ANTHROPIC_UNREADABLE[case]
    error = await claude.fails(raw(body))
    assert isinstance(error, UpstreamProtocolError), error
    assert says in error.message


async def test_anthropic_error_body_at_200_without_its_type_is_still_the_error(claude: Upstream) -> None:
    error = await claude.fails(Reply(json={"error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert isinstance(error, UpstreamOverloaded)
    assert error.message == "Overloaded"


# --- statuses ---------------------------------------------------------------------------------------------------

STATUSES = {
    400: UpstreamBadRequest,
    401: UpstreamAuthError,
    402: UpstreamPermissionError,
    403: UpstreamPermissionError,
    404: UpstreamNotFound,
    408: UpstreamServerError,
    409: UpstreamServerError,
    413: UpstreamBadRequest,
    422: UpstreamBadRequest,
    429: UpstreamRateLimited,
    500: UpstreamServerError,
    502: UpstreamServerError,
    503: UpstreamOverloaded,
    504: UpstreamServerError,
    529: UpstreamOverloaded,
    301: UpstreamProtocolError,
    302: UpstreamProtocolError,
    307: UpstreamProtocolError,
}


@pytest.mark.parametrize("body", ["api-error", "empty", "html"])
async def test_every_status_is_classified_whatever_its_body(up: Upstream, body: str) -> None:
    """The status decides the class (a redirect is a protocol error: the base_url is wrong, and it is not followed;
    the Anthropic codec used to fail a 3xx fast as a bad request)."""
    for status, error_class in STATUSES.items():
        if body == "api-error":
            reply: Any = ErrorReply(status, type="api_error", message=f"said {status}")
        elif body == "empty":
            reply = Reply(status=status)
        else:
            reply = html_error(status, b"<html><h1>nope</h1></html>")
        error = await up.fails(reply)
        assert type(error) is error_class, (status, body, error)
        assert error.status == status
        if body == "api-error":
            assert f"said {status}" in error.message
        else:
            assert f"HTTP {status}" in error.message
        if 300 <= status < 400:
            assert "a redirect, not followed" in error.message


# The fakes send rate-limit reset headers, which count on a 429 when `retry-after` says nothing usable.
NO_RESET_HEADERS: dict[str, str | None] = {
    name: None
    for name in (
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    )
}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "IN_TEN_MINUTES"}, pytest.approx(600, abs=30)),  # an HTTP date, made when the test runs
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after": "soon"}, None),
        ({"retry-after": "1e3"}, None),  # not how HTTP writes a number
        ({"retry-after": "-5"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "99999999999"}, MAX_RETRY_AFTER),  # ~3,000 years: cut to a day
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER),
        ({"retry-after-ms": "1e308"}, None),
        ({"retry-after-ms": "99999999999999"}, MAX_RETRY_AFTER),
    ],
    ids=lambda value: str(value)[:40],
)
async def test_retry_after_in_any_form_is_read_or_ignored_never_absurd(up: Upstream, header, expected) -> None:
    if header.get("retry-after") == "IN_TEN_MINUTES":
        header = {"retry-after": formatdate(time.time() + 600, usegmt=True)}
    for status in (429, 503, 529):
        error = await up.fails(ErrorReply(status, headers={**NO_RESET_HEADERS, **header}))
        assert error.retry_after == expected, (status, header)


# --- transport: encodings, sizes, stalls ------------------------------------------------------------------------


async def test_gzip_claimed_but_not_sent_is_malformed_not_a_dropped_connection(up: Upstream) -> None:
    body = json.dumps(completion() if up.kind == "openai" else anthropic_message()).encode()
    error = await up.fails(raw(body, headers={"content-encoding": "gzip"}))
    assert isinstance(error, UpstreamProtocolError)
    assert "content-encoding" in error.message and "gzip" in error.message
    assert (await up.complete()).text  # the next call works: nothing was left half-read


async def test_a_reply_over_the_size_bound_is_malformed(up: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "MAX_REPLY_BYTES", 4096)
    padded = json.dumps(completion() if up.kind == "openai" else anthropic_message()).encode() + b" " * 8192
    error = await up.fails(raw(padded))
    assert isinstance(error, UpstreamProtocolError)
    assert "larger than" in error.message
    error = await up.fails(ModelReply(text=("x" * 9000,)))  # a well-formed answer, just too long
    assert isinstance(error, UpstreamProtocolError)
    assert (await up.complete()).text  # and the provider still works


async def test_an_enormous_error_body_is_cut_and_still_classified(up: Upstream, monkeypatch) -> None:
    monkeypatch.setattr(transport, "MAX_ERROR_BODY_BYTES", 2048)
    error = await up.fails(html_error(503, b"<html>" + b"x" * 100_000 + b"</html>"))
    assert isinstance(error, UpstreamOverloaded)
    assert "HTTP 503 with a non-JSON body: <html>xxx" in error.message
    assert (await up.complete()).text


async def test_a_body_that_stalls_after_the_head_times_out_saying_so(up: Upstream) -> None:
    body = json.dumps(completion() if up.kind == "openai" else anthropic_message()).encode()
    error = await up.fails(raw(body, delay_body=1.0))
    assert isinstance(error, UpstreamTimeout)
    assert "stalled: no data for 0.3s" in error.message


async def test_a_body_cut_short_is_a_connection_error(up: Upstream) -> None:
    body = json.dumps(completion() if up.kind == "openai" else anthropic_message()).encode()
    error = await up.fails(raw(body, cut_body_after=20))
    assert error.retryable and "closed the connection mid-reply" in error.message


async def test_a_wrong_content_type_on_a_good_body_is_still_an_answer(up: Upstream) -> None:
    body = json.dumps(completion() if up.kind == "openai" else anthropic_message()).encode()
    up.fake.script(raw(body, content_type="text/plain"), raw(body, content_type="text/event-stream"))
    assert (await up.complete()).text == "hi"
    assert (await up.complete()).text == "hi"


# --- through the engine and the HTTP fronts ---------------------------------------------------------------------

ENGINE_YAML = """
version: 1
providers:
  primary: {{type: openai, base_url: '{openai}', api_key: '{openai_key}', timeout: {fast}}}
  backup: {{type: anthropic, base_url: '{anthropic}', api_key: '{anthropic_key}', timeout: {fast}}}
retry: {{max_attempts: 2, initial_backoff: 1ms, max_backoff: 10ms, deadline: 20s}}
models:
  default:
    targets: [{{provider: primary, model: gpt-4o-mini}}, {{provider: backup, model: claude-sonnet-4-5}}]
"""


@pytest.fixture
async def proxy(start_fake) -> AsyncIterator[tuple[str, Any, OpenAIFake, AnthropicFake]]:
    primary = await start_fake(OpenAIFake(api_key=KEYS["openai"]))
    backup = await start_fake(AnthropicFake())
    text = ENGINE_YAML.format(
        openai=primary.base_url,
        openai_key=KEYS["openai"],
        anthropic=backup.base_url,
        anthropic_key=KEYS["anthropic"],
        fast=FAST,
    )
    async with engine_app(text, api_routes=[*openai_api.routes, *anthropic_api.routes]) as (base_url, engine):
        yield base_url, engine, primary, backup


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_a_malformed_reply_is_retried_then_falls_back_through_the_fronts(proxy, front: str) -> None:
    base_url, engine, primary, backup = proxy
    bad = raw(json.dumps(completion({"role": "assistant", "content": 42})).encode())
    primary.script(bad, bad)
    async with aiohttp.ClientSession() as session:
        if front == "openai":
            body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
                status, answer = response.status, await response.json()
            text = answer["choices"][0]["message"]["content"]
        else:
            body = {"model": "default", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{base_url}/v1/messages", json=body) as response:
                status, answer = response.status, await response.json()
            text = answer["content"][0]["text"]
    assert status == 200
    assert text == "Hello from the fake Anthropic."
    assert len(primary.requests) == 2 and len(backup.requests) == 1
    metrics = engine.metrics_snapshot()
    assert metrics["provider_metrics"]["primary"]["error_count"] == 2
    assert metrics["retries"] == 1 and metrics["fallbacks"] == 1


async def test_the_attempts_name_the_part_that_was_wrong(proxy) -> None:
    _, engine, primary, backup = proxy
    bad = raw(json.dumps(completion({"role": "assistant", "content": 7})).encode())
    primary.script(bad, bad)
    backup.script(raw(json.dumps(anthropic_message(stop_reason=5)).encode()))
    backup.script(raw(json.dumps(anthropic_message(stop_reason=5)).encode()))
    with pytest.raises(Exception) as caught:
        await engine.complete(HELLO)
    attempts = [(a.target, a.error_kind, a.message) for a in caught.value.attempts]
    assert [(target, kind) for target, kind, _ in attempts] == [
        ("primary/gpt-4o-mini", "malformed"),
        ("primary/gpt-4o-mini", "malformed"),
        ("backup/claude-sonnet-4-5", "malformed"),
        ("backup/claude-sonnet-4-5", "malformed"),
    ]
    assert "`content` is an integer" in attempts[0][2]
    assert "stop_reason is not a string" in attempts[2][2]
    assert "primary/gpt-4o-mini" in str(caught.value) and "backup/claude-sonnet-4-5" in str(caught.value)
