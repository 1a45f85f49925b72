"""The shared HTTP app: probes, `/v1/models`, request ids, bearer-token auth, and error shapes for bad routes."""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.fronts.http_app import _server_span
from proxy.telemetry import Tracing
from tests.http_server import engine_app

CONFIG = """
version: 1
server:
  auth:
    bearer_tokens: ["${PROXY_TOKEN}"]
providers:
  mock: {type: mock}
  keyless: {type: openai, api_key: "${UNSET_KEY}"}
models:
  default:
    description: the mock
    targets: [{provider: mock, model: mock-1}]
  other:
    targets: [{provider: keyless, model: gpt-4o-mini}]
    fallback: default
"""
TOKEN = "test-proxy-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def served():
    async with (
        engine_app(CONFIG, env={"PROXY_TOKEN": TOKEN}) as (base_url, engine),
        aiohttp.ClientSession(base_url) as session,
    ):
        yield session, engine


async def test_probes_need_no_token_and_show_no_secret(served):
    session, engine = served
    async with session.get("/healthz") as response:
        assert response.status == 200 and (await response.json()) == {"status": "ok"}
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["x-llm-proxy-config-version"] == engine.runtime.config.version_hash
    async with session.get("/readyz") as response:
        body = await response.json()
        assert response.status == 200 and body["status"] == "ready"
        assert body["providers"]["keyless"] == {
            "enabled": False,
            "disabled_reason": body["providers"]["keyless"]["disabled_reason"],
            "breaker": "closed",
        }
        assert "UNSET_KEY" in body["providers"]["keyless"]["disabled_reason"]
        assert body["config"]["version"] == engine.runtime.config.version_hash
        assert TOKEN not in await response.text()


async def test_readyz_is_503_when_no_provider_can_serve():
    text = CONFIG.replace("  mock: {type: mock}\n", "").replace("provider: mock,", "provider: keyless,")
    async with (
        engine_app(text, env={"PROXY_TOKEN": TOKEN}) as (base_url, _),
        aiohttp.ClientSession(base_url) as session,
        session.get("/readyz") as response,
    ):
        assert response.status == 503
        assert (await response.json())["status"] == "not_ready"


async def test_models_are_listed_with_a_token_and_refused_without(served):
    session, _ = served
    async with session.get("/v1/models", headers=AUTH) as response:
        body = await response.json()
        assert [m["id"] for m in body["data"]] == ["default", "other"]
        assert body["data"][0]["description"] == "the mock"
    async with session.get("/v1/models", headers={"x-api-key": TOKEN}) as response:
        assert response.status == 200
    missing = ({}, {"authorization": TOKEN}, {"authorization": "Bearer "}, {"authorization": "Basic x"})  # no token
    wrong = ({"authorization": "Bearer wrong"}, {"x-api-key": "nope"})
    for headers, code in [*((h, None) for h in missing), *((h, "invalid_api_key") for h in wrong)]:
        for path in ("/v1/models", "/v1/chat/completions", "/mcp", "/metrics"):  # the OpenAI-shaped paths
            async with session.post(path, json={}, headers=headers) as response:
                assert response.status == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                # as OpenAI answers: no key is code null, a wrong key `invalid_api_key`
                assert await response.json() == {
                    "error": {"message": NO_TOKEN, "type": "invalid_request_error", "param": None, "code": code}
                }, (path, headers)
                assert TOKEN not in await response.text()


NO_TOKEN = (
    "missing or invalid API key: send `Authorization: Bearer <token>` (or `x-api-key: <token>`) with one of the "
    "tokens in `server.auth.bearer_tokens`"
)


async def test_anthropic_paths_get_anthropic_shaped_errors(served):
    session, _ = served
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        for headers in ({}, {"x-api-key": "nope"}, {"authorization": "Bearer wrong"}):  # missing or wrong: one shape
            async with session.post(path, json={}, headers=headers) as response:
                assert response.status == 401
                assert await response.json() == {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": NO_TOKEN},
                }


async def test_a_sane_client_request_id_is_kept_and_a_bad_one_replaced(served):
    session, _ = served
    async with session.get("/healthz", headers={"x-request-id": "client-abc.123"}) as response:
        assert response.headers["x-request-id"] == "client-abc.123"
    async with session.get("/healthz", headers={"x-request-id": "bad id\twith spaces"}) as response:
        assert response.headers["x-request-id"].startswith("req_")


async def test_unknown_routes_and_methods_answer_in_the_api_shape(served):
    session, _ = served
    async with session.get("/v1/nothing", headers=AUTH) as response:
        assert response.status == 404
        assert "no such endpoint: GET /v1/nothing" in (await response.json())["error"]["message"]
    async with session.post("/v1/models", headers=AUTH) as response:
        assert response.status == 405
        assert "error" in await response.json()


def test_a_server_given_as_a_list_gets_the_same_server_span():
    """ASGI allows `scope["server"]` to be any two-item iterable (Starlette's TestClient sends a list)."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    for server in (["testserver", 80], ("testserver", 80)):
        scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [], "server": server}
        _server_span(scope, tracing, "req_1").end()
    listed, tupled = exporter.get_finished_spans()
    assert dict(listed.attributes) == dict(tupled.attributes)
    assert listed.attributes["server.address"] == "testserver" and listed.attributes["server.port"] == 80
    provider.shutdown()
