"""500 concurrent requests through the engine across 3 mock targets with faults injected, for `complete()` and for
`stream()`: every request ends with a `ChatResponse` or a clear `ProxyError`, and every counter adds up exactly.

The targets (round robin, 2 attempts each, millisecond backoffs on the real clock, seeded rng):
- `a` answers 503 to a seeded 30% of its calls;
- `b` answers 429 with a 2 ms retry-after to 30%, takes 1 ms per call and allows 20 calls in flight (waiting at most
  2 ms for a slot, so some requests are refused locally and move on);
- `c` times out (5 ms) on 20% of its calls; when streaming it instead breaks 20% of its streams after the first
  chunk (past the commit point: the client gets `StreamInterrupted`).
The mock decides each call's fate by one draw of `random.Random(seed)` per call, in call order, so the number of
faults a provider injected is known exactly from its call count, whatever the interleaving.

The attempt histories are read from the public results (`ChatResponse.attempts`, `AllTargetsFailed.attempts`) and,
for streams cut after their commit point (whose `StreamInterrupted` carries no history), from the request's
`Dispatch`, captured by wrapping the class the engine instantiates.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pytest

import proxy.engine
from proxy.config.load import load_config_text
from proxy.dispatch import Dispatch
from proxy.engine import Engine
from proxy.errors import AllTargetsFailed, ProxyError, StreamInterrupted
from proxy.runtime import Runtime
from proxy.types import Attempt, ChatRequest, ChatResponse

REQUESTS = 500
LOCAL = frozenset({"local_rate_limit", "unavailable", "invalid_for_target"})  # refused without an upstream call
FAULTS = {  # provider -> (seed, rate, error kind) of its injected fault
    "a": (11, 0.3, "overloaded"),
    "b": (12, 0.3, "rate_limited"),
    "c": (13, 0.2, "timeout"),
}
CUT = (13, 0.2, "interrupted")  # `c` when streaming


def config_text(stream: bool) -> str:
    c_fault = {"cut_after": 1, "rate": CUT[1]} if stream else {"timeout": True, "rate": FAULTS["c"][1]}
    providers = {
        "a": {"type": "mock", "mock": {"reply": "alpha says hi", "seed": 11, "fault": {"status": 503, "rate": 0.3}}},
        "b": {
            "type": "mock",
            "limits": {"concurrency": 20, "max_wait": "2ms"},
            "breaker": {"failures": 1000},  # stays in the rotation (its fast 429s would open it at once)
            "mock": {
                "reply": "beta says hi",
                "latency": "1ms",
                "first_token": "1ms",
                "seed": 12,
                "fault": {"status": 429, "retry_after": "2ms", "rate": 0.3},
            },
        },
        "c": {
            "type": "mock",
            "timeout": {"first_token": "5ms"},
            "mock": {"reply": "gamma says hi there", "seed": 13, "fault": c_fault},
        },
    }
    return json.dumps(
        {
            "version": 1,
            "providers": providers,
            "models": {
                "default": {
                    "strategy": "round_robin",
                    "targets": [{"provider": name, "model": f"{name}-1"} for name in "abc"],
                }
            },
            "retry": {"max_attempts": 2, "initial_backoff": "1ms", "max_backoff": "5ms", "deadline": "30s"},
        }
    )


def injected(seed: int, rate: float, calls: int) -> int:
    """How many of a mock's first `calls` calls its seeded fault struck (one draw per call, fault if < rate)."""
    rng = random.Random(seed)
    return sum(rng.random() < rate for _ in range(calls))


@pytest.fixture
def dispatches(monkeypatch) -> list[Dispatch]:
    made: list[Dispatch] = []

    class RecordingDispatch(Dispatch):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(proxy.engine, "Dispatch", RecordingDispatch)
    return made


async def complete_one(engine: Engine, index: int) -> ChatResponse | BaseException:
    try:
        return await engine.complete(ChatRequest.from_prompt(f"question {index}"))
    except BaseException as exc:  # anything else than a ProxyError fails the test below
        return exc


async def stream_one(engine: Engine, index: int) -> ChatResponse | BaseException:
    stream = engine.stream(ChatRequest.from_prompt(f"question {index}"))
    text = []
    try:
        async for chunk in stream:
            text.append(chunk.text)
    except BaseException as exc:
        if isinstance(exc, StreamInterrupted):
            assert exc.partial_text == "".join(text) and exc.partial_text  # cut after the commit point
        return exc
    assert stream.response is not None and stream.response.text == "".join(text)
    return stream.response


def non_local(attempts: tuple[Attempt, ...]) -> Counter[str]:
    """Upstream calls per provider in an attempt history."""
    return Counter(a.target.split("/")[0] for a in attempts if a.error_kind not in LOCAL)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_500_concurrent_requests_with_faults_add_up_exactly(dispatches, stream):
    runtime = Runtime.build(load_config_text(config_text(stream), env={}), rng=random.Random(2024))
    engine = Engine(runtime)
    one = stream_one if stream else complete_one
    try:
        results = await asyncio.gather(*(one(engine, i) for i in range(REQUESTS)))
    finally:
        await engine.aclose()

    responses = [r for r in results if isinstance(r, ChatResponse)]
    errors = [r for r in results if not isinstance(r, ChatResponse)]
    assert all(isinstance(e, ProxyError) for e in errors), [type(e).__name__ for e in errors]
    truncated = [e for e in errors if isinstance(e, StreamInterrupted)]
    assert all(isinstance(e, AllTargetsFailed) for e in errors if e not in truncated)
    assert stream or not truncated
    assert len(responses) > REQUESTS * 0.8  # with 3 targets and 2 attempts each, most requests are answered

    metrics = engine.metrics_snapshot()
    assert metrics["total_requests"] == metrics["success_requests"] + metrics["failed_requests"] == REQUESTS
    assert metrics["success_requests"] == len(responses) and metrics["failed_requests"] == len(errors)
    assert metrics["stream_requests"] == (REQUESTS if stream else 0)
    assert metrics["streams_truncated"] == len(truncated)

    calls = {name: runtime.providers[name].calls for name in "abc"}
    rows = metrics["provider_metrics"]
    for name, (seed, rate, kind) in {**FAULTS, **({"c": CUT} if stream else {})}.items():
        faults = injected(seed, rate, calls[name])
        assert rows[name]["request_count"] == calls[name]
        assert rows[name]["error_count"] == faults
        assert rows[name]["errors_by_kind"] == ({kind: faults} if faults else {})
        assert rows[name]["stream_count"] == (calls[name] if stream else 0)
        assert rows[name]["request_count"] - faults == sum(r.provider == name for r in responses)
    if stream:
        assert len(truncated) == injected(*CUT[:2], calls["c"])

    # Attempt histories: one entry per upstream call, plus the local refusals, which the metrics count apart.
    assert len(dispatches) == REQUESTS
    recorded = Counter[str]()
    for dispatch in dispatches:
        recorded += non_local(dispatch.attempts)
    assert dict(recorded) == {name: count for name, count in calls.items() if count}
    public = Counter[str]()
    for result in [*responses, *(e for e in errors if isinstance(e, AllTargetsFailed))]:
        public += non_local(result.attempts)
    hidden = Counter[str]()  # streams cut after the commit point carry no history; take it from their dispatch
    for dispatch in dispatches:
        if dispatch.attempts and dispatch.attempts[-1].error_kind == "interrupted":
            hidden += non_local(dispatch.attempts)
    assert len([d for d in dispatches if d.attempts and d.attempts[-1].error_kind == "interrupted"]) == len(truncated)
    assert public + hidden == recorded
    refusals = sum(a.error_kind == "local_rate_limit" for d in dispatches for a in d.attempts)
    assert refusals == metrics["rate_limit"]["rejections"]
    assert all(
        r.attempts[-1].error_kind is None and r.attempts[-1].target == f"{r.provider}/{r.provider}-1" for r in responses
    )
    assert metrics["tokens"]["input"] == sum(r.usage.input_tokens for r in responses if r.usage)
    assert metrics["tokens"]["output"] == sum(r.usage.output_tokens for r in responses if r.usage)
