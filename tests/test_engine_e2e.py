"""End-to-end engine tests: YAML -> Runtime -> Engine -> real codecs and aiohttp transport -> the fake OpenAI and
Anthropic upstreams on 127.0.0.1, with faults injected by the fakes.

The engine issue's "Done when" list, against real wire traffic: 500/429/timeouts on the primary -> the fallback
answers with the attempt history; 401 falls back without retrying (and trips the breaker); 400 fails fast;
a context-length error reroutes to a larger window; identical deterministic requests reach the upstream once;
a stream cut after 3 chunks ends with an error (never a clean finish), while a failure before the first chunk
falls back invisibly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed, StreamInterrupted, UpstreamBadRequest
from proxy.runtime import Runtime
from proxy.types import ChatRequest, StreamChunk
from tests.fakes import AnthropicFake, ErrorReply, ModelReply, OpenAIFake

PRIMARY_KEY = "test-engine-primary-key-0123456789"
BACKUP_KEY = "test-engine-backup-key-0123456789"
HELLO = ChatRequest.from_prompt("hello", max_tokens=50)
DETERMINISTIC = ChatRequest.from_prompt("what is 2+2?", max_tokens=50, temperature=0)


def engine_yaml(primary: str, backup: str, *, primary_window: int = 128000, extra_target: str = "") -> str:
    return f"""
version: 1
providers:
  primary:
    type: openai
    base_url: {primary}
    api_key: ${{PRIMARY_KEY}}
    timeout: {{connect: 1s, first_token: 300ms, total: 2s}}
  backup:
    type: anthropic
    base_url: {backup}
    api_key: ${{BACKUP_KEY}}
    timeout: {{connect: 1s, first_token: 1s, total: 2s}}
retry:
  max_attempts: 3
  initial_backoff: 1ms
  max_backoff: 50ms
  deadline: 20s
models:
  default:
    strategy: fallback
    targets:
      - {{provider: primary, model: gpt-4o-mini, context_window: {primary_window}}}
{extra_target}      - {{provider: backup, model: claude-sonnet-4-5, context_window: 200000}}
"""


MakeEngine = Callable[..., Awaitable[tuple[Engine, OpenAIFake, AnthropicFake]]]


@pytest.fixture
async def make_engine(start_fake) -> AsyncIterator[MakeEngine]:
    engines: list[Engine] = []

    async def make(**kwargs) -> tuple[Engine, OpenAIFake, AnthropicFake]:
        primary = await start_fake(OpenAIFake(api_key=PRIMARY_KEY))
        backup = await start_fake(AnthropicFake(api_key=BACKUP_KEY))
        text = engine_yaml(primary.base_url, backup.base_url, **kwargs)
        config = load_config_text(text, env={"PRIMARY_KEY": PRIMARY_KEY, "BACKUP_KEY": BACKUP_KEY})
        engine = Engine(Runtime.build(config))
        engines.append(engine)
        return engine, primary, backup

    yield make
    for engine in engines:
        await engine.aclose()


def history(response_or_error) -> list[tuple[str, int, str | None]]:
    return [(a.target, a.attempt, a.error_kind) for a in response_or_error.attempts]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (ErrorReply(500), "server"),
        (ErrorReply(503), "overloaded"),
        (ErrorReply(429, retry_after_ms=5), "rate_limited"),
        (ModelReply(text=["late"], delay_headers=1.0), "timeout"),
    ],
    ids=["500", "503", "429", "timeout"],
)
async def test_retryable_failures_retry_then_fall_back_with_history(make_engine, fault, kind):
    engine, primary, backup = await make_engine()
    primary.script(fault, fault, fault)
    response = await engine.complete(HELLO)
    assert response.provider == "backup"
    assert response.route == "default"
    assert history(response) == [
        ("primary/gpt-4o-mini", 1, kind),
        ("primary/gpt-4o-mini", 2, kind),
        ("primary/gpt-4o-mini", 3, kind),
        ("backup/claude-sonnet-4-5", 1, None),
    ]
    assert len(primary.requests) == 3
    assert len(backup.requests) == 1
    metrics = engine.metrics_snapshot()
    assert metrics["total_requests"] == 1 and metrics["success_requests"] == 1
    assert metrics["provider_usage"] == {"primary": 3, "backup": 1}
    assert metrics["provider_errors"] == {"primary": 3, "backup": 0}
    assert metrics["retries"] == 2 and metrics["fallbacks"] == 1


async def test_429_retry_after_is_honoured_and_the_retry_succeeds(make_engine):
    engine, primary, backup = await make_engine()
    primary.script(ErrorReply(429, retry_after_ms=20))
    response = await engine.complete(HELLO)
    assert response.provider == "primary"
    assert history(response) == [("primary/gpt-4o-mini", 1, "rate_limited"), ("primary/gpt-4o-mini", 2, None)]
    assert response.attempts[0].delay == pytest.approx(0.02)
    assert len(backup.requests) == 0


async def test_retry_after_beyond_max_backoff_falls_back_without_waiting(make_engine):
    engine, primary, _backup = await make_engine()
    primary.script(ErrorReply(429, retry_after=30))
    response = await engine.complete(HELLO)
    assert response.provider == "backup"
    assert history(response) == [("primary/gpt-4o-mini", 1, "rate_limited"), ("backup/claude-sonnet-4-5", 1, None)]
    assert response.latency_ms < 5000


async def test_401_falls_back_without_retry_and_opens_the_breaker(make_engine):
    engine, primary, _backup = await make_engine()
    primary.script(ErrorReply(401, type="invalid_request_error", code="invalid_api_key"))
    response = await engine.complete(HELLO)
    assert response.provider == "backup"
    assert history(response) == [("primary/gpt-4o-mini", 1, "auth"), ("backup/claude-sonnet-4-5", 1, None)]
    assert len(primary.requests) == 1
    [entry] = [p for p in await engine.list_providers() if p["name"] == "primary"]
    assert entry["breaker"]["state"] == "open"
    # the next request does not call the primary at all
    response = await engine.complete(HELLO)
    assert response.provider == "backup" and history(response) == [("backup/claude-sonnet-4-5", 1, None)]
    assert len(primary.requests) == 1
    assert PRIMARY_KEY not in str(await engine.list_providers(include_metrics=True))


async def test_400_fails_fast_without_fallback(make_engine):
    engine, primary, backup = await make_engine()
    primary.script(ErrorReply(400, type="invalid_request_error", message="temperature must be <= 2", param="x"))
    with pytest.raises(UpstreamBadRequest) as caught:
        await engine.complete(HELLO)
    assert "temperature must be <= 2" in str(caught.value)
    assert history(caught.value) == [("primary/gpt-4o-mini", 1, "bad_request")]
    assert len(primary.requests) == 1 and len(backup.requests) == 0
    assert engine.metrics_snapshot()["failed_requests"] == 1


async def test_context_length_error_reroutes_to_a_larger_window(make_engine):
    engine, primary, backup = await make_engine(
        primary_window=16000,
        extra_target="      - {provider: primary, model: gpt-4o, context_window: 16000}\n",
    )
    primary.script(ErrorReply(400, type="invalid_request_error", code="context_length_exceeded"))
    response = await engine.complete(HELLO)
    assert response.provider == "backup"
    assert history(response) == [("primary/gpt-4o-mini", 1, "context_length"), ("backup/claude-sonnet-4-5", 1, None)]
    assert len(primary.requests) == 1  # gpt-4o (same 16k window) was skipped, not called
    assert len(backup.requests) == 1


async def test_a_prompt_too_long_for_a_window_skips_that_target_before_sending(make_engine):
    engine, primary, _backup = await make_engine(primary_window=1000)
    long_prompt = ChatRequest.from_prompt("word " * 3000, max_tokens=50)
    response = await engine.complete(long_prompt)
    assert response.provider == "backup"
    assert len(primary.requests) == 0
    assert history(response) == [("backup/claude-sonnet-4-5", 1, None)]


async def test_max_tokens_is_clamped_to_what_the_window_leaves(make_engine):
    engine, primary, _backup = await make_engine(primary_window=2000)
    await engine.complete(ChatRequest.from_prompt("word " * 500, max_tokens=4000))
    sent = primary.last_request.json
    assert 1000 < sent.get("max_completion_tokens", sent.get("max_tokens")) < 2000


async def test_all_targets_failing_lists_each_reason(make_engine):
    engine, primary, backup = await make_engine()
    primary.script(*[ErrorReply(500)] * 3)
    backup.script(*[ErrorReply(529)] * 3)
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(HELLO)
    message = str(caught.value)
    assert "primary/gpt-4o-mini" in message and "backup/claude-sonnet-4-5" in message
    assert len(caught.value.attempts) == 6
    assert engine.metrics_snapshot()["failed_requests"] == 1


async def test_identical_deterministic_requests_reach_the_upstream_once(make_engine):
    engine, primary, _ = await make_engine()
    first = await engine.complete(DETERMINISTIC)
    second = await engine.complete(DETERMINISTIC)
    streamed = engine.stream(DETERMINISTIC)
    chunks = [chunk async for chunk in streamed]
    assert len(primary.requests) == 1
    assert not first.cached and second.cached and streamed.cached
    assert second.text == first.text == "".join(c.text for c in chunks)
    assert second.attempts == () and second.cost == 0.0
    metrics = engine.metrics_snapshot()
    assert metrics["cache"]["hits"] == 2 and metrics["cache"]["misses"] == 1
    assert metrics["provider_usage"]["primary"] == 1 and metrics["total_requests"] == 3
    await engine.complete(ChatRequest.from_prompt("what is 2+2?", max_tokens=50, temperature=0.7))
    await engine.complete(DETERMINISTIC, bypass_cache=True)
    assert len(primary.requests) == 3


async def collect(stream) -> tuple[list[StreamChunk], Exception | None]:
    chunks: list[StreamChunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


async def test_a_stream_cut_after_three_chunks_ends_with_an_error(make_engine):
    engine, primary, backup = await make_engine()
    primary.script(ModelReply(text=["one ", "two ", "three ", "four ", "five"], cut_after=3))
    stream = engine.stream(DETERMINISTIC)
    chunks, error = await collect(stream)
    assert isinstance(error, StreamInterrupted)
    assert "".join(c.text for c in chunks) == "one two "  # event 0 is the role chunk
    assert error.partial_text == "one two "
    assert "primary/gpt-4o-mini" in str(error)
    assert not any(c.finish_reason for c in chunks)
    assert stream.response is None
    assert len(backup.requests) == 0  # past the commit point: no invisible fallback
    metrics = engine.metrics_snapshot()
    assert metrics["streams_truncated"] == 1 and metrics["failed_requests"] == 1
    # nothing partial was cached: the same deterministic request goes upstream again
    response = await engine.complete(DETERMINISTIC)
    assert not response.cached and len(primary.requests) == 2


async def test_a_stream_failing_before_its_first_chunk_falls_back_invisibly(make_engine):
    engine, primary, _backup = await make_engine()
    primary.script(*[ModelReply(text=["never"], cut_after=1)] * 3)  # only the role chunk, then the cut
    stream = engine.stream(HELLO)
    chunks, error = await collect(stream)
    assert error is None
    assert stream.provider == "backup"
    assert stream.response is not None and stream.response.text == "".join(c.text for c in chunks)
    assert stream.response.finish_reason == "stop"
    assert [a.error_kind for a in stream.response.attempts] == ["interrupted"] * 3 + [None]
    assert engine.metrics_snapshot()["provider_metrics"]["primary"]["stream_count"] == 3


async def test_unknown_model_lists_the_known_names(make_engine):
    engine, _, _ = await make_engine()
    with pytest.raises(Exception, match=r"unknown model `gpt-9`; known models: `default`"):
        await engine.complete(ChatRequest.from_prompt("x", model="gpt-9"))
    with pytest.raises(Exception, match=r"direct_models: true"):
        await engine.complete(ChatRequest.from_prompt("x", model="primary/gpt-4o"))
