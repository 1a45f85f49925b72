"""`fallbacks` in the metrics counts real moves to a next target: the last target's failure, with nothing left to
fall back to, is no fallback. Through the engine with `mock` providers (one that fails, one that answers)."""

from __future__ import annotations

import contextlib
import textwrap

import pytest

from proxy.config.load import load_config_text
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed
from proxy.runtime import Runtime
from proxy.types import ChatRequest

CONFIG = """\
version: 1
providers:
  broken: {type: mock, mock: {fault: {status: 503, message: down}}}
  also_broken: {type: mock, mock: {fault: {status: 500, message: down too}}}
  good: {type: mock, mock: {reply: fine answer}}
retry: {max_attempts: 1}
defaults: {model: fine}
models:
  both_fail: {targets: [{provider: broken, model: b}, {provider: also_broken, model: c}]}
  second_answers: {targets: [{provider: broken, model: b}, {provider: good, model: g}]}
  single: {targets: [{provider: broken, model: b}]}
  single_then_model: {targets: [{provider: broken, model: b}], fallback: single_other}
  single_other: {targets: [{provider: also_broken, model: c}]}
  fine: {targets: [{provider: good, model: g}]}
"""


@pytest.fixture
async def engine():
    engine = Engine(Runtime.build(load_config_text(textwrap.dedent(CONFIG), env={})))
    yield engine
    await engine.aclose()


async def ask(engine: Engine, model: str, *, stream: bool) -> None:
    request = ChatRequest.from_prompt("hi", model=model)
    if stream:
        async for _ in engine.stream(request):
            pass
    else:
        await engine.complete(request)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("model", "fails", "fallbacks", "attempts"),
    [
        ("both_fail", True, 1, 2),
        ("second_answers", False, 1, 2),
        ("single", True, 0, 1),
        ("single_then_model", True, 1, 2),  # a `fallback:` model is a move too
        ("fine", False, 0, 1),
    ],
)
async def test_fallbacks_count_moves_to_a_next_target_only(engine, stream, model, fails, fallbacks, attempts):
    if fails:
        with pytest.raises(AllTargetsFailed):
            await ask(engine, model, stream=stream)
    else:
        await ask(engine, model, stream=stream)
    metrics = engine.metrics_snapshot()
    assert metrics["fallbacks"] == fallbacks
    assert sum(metrics["provider_usage"].values()) == attempts
    assert (metrics["failed_requests"], metrics["success_requests"]) == ((1, 0) if fails else (0, 1))


async def test_fallbacks_add_up_over_requests(engine):
    for model in ("both_fail", "second_answers", "single"):
        with contextlib.suppress(AllTargetsFailed):
            await ask(engine, model, stream=False)
    assert engine.metrics_snapshot()["fallbacks"] == 2
