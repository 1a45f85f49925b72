"""`GET /status.json` and `GET /status`: what the status page reads (plans, providers, reloads, request totals with
the cancelled ones), that it holds no secret, that it needs the bearer token when auth is on, and that the page is
self-contained (no internet)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.fronts import openai_api, status
from proxy.fronts.http_app import build_app
from proxy.providers.base import Provider
from proxy.reload import Reloader
from proxy.runtime import Runtime
from proxy.types import ChatRequest, ChatResponse, StreamChunk
from tests.http_server import engine_app, serve_app

SECRET = "test-upstream-key-0123456789"
TOKEN = "status-token-abcdef"
CONFIG = f"""
version: 1
providers:
  fast: {{type: mock, mock: {{reply: fast answer}}}}
  slow: {{type: mock, mock: {{reply: slow answer, latency: 20ms}}, limits: {{requests_per_minute: 600}}}}
  paid: {{type: openai, api_key: {SECRET}, enabled: false}}
  keyed: {{type: anthropic, api_key: "${{STATUS_TEST_UNSET_KEY}}"}}
models:
  default:
    strategy: weighted
    targets:
      - {{provider: fast, model: f1, weight: 3}}
      - {{provider: slow, model: s1, context_window: 4096}}
  premium:
    targets: [{{provider: paid, model: gpt-4o}}, {{provider: keyed, model: claude-haiku-4-5}}]
    fallback: default
"""

# A model whose provider never answers, so a client can give up on it midway (a cancelled request).
STALLED_CONFIG = """
version: 1
providers:
  fast: {type: mock, mock: {reply: fast answer}}
  stalled: {type: python, class: "tests.test_status_page:StalledProvider"}
retry: {max_attempts: 1}
models:
  default: {targets: [{provider: fast, model: f1}]}
  stalled: {targets: [{provider: stalled, model: s1}]}
"""


class StalledProvider(Provider):
    """Never answers; `started` counts the calls it got (across tests: compare before and after)."""

    started = 0

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        StalledProvider.started += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        raise AssertionError("not streamed here")
        yield StreamChunk()


async def eventually(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - engine state, no event to wait on
            await anyio.sleep(0.01)


async def give_up_on_a_request(base_url: str, engine: Engine) -> None:
    """Ask the `stalled` model over HTTP and close the connection while it waits: one cancelled request."""
    started, cancelled = StalledProvider.started, engine.metrics.cancelled_requests

    async def ask() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"model": "stalled", "messages": [{"role": "user", "content": "hello?"}]}
            await session.post(f"{base_url}/v1/chat/completions", json=body)

    client = asyncio.create_task(ask())
    await eventually(lambda: StalledProvider.started == started + 1)
    client.cancel()  # the client gives up: its connection closes
    await asyncio.gather(client, return_exceptions=True)
    await eventually(lambda: engine.metrics.cancelled_requests == cancelled + 1)


@pytest.fixture
async def served(tmp_path, monkeypatch):
    monkeypatch.delenv("STATUS_TEST_UNSET_KEY", raising=False)
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    try:
        async with serve_app(build_app(engine, api_routes=[*openai_api.routes, *status.routes])) as base_url:
            yield base_url, engine, reloader, path
    finally:
        await reloader.aclose()
        await engine.aclose()


async def get(url: str, **headers: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers.copy(), await response.text()


async def get_json(url: str, **headers: str) -> dict:
    status_code, _, text = await get(url, **headers)
    assert status_code == 200, text
    return json.loads(text)


async def chat(base_url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            body = {"model": "default", "messages": [{"role": "user", "content": f"hello {i}"}]}
            async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
                assert response.status == 200


async def test_the_document(served):
    base_url, engine, _, path = served
    document = await get_json(f"{base_url}/status.json")
    assert document["config"]["version"] == engine.runtime.config.version_hash
    assert document["config"]["path"] == str(path) and document["config"]["last_reload_error"] is None
    providers = {p["name"]: p for p in document["providers"]}
    assert list(providers) == ["fast", "slow", "paid", "keyed"]
    assert providers["paid"]["disabled_reason"] == "disabled in the config (`enabled: false`)"
    assert "STATUS_TEST_UNSET_KEY" in providers["keyed"]["disabled_reason"]
    assert providers["slow"]["headroom"]["requests_available"] == 600
    assert providers["fast"]["headroom"] == {"limited": False}
    assert providers["fast"]["breaker"] == "closed" and providers["fast"]["requests"] == 0
    assert len(providers["fast"]["latency_buckets"]) == len(document["latency_bounds"]) + 1
    models = {m["model"]: m for m in document["models"]}
    assert [(t["label"], t["share"]) for t in models["default"]["targets"]] == [("fast/f1", 0.75), ("slow/s1", 0.25)]
    assert models["default"]["targets"][1]["context_window"] == 4096
    assert models["premium"]["fallback_chain"] == ["default"] and models["premium"]["available_targets"] == 0


async def test_counters_move_with_traffic(served):
    base_url, _, _, _ = served
    await chat(base_url, 8)
    document = await get_json(f"{base_url}/status.json")
    providers = {p["name"]: p for p in document["providers"]}
    assert providers["fast"]["requests"] == 6 and providers["slow"]["requests"] == 2
    assert sum(providers["slow"]["latency_buckets"]) == 2 and providers["slow"]["tokens"] > 0
    assert providers["slow"]["headroom"]["requests_available"] == 598
    assert document["totals"]["total_requests"] == 8


async def test_the_totals_count_cancelled_requests_apart_from_failures():
    async with engine_app(STALLED_CONFIG, api_routes=[*openai_api.routes, *status.routes]) as (base_url, engine):
        await chat(base_url, 2)
        await give_up_on_a_request(base_url, engine)
        totals = (await get_json(f"{base_url}/status.json"))["totals"]
    assert {key: value for key, value in totals.items() if key.endswith("_requests")} == {
        "total_requests": 3,
        "success_requests": 2,
        "failed_requests": 0,
        "cancelled_requests": 1,
        "cached_requests": 0,
    }


async def test_a_rejected_reload_shows_with_its_position(served):
    base_url, engine, reloader, path = served
    path.write_text(CONFIG.replace("{provider: fast, model: f1, weight: 3}", "{provider: fats, model: f1}"))
    assert not await reloader.reload()
    document = await get_json(f"{base_url}/status.json")
    error = document["config"]["last_reload_error"]
    assert f"{path}:12:20: models.default.targets[0].provider: unknown provider `fats`; did you mean `fast`?" in error
    assert document["reload"]["rejected"] == 1 and document["reload"]["last"]["ok"] is False
    assert document["config"]["version"] == engine.runtime.config.version_hash  # still serving the old one


async def test_no_secret_is_ever_shown(served):
    base_url, _, _, _ = served
    _, _, text = await get(f"{base_url}/status.json")
    _, _, page = await get(f"{base_url}/status")
    assert SECRET not in text and SECRET not in page and "api_key" not in text


async def test_auth_guards_the_data_but_not_the_empty_shell(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG + f"server: {{auth: {{bearer_tokens: [{TOKEN}]}}}}\n")
    engine = Engine(Runtime.build(load_config(path)))
    try:
        async with serve_app(build_app(engine, api_routes=status.routes)) as base_url:
            code, headers, text = await get(f"{base_url}/status.json")
            assert code == 401 and headers["www-authenticate"] == "Bearer" and "fast" not in text
            code, _, _ = await get(f"{base_url}/status.json", Authorization="Bearer wrong-token")
            assert code == 401
            document = await get_json(f"{base_url}/status.json", Authorization=f"Bearer {TOKEN}")
            assert [p["name"] for p in document["providers"]] == ["fast", "slow", "paid", "keyed"]
            assert TOKEN not in str(document)
            code, _, page = await get(f"{base_url}/status")
            assert code == 200 and "fast" not in page and TOKEN not in page  # the shell carries no data
    finally:
        await engine.aclose()


async def test_the_page_is_self_contained_and_its_policy_allows_exactly_its_blocks(served):
    base_url, _, _, _ = served
    code, headers, page = await get(f"{base_url}/status")
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing to fetch from elsewhere
    assert "uPlot" in page and (status.STATIC / "uPlot.LICENSE").read_text().startswith("The MIT License")
    policy = headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    for kind in ("script", "style"):
        blocks = re.findall(rf"<{kind}>(.*?)</{kind}>", page, flags=re.S)
        assert len(blocks) == 2
        for block in blocks:
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy
