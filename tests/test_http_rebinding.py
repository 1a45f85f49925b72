"""DNS-rebinding protection of `/mcp`: local hosts only on a loopback bind by default; `server.http.allowed_hosts`
and `allowed_origins` open it to exactly the names configured."""

from __future__ import annotations

from starlette.testclient import TestClient

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.fronts.serve import build_http_app, transport_security
from proxy.runtime import Runtime

BASE = "version: 1\nproviders: {m: {type: mock}}\nmodels: {default: {targets: [{provider: m, model: x}]}}\n"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def status_for(config_text: str, host: str, origin: str | None = None) -> int:
    engine = Engine(Runtime.build(load_config_text(config_text)))
    app = build_http_app(McpFront(engine), host="127.0.0.1")
    headers = {**HEADERS, "host": host, **({"origin": origin} if origin else {})}
    with TestClient(app, base_url=f"http://{host}") as client:
        return client.post("/mcp", json=INIT, headers=headers).status_code


def test_a_foreign_host_is_refused_by_default_on_loopback():
    assert status_for(BASE, "evil.example.com") == 421
    assert status_for(BASE, "127.0.0.1:8085") != 421


def test_configured_hosts_and_origins_are_allowed_and_others_still_refused():
    config = BASE + (
        "server: {http: {allowed_hosts: ['proxy.example.com'], allowed_origins: ['https://app.example.com']}}\n"
    )
    assert status_for(config, "proxy.example.com") != 421
    assert status_for(config, "evil.example.com") == 421
    assert status_for(config, "proxy.example.com", origin="https://app.example.com") != 403
    assert status_for(config, "proxy.example.com", origin="https://evil.example.com") == 403
    assert status_for(config, "localhost:8085") != 421  # local names stay allowed on a loopback bind


def test_nothing_configured_keeps_the_sdk_default():
    assert transport_security("0.0.0.0") is None
    settings = transport_security("0.0.0.0", ["proxy.internal:8085"])
    assert settings.allowed_hosts == ["proxy.internal:8085"]


def test_the_served_app_has_the_status_page_and_a_workers_flag():
    engine = Engine(Runtime.build(load_config_text(BASE + "server: {auth: {bearer_tokens: [t0ken-value]}}\n")))
    app = build_http_app(McpFront(engine), host="127.0.0.1")
    with TestClient(app) as client:
        assert client.get("/status").status_code == 200  # the page itself asks for the token
        assert client.get("/status.json").status_code == 401
        assert client.get("/status.json", headers={"authorization": "Bearer t0ken-value"}).status_code == 200
    from proxy.cli import build_parser

    assert build_parser().parse_args(["serve", "--workers", "2"]).workers == 2
