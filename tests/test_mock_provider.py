"""The `mock` provider: every reply option, every timing option and every fault."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from proxy.config.model import MockConfig, MockFault, ProviderConfig, TimeoutConfig
from proxy.errors import (
    StreamInterrupted,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOverloaded,
    UpstreamPermissionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from proxy.providers.mock import MockProvider, estimate_tokens
from proxy.types import ChatRequest, Message, StreamChunk, Usage

HELLO = ChatRequest.from_prompt("hello")


def mock(**options: object) -> MockProvider:
    timeout = options.pop("timeout", TimeoutConfig())
    return MockProvider(ProviderConfig(name="fake", type="mock", mock=MockConfig(**options), timeout=timeout))


async def collect(provider: MockProvider, request: ChatRequest = HELLO) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request, "mock-1")]


def texts(chunks: list[StreamChunk]) -> list[str]:
    return [c.text for c in chunks if c.text]


# --- replies ---------------------------------------------------------------------------------------------


async def test_default_reply_with_model_usage_and_provider() -> None:
    provider = MockProvider(ProviderConfig(name="fake", type="mock"))
    response = await provider.complete(HELLO, "my-model")
    assert response.text == MockConfig().reply
    assert response.model == "my-model"
    assert response.provider == "fake"
    assert response.finish_reason == "stop"
    assert response.id == "mock-0"
    assert response.usage == Usage(input_tokens=2, output_tokens=estimate_tokens(MockConfig().reply))
    assert provider.type == "mock" and provider.name == "fake"


async def test_usage_is_deterministic() -> None:
    first = await mock(reply="a fixed reply").complete(HELLO, "m")
    second = await mock(reply="a fixed reply").complete(HELLO, "m")
    assert first.usage == second.usage == Usage(input_tokens=2, output_tokens=4)
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2


async def test_echo_replies_with_the_last_user_message() -> None:
    request = ChatRequest(
        messages=(
            Message("system", "be brief"),
            Message("user", "first"),
            Message("assistant", "ok"),
            Message("user", "second"),
        )
    )
    provider = mock(echo=True)
    assert (await provider.complete(request, "m")).text == "second"
    assert "".join(texts(await collect(provider, request))) == "second"


async def test_replies_are_cycled_in_order_across_complete_and_stream() -> None:
    provider = mock(replies=("one", "two", "three"))
    assert (await provider.complete(HELLO, "m")).text == "one"
    assert "".join(texts(await collect(provider))) == "two"
    assert (await provider.complete(HELLO, "m")).text == "three"
    assert (await provider.complete(HELLO, "m")).text == "one"
    assert provider.calls == 4


async def test_max_tokens_truncates_with_finish_reason_length() -> None:
    request = ChatRequest.from_prompt("hi", max_tokens=2)
    response = await mock(reply="this reply is much longer than two tokens").complete(request, "m")
    assert response.text == "this rep"
    assert response.finish_reason == "length"
    chunks = await collect(mock(reply="this reply is much longer than two tokens"), request)
    assert "".join(texts(chunks)) == "this rep"
    assert chunks[-1].finish_reason == "length"


async def test_latency_delays_a_whole_reply() -> None:
    started = time.perf_counter()
    response = await mock(latency=0.1).complete(HELLO, "m")
    assert time.perf_counter() - started >= 0.1
    assert response.latency_ms >= 100


# --- streaming -------------------------------------------------------------------------------------------


async def test_stream_shape_first_chunk_text_chunks_then_finish_with_usage() -> None:
    chunks = await collect(mock(reply="the quick brown fox jumps", chunk_size=2))
    assert chunks[0] == StreamChunk(id="mock-0", model="mock-1")
    assert [c.text for c in chunks[1:-1]] == ["the quick ", "brown fox ", "jumps"]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(input_tokens=2, output_tokens=estimate_tokens("the quick brown fox jumps"))
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_stream_timing_first_token_then_chunk_delay() -> None:
    provider = mock(reply="a b c d", first_token=0.1, chunk_delay=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    arrivals: list[float] = []
    async for chunk in provider.stream(HELLO, "m"):
        if chunk.text:
            arrivals.append(loop.time() - started)
    assert len(arrivals) == 4
    assert arrivals[0] >= 0.1
    assert arrivals[-1] >= 0.1 + 3 * 0.05
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(arrivals))


async def test_stream_of_an_empty_reply_still_finishes() -> None:
    chunks = await collect(mock(reply=""))
    assert texts(chunks) == []
    assert chunks[-1].finish_reason == "stop"


# --- faults ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, UpstreamBadRequest),
        (401, UpstreamAuthError),
        (403, UpstreamPermissionError),
        (404, UpstreamNotFound),
        (429, UpstreamRateLimited),
        (500, UpstreamServerError),
        (502, UpstreamServerError),
        (503, UpstreamOverloaded),
        (529, UpstreamOverloaded),
    ],
)
async def test_status_fault_raises_what_a_real_provider_would(status: int, error: type[UpstreamError]) -> None:
    provider = mock(fault=MockFault(status=status))
    with pytest.raises(error) as caught:
        await provider.complete(HELLO, "m")
    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.provider == "fake"
    with pytest.raises(error):
        await collect(provider)


async def test_rate_limit_fault_carries_retry_after_and_message() -> None:
    provider = mock(fault=MockFault(status=429, retry_after=1.5, message="slow down please"))
    with pytest.raises(UpstreamRateLimited, match="slow down please") as caught:
        await provider.complete(HELLO, "m")
    assert caught.value.retry_after == 1.5
    assert caught.value.retryable


async def test_stream_status_fault_comes_before_any_chunk() -> None:
    seen: list[StreamChunk] = []
    with pytest.raises(UpstreamOverloaded):
        async for chunk in mock(fault=MockFault(status=529)).stream(HELLO, "m"):
            seen.append(chunk)
    assert seen == []


async def test_fault_without_a_kind_is_a_server_error() -> None:
    with pytest.raises(UpstreamServerError) as caught:
        await mock(fault=MockFault()).complete(HELLO, "m")
    assert caught.value.status == 500


async def test_timeout_fault_waits_the_providers_first_token_timeout() -> None:
    provider = mock(fault=MockFault(timeout=True), timeout=TimeoutConfig(first_token=0.1))
    for call in (provider.complete(HELLO, "m"), collect(provider)):
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout) as caught:
            await call
        assert caught.value.phase == "first_token"
        assert 0.1 <= time.perf_counter() - started < 1.0


async def test_cut_after_interrupts_a_stream_with_the_partial_text() -> None:
    provider = mock(reply="one two three four", fault=MockFault(cut_after=2))
    seen: list[StreamChunk] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for chunk in provider.stream(HELLO, "m"):
            seen.append(chunk)
    assert texts(seen) == ["one ", "two "]
    assert caught.value.partial_text == "one two "
    assert all(c.finish_reason is None for c in seen)


async def test_cut_after_past_the_end_still_never_finishes_cleanly() -> None:
    seen: list[StreamChunk] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for chunk in mock(reply="short", fault=MockFault(cut_after=10)).stream(HELLO, "m"):
            seen.append(chunk)
    assert caught.value.partial_text == "short"
    assert all(c.finish_reason is None for c in seen)


async def test_cut_after_fails_a_whole_reply_as_a_dropped_connection() -> None:
    with pytest.raises(UpstreamConnectError):
        await mock(fault=MockFault(cut_after=1)).complete(HELLO, "m")


async def test_malformed_after_raises_a_protocol_error() -> None:
    provider = mock(reply="one two three", fault=MockFault(malformed_after=1))
    seen: list[StreamChunk] = []
    with pytest.raises(UpstreamProtocolError):
        async for chunk in provider.stream(HELLO, "m"):
            seen.append(chunk)
    assert texts(seen) == ["one "]
    with pytest.raises(UpstreamProtocolError):
        await provider.complete(HELLO, "m")


async def test_first_n_calls_fail_then_it_recovers() -> None:
    provider = mock(reply="fine", fault=MockFault(status=503, first=2))
    for _ in range(2):
        with pytest.raises(UpstreamOverloaded):
            await provider.complete(HELLO, "m")
    assert (await provider.complete(HELLO, "m")).text == "fine"
    assert "".join(texts(await collect(provider))) == "fine"


async def outcomes(provider: MockProvider, calls: int) -> list[bool]:
    results = []
    for _ in range(calls):
        try:
            await provider.complete(HELLO, "m")
        except UpstreamServerError:
            results.append(False)
        else:
            results.append(True)
    return results


async def test_fault_rate_is_a_seeded_fraction() -> None:
    pattern = await outcomes(mock(fault=MockFault(status=500, rate=0.3), seed=7), 400)
    failures = pattern.count(False)
    assert 80 <= failures <= 160  # about 30%
    assert pattern == await outcomes(mock(fault=MockFault(status=500, rate=0.3), seed=7), 400)  # reproducible
    assert pattern != await outcomes(mock(fault=MockFault(status=500, rate=0.3), seed=8), 400)


async def test_rate_zero_never_fails_and_rate_applies_within_first() -> None:
    assert all(await outcomes(mock(fault=MockFault(status=500, rate=0.0)), 50))
    pattern = await outcomes(mock(fault=MockFault(status=500, rate=0.5, first=10), seed=1), 60)
    assert all(pattern[10:])
    assert not all(pattern[:10])
