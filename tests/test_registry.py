"""`build_provider`: every config `type` becomes a working provider, checked end to end against the fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from proxy.config.model import MockConfig, ProviderConfig, Secret, TimeoutConfig
from proxy.errors import StreamInterrupted, UpstreamOverloaded, UpstreamRateLimited, UpstreamServerError
from proxy.providers import PROVIDER_TYPES, build_provider
from proxy.providers.anthropic import AnthropicCodec
from proxy.providers.http_provider import HttpProvider
from proxy.providers.mock import MockProvider
from proxy.providers.openai import OpenAICodec
from proxy.providers.openai_compatible import OpenAICompatibleCodec
from proxy.types import ChatRequest, StreamChunk
from tests.fakes import OpenAIFake, anthropic_error, anthropic_text, html_error, openai_error, openai_text

OPENAI_KEY = "test-registry-openai-key-0123456789"
ANTHROPIC_KEY = "test-registry-anthropic-key-0123456789"
HELLO = ChatRequest.from_prompt("hello", max_tokens=50)
FAST = TimeoutConfig(connect=1, first_token=2, total=5)


@pytest.fixture
async def build() -> AsyncIterator[Callable[..., HttpProvider]]:
    """`build_provider` for HTTP types, closing every provider at teardown."""
    built: list[HttpProvider] = []

    def make(type: str, base_url: str | None, api_key: str | None = None, **fields: object) -> HttpProvider:
        cfg = ProviderConfig(
            name=f"my-{type}",
            type=type,  # type: ignore[arg-type]
            base_url=base_url,
            api_key=Secret(api_key) if api_key else None,
            timeout=FAST,
            **fields,  # type: ignore[arg-type]
        )
        provider = build_provider(cfg)
        assert isinstance(provider, HttpProvider)
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


async def collect(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


def test_every_type_is_known() -> None:
    assert set(PROVIDER_TYPES) == {"openai", "openai_compatible", "anthropic", "mock", "python"}


async def test_wiring_of_http_types(build) -> None:
    openai = build("openai", None, OPENAI_KEY, max_connections=7)
    assert isinstance(openai.codec, OpenAICodec) and openai.type == "openai" and openai.name == "my-openai"
    assert openai.transport.provider == "my-openai"
    assert openai.transport.timeout == FAST
    assert openai.transport.max_connections == 7
    compatible = build("openai_compatible", "http://127.0.0.1:11434/v1")
    assert isinstance(compatible.codec, OpenAICompatibleCodec) and compatible.type == "openai_compatible"
    anthropic = build("anthropic", None, ANTHROPIC_KEY)
    assert isinstance(anthropic.codec, AnthropicCodec) and anthropic.type == "anthropic"


def test_default_max_tokens_reaches_the_anthropic_codec() -> None:
    cfg = ProviderConfig(name="a", type="anthropic", api_key=Secret(ANTHROPIC_KEY))
    provider = build_provider(cfg, default_max_tokens=321)
    assert isinstance(provider, HttpProvider)
    assert provider.codec.default_max_tokens == 321


def test_mock_type_builds_a_mock_provider() -> None:
    provider = build_provider(ProviderConfig(name="m", type="mock", mock=MockConfig(reply="hey")))
    assert isinstance(provider, MockProvider) and provider.name == "m" and provider.type == "mock"


def test_configuration_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="needs a base_url"):
        build_provider(ProviderConfig(name="local", type="openai_compatible"))
    with pytest.raises(ValueError, match=r"unknown type `carrier_pigeon`; known types: `openai`"):
        build_provider(ProviderConfig(name="x", type="carrier_pigeon"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="provider `p`: `class` must look like"):
        build_provider(ProviderConfig(name="p", type="python", class_path="nope"))


# --- end to end against the fakes ------------------------------------------------------------------------


async def test_openai_complete_and_stream(build, openai_fake) -> None:
    openai_fake.script(openai_text("Hello", " there"), openai_text("Hel", "lo", " you"))
    provider = build("openai", openai_fake.base_url, OPENAI_KEY)
    response = await provider.complete(HELLO, "gpt-4o-mini")
    assert response.text == "Hello there"
    assert response.provider == "my-openai"
    assert response.latency_ms > 0
    chunks = await collect(provider.stream(HELLO, "gpt-4o-mini"))
    assert "".join(c.text for c in chunks) == "Hello you"
    assert any(c.finish_reason == "stop" for c in chunks)
    first = openai_fake.requests[0]
    assert first.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert first.json["model"] == "gpt-4o-mini"
    assert openai_fake.requests[1].json["stream"] is True


async def test_openai_compatible_persona(build, start_fake) -> None:
    ollama = await start_fake(OpenAIFake("ollama"))
    ollama.script(openai_text("local", " answer"))
    provider = build("openai_compatible", ollama.base_url)
    assert (await provider.complete(HELLO, "llama3.2")).text == "local answer"


async def test_anthropic_complete_and_stream(build, anthropic_fake) -> None:
    anthropic_fake.script(anthropic_text("Bonjour"), anthropic_text("Bon", "jour", "!"))
    provider = build("anthropic", anthropic_fake.base_url, ANTHROPIC_KEY)
    response = await provider.complete(HELLO, "claude-3-haiku-20240307")
    assert response.text == "Bonjour"
    chunks = await collect(provider.stream(HELLO, "claude-3-haiku-20240307"))
    assert "".join(c.text for c in chunks) == "Bonjour!"
    assert anthropic_fake.requests[0].header("x-api-key") == ANTHROPIC_KEY


async def test_stream_cut_by_the_fake_is_interrupted_with_partial_text(build, openai_fake) -> None:
    # events: 0 = role chunk, 1 = "Hello", 2 = " wor", 3 = "ld", ...; cut after 3 events.
    openai_fake.script(openai_text("Hello", " wor", "ld", "!", cut_after=3))
    provider = build("openai", openai_fake.base_url, OPENAI_KEY)
    seen: list[StreamChunk] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for chunk in provider.stream(HELLO, "gpt-4o-mini"):
            seen.append(chunk)
    assert caught.value.partial_text == "Hello wor"
    assert all(c.finish_reason is None for c in seen)
    assert OPENAI_KEY not in str(caught.value)


async def test_anthropic_stream_without_terminal_event_is_interrupted(build, anthropic_fake) -> None:
    anthropic_fake.script(anthropic_text("partial", " answer", omit_terminal=True))
    provider = build("anthropic", anthropic_fake.base_url, ANTHROPIC_KEY)
    with pytest.raises(StreamInterrupted) as caught:
        await collect(provider.stream(HELLO, "claude-3-haiku-20240307"))
    assert caught.value.partial_text == "partial answer"


async def test_error_statuses_map_through_the_real_codecs(build, openai_fake, anthropic_fake) -> None:
    openai_fake.script(html_error(502), openai_error(429, retry_after_ms=250))
    openai = build("openai", openai_fake.base_url, OPENAI_KEY)
    with pytest.raises(UpstreamServerError) as gateway:
        await openai.complete(HELLO, "gpt-4o-mini")
    assert gateway.value.status == 502
    with pytest.raises(UpstreamRateLimited) as limited:
        await collect(openai.stream(HELLO, "gpt-4o-mini"))
    assert limited.value.retry_after == pytest.approx(0.25)

    anthropic_fake.script(anthropic_error(529))
    anthropic = build("anthropic", anthropic_fake.base_url, ANTHROPIC_KEY)
    with pytest.raises(UpstreamOverloaded):
        await anthropic.complete(HELLO, "claude-3-haiku-20240307")
