"""The engine's core walk: default model, disabled providers, fallback, fail-fast, the stream commit point."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.load import load_config_text
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed, StreamInterrupted, UnknownModel, UpstreamBadRequest
from proxy.runtime import Runtime
from proxy.types import ChatRequest

CONFIG = """\
version: 1
providers:
  broken: {type: mock, mock: {fault: {status: 503, message: down}}}
  bad_request: {type: mock, mock: {fault: {status: 400, message: nope}}}
  cut: {type: mock, mock: {reply: one two three four five, fault: {cut_after: 2}}}
  good: {type: mock, mock: {reply: fine answer}}
  keyed: {type: openai, api_key: '${MISSING_TEST_KEY}'}
models:
  default:
    targets: [{provider: keyed, model: gpt-4o-mini}, {provider: broken, model: b}, {provider: good, model: g}]
  strict:
    targets: [{provider: bad_request, model: x}, {provider: good, model: g}]
  cutting:
    targets: [{provider: cut, model: c}, {provider: good, model: g}]
  dead:
    targets: [{provider: broken, model: b}]
    fallback: default
  hopeless:
    targets: [{provider: keyed, model: gpt-4o-mini}, {provider: broken, model: b}]
"""


@pytest.fixture
async def engine():
    engine = Engine(Runtime.build(load_config_text(textwrap.dedent(CONFIG), env={})))
    yield engine
    await engine.aclose()


async def test_default_model_falls_back_past_disabled_and_failing_targets(engine):
    response = await engine.complete(ChatRequest.from_prompt("hi"))
    assert response.text == "fine answer" and response.provider == "good"


async def test_fallback_model_chain(engine):
    response = await engine.complete(ChatRequest.from_prompt("hi", model="dead"))
    assert response.provider == "good"


async def test_all_failed_names_each_target_and_the_unset_variable(engine):
    with pytest.raises(AllTargetsFailed) as caught:
        await engine.complete(ChatRequest.from_prompt("hi", model="hopeless"))
    message = str(caught.value)
    assert "keyed/gpt-4o-mini: provider `keyed` is unavailable: environment variable `MISSING_TEST_KEY`" in message
    assert "broken/b:" in message and "down" in message
    assert caught.value.status_code != 200


async def test_bad_request_fails_fast(engine):
    with pytest.raises(UpstreamBadRequest):
        await engine.complete(ChatRequest.from_prompt("hi", model="strict"))


async def test_unknown_model_lists_known_names(engine):
    with pytest.raises(UnknownModel) as caught:
        await engine.complete(ChatRequest.from_prompt("hi", model="nope"))
    assert "`default`" in str(caught.value) and "`cutting`" in str(caught.value)


async def test_made_up_model_names_count_under_one_label_and_leave_the_label_budget_to_real_models(engine):
    for index in range(300):  # more names than MAX_MODEL_LABELS
        with pytest.raises(UnknownModel):
            await engine.complete(ChatRequest.from_prompt("x", model=f"junk-{index}"))
        with pytest.raises(UnknownModel):
            async for _ in engine.stream(ChatRequest.from_prompt("x", model=f"junk-s{index}")):
                pass
    await engine.complete(ChatRequest.from_prompt("x"))
    models = engine.metrics.models
    assert models["(unknown)"][:3] == [600, 0, 600]  # requests, successes, failures
    assert not any(name.startswith("junk") for name in models) and "(other)" not in models


async def test_stream_failure_after_first_content_is_an_error_never_a_clean_end(engine):
    seen = []
    with pytest.raises(StreamInterrupted):
        async for chunk in engine.stream(ChatRequest.from_prompt("hi", model="cutting")):
            seen.append(chunk.text)
    assert "".join(seen).strip() and all(chunk != "fine answer" for chunk in seen)


async def test_stream_failure_before_first_content_falls_back(engine):
    chunks = [chunk async for chunk in engine.stream(ChatRequest.from_prompt("hi"))]
    assert "".join(c.text for c in chunks).strip() == "fine answer"
    assert chunks[-1].finish_reason == "stop"


async def test_defaults_apply(engine):
    assert engine._with_defaults(ChatRequest.from_prompt("x"), engine.runtime, stream=False).max_tokens == 1024
