"""End-to-end provider tests: YAML -> `load_config_text` -> `build_provider` -> real codec + aiohttp transport ->
the fake upstreams in tests/fakes, for every HTTP flavour (`openai`; `openai_compatible` as ollama, vllm and
llama.cpp; `anthropic`) and for a `type: python` custom provider.

What is covered (the providers issue's "Done when" list):
1. text and tool calls, whole and streamed (fragmented tool-call arguments reassemble), usage mapped;
2. every HTTP error status through the real codec -> the right `proxy.errors` class, `kind`, status, error
   type/code and upstream request id, and the API key never in the error's text; llama.cpp's own context-overflow
   body is a context-length error;
3. every retry-after form (`retry-after-ms`, `retry-after` seconds and HTTP date, OpenAI Go-duration reset
   headers, Anthropic RFC 3339 reset headers) -> `error.retry_after`;
4. timeouts (first token, total), streams cut, ended early, carrying an error event or a malformed chunk;
5. what goes on the wire, checked against the official SDKs' request types (pydantic `TypeAdapter`);
6. the example custom provider through the same checks.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
from anthropic.types import message_create_params as anthropic_params
from openai.types.chat import completion_create_params as openai_params

from proxy.config import load_config_text
from proxy.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    ErrorKind,
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
    UpstreamTimeout,
)
from proxy.providers.base import Provider
from proxy.providers.registry import build_provider
from proxy.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDef,
    Usage,
)
from tests.fakes import AnthropicFake, ErrorReply, FakeServer, ModelReply, OpenAIFake, Reply, html_error
from tests.fakes import ToolCall as FakeToolCall

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OPENAI_KEY = "test-e2e-openai-key-0123456789abcdef"
ANTHROPIC_KEY = "test-e2e-anthropic-key-0123456789abcdef"
COMPAT_KEY = "local-e2e-key-0123456789"  # vLLM / llama.cpp started with --api-key
FAST_TIMEOUT = "{connect: 1s, first_token: 200ms, total: 1s}"
HELLO = ChatRequest.from_prompt("hello", max_tokens=50)
WEATHER_TOOL = ToolDef(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# --- flavours and the fixture that builds them from YAML --------------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    """One upstream flavour: the provider `type` in the YAML and the fake that plays the server."""

    name: str
    type: str
    persona: str | None  # OpenAIFake persona; None: the Anthropic fake
    model: str
    key: str
    request_id_header: str

    @property
    def anthropic(self) -> bool:
        return self.persona is None

    def new_fake(self, api_key: str | None) -> FakeServer:
        if self.persona is None:
            return AnthropicFake(api_key=api_key)
        return OpenAIFake(self.persona, api_key=api_key)


FLAVOURS: dict[str, Flavour] = {
    "openai": Flavour("openai", "openai", "openai", "gpt-4o-mini", OPENAI_KEY, "x-request-id"),
    "ollama": Flavour("ollama", "openai_compatible", "ollama", "llama3.2", COMPAT_KEY, "x-request-id"),
    "vllm": Flavour("vllm", "openai_compatible", "vllm", "Qwen/Qwen2.5-7B-Instruct", COMPAT_KEY, "x-request-id"),
    "llamacpp": Flavour("llamacpp", "openai_compatible", "llamacpp", "local-gguf", COMPAT_KEY, "x-request-id"),
    "anthropic": Flavour("anthropic", "anthropic", None, "claude-sonnet-4-5", ANTHROPIC_KEY, "request-id"),
}
OPENAI_WIRE = ("openai", "ollama", "vllm", "llamacpp")
COMPAT = ("ollama", "vllm", "llamacpp")


@dataclass
class Upstream:
    """A provider built from YAML, and the fake it talks to."""

    flavour: Flavour
    provider: Provider
    fake: Any  # OpenAIFake | AnthropicFake

    @property
    def model(self) -> str:
        return self.flavour.model

    async def complete(self, request: ChatRequest = HELLO) -> ChatResponse:
        return await self.provider.complete(request, self.model)

    async def stream(self, request: ChatRequest = HELLO) -> list[StreamChunk]:
        return [chunk async for chunk in self.provider.stream(request, self.model)]

    async def stream_until_error(self, request: ChatRequest = HELLO) -> tuple[list[StreamChunk], UpstreamError]:
        """The chunks yielded before the stream raised, and what it raised (fails the test if it ends cleanly)."""
        chunks: list[StreamChunk] = []
        with pytest.raises(UpstreamError) as caught:
            async for chunk in self.provider.stream(request, self.model):
                chunks.append(chunk)
        return chunks, caught.value


def provider_yaml(flavour: Flavour, base_url: str, *, with_key: bool, timeouts: str, extra: str = "") -> str:
    key_line = "    api_key: ${E2E_API_KEY}\n" if with_key else ""
    return (
        "version: 1\n"
        "providers:\n"
        "  upstream:\n"
        f"    type: {flavour.type}\n"
        f"    base_url: {base_url}\n"
        f"{key_line}"
        f"    timeout: {timeouts}\n"
        f"{extra}"
        "models:\n"
        "  default:\n"
        f"    targets: [{{provider: upstream, model: {json.dumps(flavour.model)}}}]\n"
    )


MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream(start_fake) -> AsyncIterator[MakeUpstream]:
    """`await make_upstream("vllm", with_key=True, timeouts=..., extra=...)`: a started fake and a provider built
    from YAML pointing at it (closed at teardown, before the fake stops)."""
    built: list[Provider] = []

    async def make(name: str, *, with_key: bool = True, timeouts: str = FAST_TIMEOUT, extra: str = "") -> Upstream:
        flavour = FLAVOURS[name]
        fake = await start_fake(flavour.new_fake(flavour.key if with_key else None))
        text = provider_yaml(flavour, fake.base_url, with_key=with_key, timeouts=timeouts, extra=extra)
        config = load_config_text(text, env={"E2E_API_KEY": flavour.key})
        provider = build_provider(config.providers["upstream"], default_max_tokens=config.defaults.max_tokens)
        built.append(provider)
        return Upstream(flavour, provider, fake)

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture(params=list(FLAVOURS))
async def up(request: pytest.FixtureRequest, make_upstream: MakeUpstream) -> Upstream:
    """The default upstream of each flavour in turn."""
    return await make_upstream(request.param)


# --- shared checks ------------------------------------------------------------------------------------------------


def stream_text(chunks: Iterable[StreamChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def finish_reasons(chunks: Iterable[StreamChunk]) -> list[str]:
    return [chunk.finish_reason for chunk in chunks if chunk.finish_reason is not None]


def stream_usage(chunks: Iterable[StreamChunk]) -> Usage | None:
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
    return usages[-1] if usages else None


def assemble_tool_calls(chunks: Iterable[StreamChunk]) -> list[ToolCall]:
    """Reassemble streamed `ToolCallDelta`s the way a client does: by index, id/name from the first fragment."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (delta.id or "")
            call["name"] = call["name"] or (delta.name or "")
            call["arguments"] += delta.arguments
    return [ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]


def check_text_response(response: ChatResponse, text: str, *, provider: str, model: str) -> None:
    assert response.text == text
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"
    assert response.provider == provider
    assert response.model == model
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.latency_ms > 0


def check_text_stream(chunks: list[StreamChunk], text: str) -> None:
    assert stream_text(chunks) == text
    assert finish_reasons(chunks) == ["stop"]
    content = [i for i, chunk in enumerate(chunks) if chunk.is_content]
    finished = next(i for i, chunk in enumerate(chunks) if chunk.finish_reason)
    assert content and max(content) < finished  # content first, then the end
    assert stream_usage(chunks) is not None


def frames_through(fake: Any, reply: ModelReply, marker: str) -> int:
    """How many SSE frames the fake sends up to and including the first one carrying `marker` (for fault positions,
    which differ per persona: role chunks, pings...)."""
    frames = fake.render_events(reply, {"stream_options": {"include_usage": True}})
    return next(i for i, frame in enumerate(frames) if marker.encode() in frame) + 1


def check_secret_free(error: BaseException, key: str) -> None:
    assert key not in str(error)
    assert key not in repr(error)
    if isinstance(error, UpstreamError):
        assert key not in error.describe()


# --- 1. text, tool calls, usage ----------------------------------------------------------------------------------


async def test_complete_text_maps_text_usage_and_ids(up: Upstream) -> None:
    up.fake.script(
        ModelReply(
            text=("Bonjour", " le monde"),
            input_tokens=21,
            output_tokens=8,
            cached_tokens=5,
            cache_creation_tokens=3,
            headers={up.flavour.request_id_header: "req_e2e_text"},
        )
    )
    response = await up.complete()
    check_text_response(response, "Bonjour le monde", provider="upstream", model=up.model)
    assert response.request_id == "req_e2e_text"
    assert response.id
    if up.flavour.anthropic:  # Anthropic's input_tokens excludes the cache reads and writes; ours includes them
        assert response.usage == Usage(
            input_tokens=21 + 5 + 3, output_tokens=8, cached_input_tokens=5, cache_creation_input_tokens=3
        )
    else:
        assert response.usage == Usage(input_tokens=21, output_tokens=8, cached_input_tokens=5)


async def test_stream_text_chunks_finish_and_usage(up: Upstream) -> None:
    up.fake.script(ModelReply(text=("One", " two", " three"), input_tokens=30, output_tokens=4))
    chunks = await up.stream()
    check_text_stream(chunks, "One two three")
    assert [chunk.text for chunk in chunks if chunk.text] == ["One", " two", " three"]  # arrives piece by piece
    assert stream_usage(chunks) == Usage(input_tokens=30, output_tokens=4)


async def test_complete_tool_call_with_tools_in_the_request(up: Upstream) -> None:
    up.fake.script(ModelReply(tool_calls=(FakeToolCall("get_weather", {"city": "Paris"}, id="call_w1"),)))
    request = ChatRequest.from_prompt("Weather in Paris?", tools=(WEATHER_TOOL,), max_tokens=64)
    response = await up.complete(request)
    assert response.text is None
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in response.tool_calls] == [("call_w1", "get_weather")]
    assert json.loads(response.tool_calls[0].arguments) == {"city": "Paris"}
    assert response.usage is not None
    sent = up.fake.last_request.json["tools"]
    names = [tool["name"] if up.flavour.anthropic else tool["function"]["name"] for tool in sent]
    assert names == ["get_weather"]


async def test_streamed_parallel_tool_calls_reassemble_from_fragments(up: Upstream) -> None:
    up.fake.script(
        ModelReply(
            text=("Checking.",),
            tool_calls=(
                FakeToolCall("get_weather", '{"city": "Paris"}', id="call_a", fragments=['{"ci', 'ty": "Pa', 'ris"}']),
                FakeToolCall("get_time", {"zone": "Europe/Paris"}, id="call_b", fragments=4),
            ),
        )
    )
    request = ChatRequest.from_prompt("Weather and time?", tools=(WEATHER_TOOL, ToolDef("get_time")), max_tokens=64)
    chunks = await up.stream(request)
    calls = assemble_tool_calls(chunks)
    assert [(c.id, c.name) for c in calls] == [("call_a", "get_weather"), ("call_b", "get_time")]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert json.loads(calls[1].arguments) == {"zone": "Europe/Paris"}
    assert stream_text(chunks) == "Checking."
    assert finish_reasons(chunks) == ["tool_calls"]
    assert stream_usage(chunks) is not None
    if up.flavour.persona != "ollama":  # Ollama sends whole calls in one chunk; the others really fragment
        fragments = [d.arguments for c in chunks for d in c.tool_calls if d.index == 0 and d.arguments]
        assert fragments == ['{"ci', 'ty": "Pa', 'ris"}']


async def test_anthropic_tool_use_after_text_is_tool_call_zero(make_upstream: MakeUpstream) -> None:
    """Anthropic numbers content blocks (text = 0, tool_use = 1); tool calls are numbered among tool calls."""
    up = await make_upstream("anthropic")
    reply = ModelReply(
        text=("Let me look.",), tool_calls=(FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_1"),)
    )
    up.fake.script(reply, reply)
    request = ChatRequest.from_prompt("Weather in Oslo?", tools=(WEATHER_TOOL,), max_tokens=64)
    response = await up.complete(request)
    assert response.text == "Let me look."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Oslo"})
    ]
    chunks = await up.stream(request)
    assert {d.index for c in chunks for d in c.tool_calls} == {0}
    assert assemble_tool_calls(chunks) == [ToolCall("toolu_1", "get_weather", '{"city":"Oslo"}')]
    assert finish_reasons(chunks) == ["tool_calls"]


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_content_filtered_reply_finishes_with_content_filter(up: Upstream, mode: str) -> None:
    """A 200 reply stopped by the provider's filter: OpenAI `content_filter`, Anthropic `refusal`."""
    native = "refusal" if up.flavour.anthropic else "content_filter"
    up.fake.script(ModelReply(text=("I can't",), finish_reason=native))
    if mode == "complete":
        assert (await up.complete()).finish_reason == "content_filter"
    else:
        assert finish_reasons(await up.stream()) == ["content_filter"]


# --- 2. error classes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    id: str
    status: int
    error_class: type[UpstreamError]
    kind: ErrorKind
    type: str | None = None  # the body's error type; None: the fake's default for the status
    code: str | None = None
    message: str | None = None  # None: the fake's default; the key is appended to it (an upstream echoing it)
    html: bool = False  # a non-JSON gateway page instead of an API error body


_CONTEXT_OPENAI = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens. "
    "Please reduce the length of the messages."
)
OPENAI_ERROR_CASES = [
    ErrorCase("400", 400, UpstreamBadRequest, ErrorKind.BAD_REQUEST, "invalid_request_error", message="Bad 'stop'."),
    ErrorCase(
        "400-context",
        400,
        ContextLengthExceeded,
        ErrorKind.CONTEXT_LENGTH,
        "invalid_request_error",
        "context_length_exceeded",
        _CONTEXT_OPENAI,
    ),
    ErrorCase(
        "400-content-filter",
        400,
        ContentFiltered,
        ErrorKind.CONTENT_FILTER,
        "invalid_request_error",
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
    ),
    ErrorCase("401", 401, UpstreamAuthError, ErrorKind.AUTH, message="Incorrect API key provided:"),
    # never from OpenAI itself; OpenAI-compatible servers (OpenRouter, DeepSeek) send it when the account cannot pay
    ErrorCase("402", 402, UpstreamPermissionError, ErrorKind.PERMISSION, message="Insufficient credits."),
    ErrorCase("403", 403, UpstreamPermissionError, ErrorKind.PERMISSION),
    ErrorCase("404", 404, UpstreamNotFound, ErrorKind.NOT_FOUND),
    ErrorCase("408", 408, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("409", 409, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("429", 429, UpstreamRateLimited, ErrorKind.RATE_LIMITED),
    ErrorCase("500", 500, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("502-html", 502, UpstreamServerError, ErrorKind.SERVER, html=True),
    ErrorCase("503", 503, UpstreamOverloaded, ErrorKind.OVERLOADED),
    ErrorCase("529", 529, UpstreamOverloaded, ErrorKind.OVERLOADED),
]
ANTHROPIC_ERROR_CASES = [
    ErrorCase("400", 400, UpstreamBadRequest, ErrorKind.BAD_REQUEST, message="messages: text content blocks"),
    ErrorCase(
        "400-prompt-too-long",
        400,
        ContextLengthExceeded,
        ErrorKind.CONTEXT_LENGTH,
        "invalid_request_error",
        message="prompt is too long: 210266 tokens > 200000 maximum",
    ),
    ErrorCase(
        "400-exceed-context-limit",
        400,
        ContextLengthExceeded,
        ErrorKind.CONTEXT_LENGTH,
        "invalid_request_error",
        message="input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000",
    ),
    ErrorCase("401", 401, UpstreamAuthError, ErrorKind.AUTH, message="invalid x-api-key"),
    ErrorCase("402", 402, UpstreamPermissionError, ErrorKind.PERMISSION, message="Your credit balance is too low"),
    ErrorCase("403", 403, UpstreamPermissionError, ErrorKind.PERMISSION),
    ErrorCase("404", 404, UpstreamNotFound, ErrorKind.NOT_FOUND),
    ErrorCase("408", 408, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("409", 409, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("413", 413, UpstreamBadRequest, ErrorKind.BAD_REQUEST),
    ErrorCase("429", 429, UpstreamRateLimited, ErrorKind.RATE_LIMITED),
    ErrorCase("500", 500, UpstreamServerError, ErrorKind.SERVER),
    ErrorCase("502-html", 502, UpstreamServerError, ErrorKind.SERVER, html=True),
    ErrorCase("503", 503, UpstreamOverloaded, ErrorKind.OVERLOADED),
    ErrorCase("529", 529, UpstreamOverloaded, ErrorKind.OVERLOADED),
]
ERROR_PARAMS = [
    pytest.param(flavour, case, id=f"{flavour}-{case.id}")
    for flavour in FLAVOURS
    for case in (ANTHROPIC_ERROR_CASES if flavour == "anthropic" else OPENAI_ERROR_CASES)
]


def gateway_page(status: int, key: str) -> bytes:
    # A CDN page that (absurdly) echoes the request's key: the error must still not carry it.
    return f"<html><head><title>{status} Bad Gateway</title></head><body>upstream said {key}</body></html>".encode()


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize(("flavour", "case"), ERROR_PARAMS)
async def test_error_status_maps_to_class_kind_and_fields(
    make_upstream: MakeUpstream, flavour: str, case: ErrorCase, mode: str
) -> None:
    up = await make_upstream(flavour)
    key = up.flavour.key
    request_id = f"req_e2e_{case.id}"
    id_header = {up.flavour.request_id_header: request_id}
    if case.html:
        reply: ErrorReply | Reply = html_error(case.status, body=gateway_page(case.status, key), headers=id_header)
        expected_type = expected_code = None
    else:
        message = f"{case.message or 'Upstream failure'} (key {key})"
        reply = ErrorReply(case.status, type=case.type, code=case.code, message=message, headers=id_header)
        said = up.fake.error_json(reply, id_header)["error"]  # what the persona's body carries
        expected_type = said["type"]
        expected_code = None if up.flavour.anthropic or said.get("code") is None else str(said["code"])
    up.fake.script(reply)

    with pytest.raises(UpstreamError) as caught:
        if mode == "complete":
            await up.complete()
        else:
            await up.stream()
    error = caught.value
    assert type(error) is case.error_class
    assert error.kind is case.kind
    assert (error.provider, error.status) == ("upstream", case.status)
    assert (error.error_type, error.code) == (expected_type, expected_code)
    assert error.request_id == request_id
    check_secret_free(error, key)
    if case.html:
        assert f"{case.status} Bad Gateway" in str(error)  # an excerpt of the page, for whoever reads the logs
    else:
        assert (case.message or "Upstream failure") in str(error)
        assert "***" in str(error)  # the echoed key was blanked out, not the message dropped


async def test_llamacpp_context_overflow_is_context_length(make_upstream: MakeUpstream) -> None:
    """llama.cpp says "context overflow" in `type` (with an integer `code: 400`): it must reroute, not fail fast."""
    up = await make_upstream("llamacpp")
    body = {  # llama.cpp `server-context.cpp` wording (ERROR_TYPE_EXCEED_CONTEXT_SIZE)
        "error": {
            "code": 400,
            "message": "request (13392 tokens) exceeds the available context size (8192 tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 13392,
            "n_ctx": 8192,
        }
    }
    up.fake.script(Reply(status=400, json=body))
    with pytest.raises(UpstreamError) as caught:
        await up.complete()
    assert isinstance(caught.value, ContextLengthExceeded)


async def test_wrong_key_is_an_auth_error_without_the_key(make_upstream: MakeUpstream) -> None:
    """The fake itself rejects the key the provider sends (no scripting): 401 -> auth, and no key in the text."""
    for name in ("openai", "anthropic"):
        flavour = FLAVOURS[name]
        up = await make_upstream(name)
        up.fake.api_key = "some-other-key-entirely"
        with pytest.raises(UpstreamAuthError) as caught:
            await up.complete()
        assert caught.value.status == 401
        check_secret_free(caught.value, flavour.key)


# --- 3. retry-after in every form -----------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


def rfc3339(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


# On OpenAI-wire flavours every case sets both reset headers (None removes the fake's standard ones), so the
# compat personas (which send none) and the `openai` persona (which sends `6m0s` on every reply) see the same.
_NO_RESETS = {"x-ratelimit-reset-requests": None, "x-ratelimit-reset-tokens": None}
RetryCase = tuple[str, int, Callable[[], dict[str, str | None]], Any]  # id, status, headers(), expected retry_after


def exactly(seconds: float) -> Any:
    return pytest.approx(seconds, rel=1e-9)


def about(seconds: float) -> Any:
    """For values computed from a date: one-second resolution, and the clock moves between header and parse."""
    return pytest.approx(seconds, abs=1.5)


OPENAI_RETRY_CASES: list[RetryCase] = [
    ("retry-after-ms", 429, lambda: {**_NO_RESETS, "retry-after-ms": "1500"}, exactly(1.5)),
    ("retry-after-seconds", 429, lambda: {**_NO_RESETS, "retry-after": "7"}, exactly(7.0)),
    ("retry-after-http-date", 429, lambda: {**_NO_RESETS, "retry-after": http_date(30)}, about(30.0)),
    ("ms-beats-seconds", 429, lambda: {**_NO_RESETS, "retry-after-ms": "250", "retry-after": "9"}, exactly(0.25)),
    ("reset-6m0s", 429, lambda: {**_NO_RESETS, "x-ratelimit-reset-requests": "6m0s"}, exactly(360.0)),
    ("reset-1.5s", 429, lambda: {**_NO_RESETS, "x-ratelimit-reset-tokens": "1.5s"}, exactly(1.5)),
    ("reset-20ms", 429, lambda: {**_NO_RESETS, "x-ratelimit-reset-requests": "20ms"}, exactly(0.02)),
    (
        "resets-longest-wins",
        429,
        lambda: {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1m30.5s"},
        exactly(90.5),
    ),
    (
        "retry-after-beats-resets",
        429,
        lambda: {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "6m0s", "retry-after": "2"},
        exactly(2.0),
    ),
    (
        "resets-ignored-on-503",
        503,
        lambda: {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1s"},
        None,
    ),
    ("retry-after-on-503", 503, lambda: {**_NO_RESETS, "retry-after": "3"}, exactly(3.0)),
    ("none", 429, lambda: dict(_NO_RESETS), None),
]
_ANTHROPIC_RESETS = ("requests", "tokens", "input-tokens", "output-tokens")


def anthropic_resets(**seconds: float) -> dict[str, str | None]:
    """All four `anthropic-ratelimit-*-reset` headers: the given ones `now + s`, the others removed."""
    return {
        f"anthropic-ratelimit-{kind}-reset": rfc3339(seconds[kind.replace("-", "_")])
        if kind.replace("-", "_") in seconds
        else None
        for kind in _ANTHROPIC_RESETS
    }


ANTHROPIC_RETRY_CASES: list[RetryCase] = [
    ("retry-after-ms", 429, lambda: {**anthropic_resets(), "retry-after-ms": "1500"}, exactly(1.5)),
    ("retry-after-seconds", 429, lambda: {**anthropic_resets(), "retry-after": "7"}, exactly(7.0)),
    ("retry-after-http-date", 429, lambda: {**anthropic_resets(), "retry-after": http_date(30)}, about(30.0)),
    (
        "ms-beats-seconds",
        429,
        lambda: {**anthropic_resets(), "retry-after-ms": "250", "retry-after": "9"},
        exactly(0.25),
    ),
    (
        "reset-rfc3339",
        429,
        lambda: anthropic_resets(requests=5, tokens=20, input_tokens=2, output_tokens=0),
        about(20.0),
    ),
    ("reset-only-one", 429, lambda: anthropic_resets(output_tokens=12), about(12.0)),
    ("retry-after-beats-resets", 429, lambda: {**anthropic_resets(tokens=40), "retry-after": "4"}, exactly(4.0)),
    ("resets-ignored-on-529", 529, lambda: anthropic_resets(requests=5, tokens=20), None),
    ("retry-after-on-529", 529, lambda: {**anthropic_resets(), "retry-after": "3"}, exactly(3.0)),
    ("none", 429, anthropic_resets, None),
]
RETRY_PARAMS = [
    pytest.param(flavour, status, headers, expected, id=f"{flavour}-{case_id}")
    for flavour in FLAVOURS
    for case_id, status, headers, expected in (ANTHROPIC_RETRY_CASES if flavour == "anthropic" else OPENAI_RETRY_CASES)
]


@pytest.mark.parametrize(("flavour", "status", "headers", "expected"), RETRY_PARAMS)
async def test_retry_after_every_form(
    make_upstream: MakeUpstream,
    flavour: str,
    status: int,
    headers: Callable[[], dict[str, str | None]],
    expected: float | None,
) -> None:
    up = await make_upstream(flavour)
    up.fake.script(ErrorReply(status, headers=headers()))
    with pytest.raises(UpstreamError) as caught:
        await up.complete()
    assert caught.value.status == status
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == expected


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_retry_after_on_a_streamed_request(make_upstream: MakeUpstream, flavour: str) -> None:
    up = await make_upstream(flavour)
    resets = _NO_RESETS if flavour == "openai" else anthropic_resets()
    up.fake.script(ErrorReply(429, headers={**resets, "retry-after": http_date(45)}))
    _, error = await up.stream_until_error()
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == about(45)


# --- 4. timeouts and broken streams -----------------------------------------------------------------------------


async def expect_timeout(call: Awaitable[Any], phase: str, *, within: float) -> UpstreamTimeout:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        await call
    elapsed = time.monotonic() - started
    assert caught.value.phase == phase
    assert caught.value.kind is ErrorKind.TIMEOUT and caught.value.provider == "upstream"
    assert elapsed < within, f"took {elapsed:.2f}s"
    return caught.value


async def test_first_token_timeout_when_the_reply_head_is_late(up: Upstream) -> None:
    up.fake.script(ModelReply(text=("late",), delay_headers=0.6), ModelReply(text=("late",), delay_headers=0.6))
    await expect_timeout(up.complete(), "first_token", within=0.5)
    await expect_timeout(up.stream(), "first_token", within=0.5)


async def test_first_token_timeout_when_the_first_byte_is_late(up: Upstream) -> None:
    """The head arrives at once but the body (the first SSE event) does not."""
    up.fake.script(ModelReply(text=("late",), delay_body=0.6), ModelReply(text=("late",), delay_body=0.6))
    await expect_timeout(up.stream(), "first_token", within=0.5)
    await expect_timeout(up.complete(), "first_token", within=0.5)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
async def test_total_timeout_on_a_slow_stream(make_upstream: MakeUpstream, flavour: str) -> None:
    # Each event arrives within the 200ms idle limit, but the whole stream would take ~1.2s: total (400ms) fires.
    up = await make_upstream(flavour, timeouts="{connect: 1s, first_token: 200ms, total: 400ms}")
    up.fake.script(ModelReply(text=tuple(f"w{i} " for i in range(12)), chunk_delay=0.08))
    received: list[StreamChunk] = []

    async def consume() -> None:
        async for chunk in up.provider.stream(HELLO, up.model):
            received.append(chunk)

    await expect_timeout(consume(), "total", within=0.8)
    assert stream_text(received).startswith("w0 w1 ")  # it was streaming, not stuck
    assert finish_reasons(received) == []


async def test_stream_cut_midway_is_interrupted_with_the_partial_text(up: Upstream) -> None:
    pieces = ("Alpha ", "Bravo ", "Charlie ", "Delta")
    up.fake.script(ModelReply(text=pieces, cut_after=frames_through(up.fake, ModelReply(text=pieces), "Bravo")))
    chunks, error = await up.stream_until_error()
    assert isinstance(error, StreamInterrupted)
    assert error.kind is ErrorKind.INTERRUPTED and error.provider == "upstream"
    assert error.partial_text == "Alpha Bravo "
    assert stream_text(chunks) == "Alpha Bravo "
    assert finish_reasons(chunks) == []  # never a clean finish
    check_secret_free(error, up.flavour.key)


async def test_stream_cut_inside_an_event_is_interrupted_not_malformed(up: Upstream) -> None:
    """The connection drops halfway through an event's JSON: an interruption (retryable), with the text so far."""
    pieces = ("Alpha ", "Bravo ", "Charlie")
    after = frames_through(up.fake, ModelReply(text=pieces), "Bravo")
    if up.flavour.anthropic:
        half = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_d'
    else:
        half = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"cont'
    up.fake.script(ModelReply(text=pieces, inject={after: half}, cut_after=after + 1))
    chunks, error = await up.stream_until_error()
    assert type(error) is StreamInterrupted
    assert error.partial_text == "Alpha Bravo "
    assert finish_reasons(chunks) == []


async def test_stream_ending_without_its_terminal_event_is_interrupted(up: Upstream) -> None:
    up.fake.script(ModelReply(text=("all ", "there"), omit_terminal=True))
    _, error = await up.stream_until_error()
    assert isinstance(error, StreamInterrupted)
    assert error.partial_text == "all there"


async def test_connection_dropped_after_the_terminal_event_is_a_clean_finish(up: Upstream) -> None:
    reply = ModelReply(text=("done",))
    frames = len(up.fake.render_events(reply, {"stream_options": {"include_usage": True}}))
    up.fake.script(ModelReply(text=("done",), cut_after=frames))  # everything sent, then the body never ends
    chunks = await up.stream()
    check_text_stream(chunks, "done")


@pytest.mark.parametrize(
    ("flavour", "error_type", "error_class"),
    [
        *[pytest.param(name, None, UpstreamServerError, id=f"{name}-default") for name in OPENAI_WIRE],
        pytest.param("openai", "rate_limit_exceeded", UpstreamRateLimited, id="openai-rate-limit"),
        pytest.param("anthropic", None, UpstreamOverloaded, id="anthropic-overloaded"),
        pytest.param("anthropic", "api_error", UpstreamServerError, id="anthropic-api-error"),
        pytest.param("anthropic", "rate_limit_error", UpstreamRateLimited, id="anthropic-rate-limit"),
    ],
)
async def test_error_event_mid_stream_raises_the_classified_error(
    make_upstream: MakeUpstream, flavour: str, error_type: str | None, error_class: type[UpstreamError]
) -> None:
    up = await make_upstream(flavour)
    pieces = ("Alpha ", "Bravo ", "Charlie")
    after = frames_through(up.fake, ModelReply(text=pieces), "Bravo")
    message = f"Something went wrong upstream (key {up.flavour.key})"
    # chunk_delay: the error arrives after the text, in a later read (see the same-read test below).
    up.fake.script(
        ModelReply(text=pieces, error_after=after, error_type=error_type, error_message=message, chunk_delay=0.01)
    )
    chunks, error = await up.stream_until_error()
    assert type(error) is error_class
    assert error.provider == "upstream"
    assert stream_text(chunks) == "Alpha Bravo "  # what came before the error was delivered
    assert finish_reasons(chunks) == []
    assert "Something went wrong upstream" in str(error)
    check_secret_free(error, up.flavour.key)


async def test_malformed_chunk_is_a_protocol_error(up: Upstream) -> None:
    pieces = ("Alpha ", "Bravo")
    at = frames_through(up.fake, ModelReply(text=pieces), "Alpha")
    up.fake.script(ModelReply(text=pieces, malformed_at=at, chunk_delay=0.01))
    chunks, error = await up.stream_until_error()
    assert type(error) is UpstreamProtocolError
    assert error.kind is ErrorKind.MALFORMED and error.provider == "upstream"
    assert stream_text(chunks) == "Alpha "
    assert finish_reasons(chunks) == []


@pytest.mark.parametrize("fault", ["error_event", "malformed"])
@pytest.mark.parametrize("flavour", list(FLAVOURS))
async def test_text_before_a_failure_in_the_same_read_is_delivered(
    make_upstream: MakeUpstream, flavour: str, fault: str
) -> None:
    """The text and the failure arrive in one network read (one body written at once): the decoder must hand out
    the text before raising (Anthropic once dropped it)."""
    up = await make_upstream(flavour)
    pieces = ("Alpha ", "Bravo")
    after = frames_through(up.fake, ModelReply(text=pieces), "Bravo")
    faulty = (
        ModelReply(text=pieces, error_after=after)
        if fault == "error_event"
        else ModelReply(text=pieces, malformed_at=after)
    )
    body = b"".join(up.fake.render_events(faulty, {"stream_options": {"include_usage": True}}))
    up.fake.script(Reply(status=200, body=body, content_type="text/event-stream"))
    chunks, error = await up.stream_until_error()
    assert isinstance(error, UpstreamProtocolError if fault == "malformed" else UpstreamError)
    assert not isinstance(error, StreamInterrupted)
    assert stream_text(chunks) == "Alpha Bravo"


async def test_non_json_success_body_is_a_protocol_error(up: Upstream) -> None:
    up.fake.script(Reply(status=200, body=f"<html>oops {up.flavour.key}</html>".encode(), content_type="text/html"))
    with pytest.raises(UpstreamProtocolError) as caught:
        await up.complete()
    check_secret_free(caught.value, up.flavour.key)


# --- 5. what the proxy sends ---------------------------------------------------------------------------------------

PNG_DATA_URI = (  # a 1x1 PNG
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
RICH_REQUEST = ChatRequest(
    messages=(
        Message("system", "You are terse."),
        Message("user", (TextPart("What is in this picture? Then check the weather."), ImagePart(PNG_DATA_URI, "low"))),
        Message("assistant", "A cat. Checking.", tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)),
        Message("tool", "18C and sunny", tool_call_id="call_1"),
        Message("system", "Answer in French."),
        Message("user", "Thanks. And tomorrow?"),
    ),
    max_tokens=200,
    temperature=1.4,
    top_p=0.9,
    stop=("END",),
    seed=7,
    user="user-42",
    tools=(WEATHER_TOOL,),
    tool_choice=ToolChoice("tool", "get_weather"),
    parallel_tool_calls=False,
)


def materialize(value: Any) -> Any:
    """A validated SDK params value as plain JSON data. Pydantic validates `Iterable[...]` fields lazily (it returns
    a `ValidatorIterator`), so this also forces every nested item through validation."""
    if isinstance(value, pydantic.BaseModel):
        return materialize(value.model_dump(exclude_unset=True))
    if isinstance(value, Mapping):
        return {key: materialize(item) for key, item in value.items()}
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    return [materialize(item) for item in value]


def validate_with_sdk(params_type: Any, body: dict[str, Any]) -> None:
    """`body` is valid for the SDK's request TypedDict, and nothing in it was dropped as unknown (pydantic ignores
    undeclared TypedDict keys, so the validated value must equal the body exactly)."""
    adapter = pydantic.TypeAdapter(params_type)  # keep a reference: the lazy iterators need its validators
    validated = materialize(adapter.validate_python(body))
    assert validated == body


def declared_keys(params_type: Any) -> set[str]:
    return set(params_type.__required_keys__) | set(params_type.__optional_keys__)


async def test_openai_request_headers_path_and_sdk_valid_body(make_upstream: MakeUpstream) -> None:
    up = await make_upstream("openai", extra="    organization: org-e2e\n    project: proj_e2e\n")
    up.fake.script(ModelReply(text=("ok",)), ModelReply(text=("ok",)))
    await up.complete(RICH_REQUEST)
    await up.stream(RICH_REQUEST)
    whole, streamed = up.fake.requests
    for sent in (whole, streamed):
        assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
        assert sent.header("authorization") == f"Bearer {OPENAI_KEY}"
        assert sent.header("content-type") == "application/json"
        assert (sent.header("openai-organization"), sent.header("openai-project")) == ("org-e2e", "proj_e2e")
        assert sent.header("x-api-key") is None
    validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, whole.json)
    validate_with_sdk(openai_params.CompletionCreateParamsStreaming, streamed.json)
    assert "stream" not in whole.json and "stream_options" not in whole.json
    assert streamed.json["stream"] is True
    assert streamed.json["stream_options"]["include_usage"] is True

    body = whole.json
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 200 and "max_completion_tokens" not in body
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"], body["user"]) == (
        1.4,
        0.9,
        ["END"],
        7,
        "user-42",
    )
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "system", "user"]
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": PNG_DATA_URI, "detail": "low"},
    }
    assert body["messages"][2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert body["messages"][3] == {"role": "tool", "content": "18C and sunny", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["parameters"] == WEATHER_TOOL.parameters
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


async def test_openai_reasoning_models_get_max_completion_tokens(make_upstream: MakeUpstream) -> None:
    up = await make_upstream("openai")
    await up.provider.complete(RICH_REQUEST, "gpt-5-mini")
    body = up.fake.last_request.json
    assert body["max_completion_tokens"] == 200 and "max_tokens" not in body
    validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, body)


@pytest.mark.parametrize("persona", COMPAT)
async def test_openai_compatible_without_key_sends_no_authorization_and_max_tokens(
    make_upstream: MakeUpstream, persona: str
) -> None:
    up = await make_upstream(persona, with_key=False)
    up.fake.script(ModelReply(text=("ok",)))
    await up.provider.complete(RICH_REQUEST, "gpt-5-local")  # a reasoning-model name still gets max_tokens
    chunks = [c async for c in up.provider.stream(RICH_REQUEST, "o3-local")]
    assert finish_reasons(chunks) == ["stop"]
    whole, streamed = up.fake.requests
    for sent in (whole, streamed):
        assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
        assert sent.header("authorization") is None
        assert sent.header("content-type") == "application/json"
        assert sent.json["max_tokens"] == 200 and "max_completion_tokens" not in sent.json
    validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, whole.json)
    validate_with_sdk(openai_params.CompletionCreateParamsStreaming, streamed.json)
    assert streamed.json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("persona", COMPAT)
async def test_openai_compatible_with_key_sends_bearer(make_upstream: MakeUpstream, persona: str) -> None:
    up = await make_upstream(persona)
    await up.complete()
    assert up.fake.last_request.header("authorization") == f"Bearer {COMPAT_KEY}"


async def test_anthropic_request_headers_path_and_sdk_valid_body(make_upstream: MakeUpstream) -> None:
    up = await make_upstream("anthropic", extra='    api_version: "2023-06-01"\n')
    up.fake.script(ModelReply(text=("ok",)), ModelReply(text=("ok",)))
    await up.complete(RICH_REQUEST)
    await up.stream(RICH_REQUEST)
    whole, streamed = up.fake.requests
    bodies = []
    for sent, params_type in (
        (whole, anthropic_params.MessageCreateParamsNonStreaming),
        (streamed, anthropic_params.MessageCreateParamsStreaming),
    ):
        assert (sent.method, sent.path) == ("POST", "/v1/messages")
        assert sent.header("x-api-key") == ANTHROPIC_KEY
        assert sent.header("anthropic-version") == "2023-06-01"
        assert sent.header("content-type") == "application/json"
        assert sent.header("authorization") is None
        # The anthropic 2.14 SDK's MessageCreateParams declares no `temperature`, `top_p` or `top_k` (the Messages
        # API still takes them). Strip exactly those undeclared sampling keys before validating; any other
        # undeclared key fails the test.
        body = dict(sent.json)
        undeclared = set(body) - declared_keys(params_type)
        assert undeclared <= {"temperature", "top_p", "top_k"}
        sampling = {key: body.pop(key) for key in undeclared}
        assert sampling == {"temperature": 1.0, "top_p": 0.9}  # temperature capped to Anthropic's 0..1
        validate_with_sdk(params_type, body)
        bodies.append(body)
    assert "stream" not in whole.json and streamed.json["stream"] is True

    body = bodies[0]
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 200
    assert body["system"] == "You are terse.\nAnswer in French."  # hoisted from anywhere, joined
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    first, assistant, last = body["messages"]
    assert first["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA_URI.split(",", 1)[1]},
    }
    assert assistant["content"] == [
        {"type": "text", "text": "A cat. Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert last["content"] == [  # the tool result and the next user text share one user turn, result first
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
        {"type": "text", "text": "Thanks. And tomorrow?"},
    ]
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_TOOL.parameters}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "user-42"}


async def test_anthropic_defaults_max_tokens_and_configured_api_version(make_upstream: MakeUpstream) -> None:
    up = await make_upstream("anthropic", extra='    api_version: "2024-01-01"\n')
    await up.complete(ChatRequest.from_prompt("hi"))  # no max_tokens: the config's defaults.max_tokens (1024)
    sent = up.fake.last_request
    assert sent.header("anthropic-version") == "2024-01-01"
    assert sent.json["max_tokens"] == 1024
    validate_with_sdk(anthropic_params.MessageCreateParamsNonStreaming, sent.json)


def test_sdk_validation_catches_what_it_should() -> None:
    """The body checks above are not vacuous: a wrong role deep in a lazily validated list, or a misspelt key,
    fails them."""
    good = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, good)
    with pytest.raises(pydantic.ValidationError):
        validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, {**good, "messages": [{"role": "robot"}]})
    with pytest.raises(AssertionError):
        validate_with_sdk(openai_params.CompletionCreateParamsNonStreaming, {**good, "max_tokenz": 5})
    nested_typo = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi", "nmae": "x"}]}
    with pytest.raises(AssertionError):
        validate_with_sdk(anthropic_params.MessageCreateParamsNonStreaming, nested_typo)


# --- 6. a custom (type: python) provider through the same checks -------------------------------------------------


@pytest.fixture
async def custom_provider(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Provider]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    config = load_config_text(
        "version: 1\n"
        "providers:\n"
        "  upstream:\n"
        "    type: python\n"
        "    class: custom_provider:ReverseProvider\n"
        "    options: {uppercase: true, words_per_chunk: 1}\n"
        "models:\n"
        "  default:\n"
        "    targets: [{provider: upstream, model: reverse-1}]\n"
    )
    provider = build_provider(config.providers["upstream"])
    yield provider
    await provider.aclose()


async def test_custom_provider_complete_and_stream(custom_provider: Provider) -> None:
    assert (custom_provider.name, custom_provider.type) == ("upstream", "python")
    request = ChatRequest.from_prompt("hello brave world", system="ignored by the reverser")
    response = await custom_provider.complete(request, "reverse-1")
    check_text_response(response, "DLROW EVARB OLLEH", provider="upstream", model="reverse-1")
    chunks = [chunk async for chunk in custom_provider.stream(request, "reverse-1")]
    check_text_stream(chunks, "DLROW EVARB OLLEH")
    assert [chunk.text for chunk in chunks if chunk.text] == ["DLROW", " EVARB", " OLLEH"]


async def test_custom_provider_errors_are_the_proxy_error_tree(custom_provider: Provider) -> None:
    empty = ChatRequest.from_prompt("")

    async def stream() -> list[StreamChunk]:
        return [chunk async for chunk in custom_provider.stream(empty, "reverse-1")]

    for call in (custom_provider.complete(empty, "reverse-1"), stream()):
        with pytest.raises(UpstreamBadRequest) as caught:
            await call
        assert caught.value.kind is ErrorKind.BAD_REQUEST and caught.value.provider == "upstream"
