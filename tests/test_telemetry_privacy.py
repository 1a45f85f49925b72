"""No API key, bearer token, prompt or answer in any span (attributes, events, status), log line or metric label,
through the HTTP front to a real (fake) upstream: a whole answer, a stream, and an upstream error whose message
echoes the key and the prompt. With `capture_content` on, the prompt and answer (only) appear where the GenAI
conventions put them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from proxy import logs
from proxy.config import load_config_text
from proxy.fronts import anthropic_api, openai_api
from tests.fakes import ErrorReply, ModelReply, OpenAIFake
from tests.http_server import engine_app
from tests.test_telemetry import spans, traced  # noqa: F401  (`spans` is a fixture)

KEY = "test-privacy-upstream-key-51ab7e"
TOKEN = "test-privacy-client-token-90cd2f"
PROMPT = "PROMPT-MARKER-4242 my private question"
ANSWER = "ANSWER-MARKER-9898"


def config_text(base_url: str, capture: bool) -> str:
    return f"""
version: 1
providers:
  openai: {{type: openai, base_url: "{base_url}", api_key: "${{KEY}}"}}
models:
  default: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
retry: {{max_attempts: 1}}
server: {{auth: {{bearer_tokens: ["${{TOKEN}}"]}}}}
telemetry: {{capture_content: {str(capture).lower()}}}
"""


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    yield stream
    logs.unconfigure()
    logs.clear_secrets()
    root.setLevel(level)


def everything_recorded(exporter) -> str:
    parts = []
    for span in exporter.get_finished_spans():
        parts += [span.name, str(span.status.description), json.dumps(dict(span.attributes), default=str)]
        parts += [json.dumps([event.name, dict(event.attributes or {})], default=str) for event in span.events]
    return "\n".join(parts)


async def drive(base_url: str) -> str:
    """An answer, a stream and an upstream error through the HTTP front; returns `/metrics`."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}]}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        async with session.post("/v1/chat/completions", json=body) as reply:
            assert reply.status == 200 and ANSWER in await reply.text()
        async with session.post("/v1/chat/completions", json={**body, "stream": True}) as reply:
            assert reply.status == 200 and ANSWER in await reply.text()
        async with session.post("/v1/chat/completions", json=body) as reply:
            assert reply.status == 400
        async with session.get("/metrics") as reply:
            return await reply.text()


def script(fake: OpenAIFake) -> None:
    echo = f"Invalid request with key {KEY} for prompt {PROMPT}"
    fake.script(ModelReply(text=(ANSWER,)), ModelReply(text=(ANSWER, " streamed")), ErrorReply(400, message=echo))


async def test_no_secret_or_prompt_in_spans_logs_or_metric_labels(spans, log_lines, start_fake):  # noqa: F811
    fake = await start_fake(OpenAIFake(api_key=KEY))
    script(fake)
    text = config_text(fake.base_url, capture=False)
    env = {"KEY": KEY, "TOKEN": TOKEN}
    logs.add_secrets(logs.secrets_of(load_config_text(text, env=env)))  # as `llm-proxy serve` does at start
    async with engine_app(text, api_routes=[*openai_api.routes, *anthropic_api.routes], env=env) as (base_url, _):
        metrics = await drive(base_url)
    recorded = everything_recorded(spans)
    assert len(fake.requests) == 3 and "chat gpt-4o-mini" in recorded
    assert len([line for line in log_lines.getvalue().splitlines() if '"proxy.request"' in line]) == 3
    for where, text_ in (("spans", recorded), ("logs", log_lines.getvalue()), ("/metrics", metrics)):
        for leaked in (KEY, TOKEN, "PROMPT-MARKER-4242", ANSWER):
            assert leaked not in text_, f"{leaked!r} in {where}"


async def test_capture_content_records_prompt_and_answer_but_never_a_key(log_lines, start_fake):
    fake = await start_fake(OpenAIFake(api_key=KEY))
    script(fake)
    text = config_text(fake.base_url, capture=True)
    env = {"KEY": KEY, "TOKEN": TOKEN}
    logs.add_secrets(logs.secrets_of(load_config_text(text, env=env)))
    with traced(capture_content=True) as spans:  # noqa: F811  (what `telemetry.capture_content: true` sets up)
        async with engine_app(text, api_routes=openai_api.routes, env=env) as (base_url, _):
            await drive(base_url)
    attempts = [span for span in spans.get_finished_spans() if span.name == "chat gpt-4o-mini"]
    answered = [dict(span.attributes) for span in attempts if "gen_ai.output.messages" in span.attributes]
    assert len(answered) == 2
    inputs = json.loads(answered[0]["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    outputs = json.loads(answered[0]["gen_ai.output.messages"])
    assert outputs[0]["role"] == "assistant" and outputs[0]["parts"][0]["content"] == ANSWER
    recorded = everything_recorded(spans)
    assert KEY not in recorded and TOKEN not in recorded
    assert "PROMPT-MARKER-4242" not in log_lines.getvalue() and ANSWER not in log_lines.getvalue()


async def test_a_stream_that_fails_after_its_first_chunk_logs_no_upstream_text(log_lines, start_fake):
    """Both HTTP fronts log a broken stream by error class, kind and status: the upstream's message, which here
    quotes the prompt, reaches the client (its error event) but never the log."""
    fake = await start_fake(OpenAIFake(api_key=KEY))
    echo = f"upstream broke while answering {PROMPT}"
    broken = ModelReply(text=(ANSWER, " more", " and more"), error_after=2, error_message=echo)
    fake.script(broken, broken)
    text = config_text(fake.base_url, capture=False)
    env = {"KEY": KEY, "TOKEN": TOKEN}
    logs.add_secrets(logs.secrets_of(load_config_text(text, env=env)))
    headers = {"authorization": f"Bearer {TOKEN}"}
    messages = [{"role": "user", "content": PROMPT}]
    routes = [*openai_api.routes, *anthropic_api.routes]
    async with (
        engine_app(text, api_routes=routes, env=env) as (base_url, _),
        aiohttp.ClientSession(base_url, headers=headers) as session,
    ):
        body = {"model": "default", "messages": messages, "stream": True}
        async with session.post("/v1/chat/completions", json=body) as reply:
            sent = await reply.text()
        assert reply.status == 200 and '"error"' in sent and "PROMPT-MARKER-4242" in sent and "[DONE]" not in sent
        body = {"model": "default", "max_tokens": 50, "messages": messages, "stream": True}
        async with session.post("/v1/messages", json=body) as reply:
            sent = await reply.text()
        assert reply.status == 200 and "event: error" in sent and "PROMPT-MARKER-4242" in sent
    lines = log_lines.getvalue().splitlines()
    failures = [line for line in lines if "after the first chunk" in line or "after its first chunk" in line]
    assert len(failures) == 2, lines
    assert all("StreamInterrupted" in line and "kind interrupted" in line for line in failures), failures
    for leaked in (KEY, TOKEN, "PROMPT-MARKER-4242", "upstream broke while answering"):
        assert leaked not in log_lines.getvalue(), f"{leaked!r} in the logs"
