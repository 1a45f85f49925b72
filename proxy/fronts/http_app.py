"""The one Starlette app behind `llm-proxy serve --transport http`: the OpenAI and Anthropic APIs, the probes,
`/v1/models`, `/metrics` (Prometheus, proxy/fronts/prometheus.py), and the MCP endpoint mounted at `/mcp`.

`ProxyMiddleware` (pure ASGI, so streaming bodies pass through untouched) runs around every route:
- a request id on every response (`x-request-id`: the client's when it sent a sane one, else a new one), kept in
  `scope["state"]["request_id"]` for the handlers, and the served config's version (`x-llm-proxy-config-version`);
- auth: when `server.auth.bearer_tokens` is set, everything but `/healthz` and `/readyz` needs one of the tokens, as
  `Authorization: Bearer <token>` or (Anthropic clients) `x-api-key: <token>`; compared in constant time; a 401 in
  the API's error shape otherwise (OpenAI's: `code` null when no token was sent, `invalid_api_key` for a wrong
  one; Anthropic's `authentication_error` for both). The tokens are read from the engine's current config on every
  request, so a reload that rotates them takes effect at once;
- telemetry: the request id goes into `proxy.logs.request_id`, so every log line of the request carries it; with
  traces on, a SERVER span `{method} {route}` (its parent the client's `traceparent`, when it sent one) is current
  for the whole exchange, streamed body included; the engine's request takes it as its request span
  (`telemetry.server_span`), so its routing and attempt spans nest under it. The probes and `/metrics`
  get no span (scrapers and kubelets would drown the traces).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import logs, telemetry
from proxy.engine import Engine
from proxy.fronts import status
from proxy.fronts.http_common import error_for_path
from proxy.fronts.prometheus import metrics_route_handler
from proxy.ids import random_hex
from proxy.otel_fast import AttributeBlock, enter_span, leave_span

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"}) | status.PUBLIC_PATHS  # the status page asks for its token
UNTRACED_PATHS = PUBLIC_PATHS | {"/metrics"}
ROUTES = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/mcp"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SERVER = trace.SpanKind.SERVER  # an enum member read through its class costs a descriptor call
_PROPAGATION = frozenset({b"traceparent", b"tracestate", b"baggage"})  # ASGI header names are lowercase


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _token_of(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = _header(scope, b"x-api-key")
    return api_key.strip() if api_key else None


def token_allowed(presented: str | None, tokens: Sequence[str]) -> bool:
    """Whether `presented` is one of `tokens`; compares against every token, in constant time per token."""
    if presented is None:
        return False
    given = presented.encode()
    allowed = False
    for token in tokens:
        allowed |= hmac.compare_digest(given, token.encode())
    return allowed


# By (method, path, scheme, server), for the proxy's routes only: the span name and the attributes of their spans.
_server_blocks: dict[tuple[Any, ...], tuple[str, AttributeBlock]] = {}
MAX_SERVER_BLOCKS = 256


def _server_attributes(method: str, path: str, scheme: str, server: Any) -> dict[str, Any]:
    attributes = {"http.request.method": method, "url.path": path, "url.scheme": scheme}
    if path in ROUTES:
        attributes["http.route"] = path
    if server and server[1] is not None:
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    return attributes


def _server_span(scope: Scope, tracing: telemetry.Tracing, request_id: str) -> trace.Span:
    carrier = None
    for key, value in scope.get("headers", ()):
        if key in _PROPAGATION:
            if carrier is None:
                carrier = {}
            carrier[key.decode("latin-1")] = value.decode("latin-1")
    parent = propagate.extract(carrier) if carrier else None
    method = scope.get("method", "GET")
    path = scope.get("path", "")
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    if path not in ROUTES:  # any path a client sends: not kept
        attributes = _server_attributes(method, path, scheme, server)
        attributes["proxy.request_id"] = request_id
        return tracing.start_span(method, parent, _SERVER, attributes)
    if server is not None and type(server) is not tuple:  # ASGI allows a list (Starlette's TestClient)
        server = tuple(server)
    key = (method, path, scheme, server)
    named = _server_blocks.get(key)
    if named is None:
        if len(_server_blocks) >= MAX_SERVER_BLOCKS:
            _server_blocks.clear()
        block = AttributeBlock(_server_attributes(method, path, scheme, server))
        named = _server_blocks[key] = (f"{method} {path}", block)
    return tracing.start_span(named[0], parent, _SERVER, {"proxy.request_id": request_id}, named[1])


def _mark_error(span: trace.Span, kind: str) -> None:
    """An ERROR status and `error.type` on the server span, unless the engine's request, which took the span as its
    own (proxy/spans.py), already recorded what went wrong (its status, or its `error.type` on a 4xx failure that the
    front then answered with a 5xx)."""
    status = getattr(span, "status", None)
    if status is not None and status.status_code is trace.StatusCode.ERROR:
        return
    attributes = getattr(span, "attributes", None)
    if not (attributes and "error.type" in attributes):
        span.set_attribute("error.type", kind)
    span.set_status(trace.Status(trace.StatusCode.ERROR))


class ProxyMiddleware:
    """Request ids and bearer-token auth around every route (see the module docstring)."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else f"req_{random_hex()}"
        scope.setdefault("state", {})["request_id"] = request_id
        id_token = logs.request_id.set(request_id)
        tracing = telemetry.active()
        try:
            if tracing is None or scope.get("path", "") in UNTRACED_PATHS:
                await self._serve(scope, receive, send, request_id)
                return
            span = _server_span(scope, tracing, request_id)
            context_token = enter_span(span)
            offer = [span]
            offer_token = telemetry.server_span.set(offer)
            status: list[int] = []
            try:
                await self._serve(scope, receive, send, request_id, status)
            except BaseException as exc:
                _mark_error(span, type(exc).__qualname__)
                raise
            finally:
                if status:
                    span.set_attribute("http.response.status_code", status[0])
                    if status[0] >= 500:
                        _mark_error(span, str(status[0]))
                offer.clear()  # a task that copied this context must not take the span once it has ended
                span.end()
                telemetry.server_span.reset(offer_token)
                leave_span(context_token)
        finally:
            logs.request_id.reset(id_token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, status: list[int] | None = None
    ) -> None:
        raw_id = request_id.encode()
        version = self.engine.runtime.config.version_hash.encode()  # the config this request starts on

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                if status is not None:
                    status.append(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                headers.append((b"x-request-id", raw_id))
                headers.append((b"x-llm-proxy-config-version", version))
                message["headers"] = headers
            await send(message)

        path = scope.get("path", "")
        tokens = self.engine.runtime.config.server.bearer_tokens
        if tokens and path not in PUBLIC_PATHS:
            presented = _token_of(scope)
            if not token_allowed(presented, [token.reveal() for token in tokens]):
                message = (
                    "missing or invalid API key: send `Authorization: Bearer <token>` (or `x-api-key: <token>`) "
                    "with one of the tokens in `server.auth.bearer_tokens`"
                )
                # as OpenAI answers: no key is `code: null` (invalid_request_error), a wrong one `invalid_api_key`
                code = None if presented is None else "invalid_api_key"
                response = error_for_path(path, 401, message, code=code)
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send_with_id)
                return
        await self.app(scope, receive, send_with_id)


def request_id_of(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


async def healthz(request: Request) -> Response:
    """Liveness: the process serves requests. Spends no tokens."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: a config is loaded and at least one provider is enabled with a closed or half-open breaker."""
    engine: Engine = request.app.state.engine
    providers = await engine.list_providers()
    states = {
        p["name"]: {
            "enabled": p["enabled"],
            "disabled_reason": p["disabled_reason"],
            "breaker": p["breaker"]["state"],
        }
        for p in providers
    }
    ready = any(p["enabled"] and p["breaker"]["state"] != "open" for p in providers)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "config": engine.config_info(),
        "providers": states,
        "last_reload": engine.metrics.last_reload,
    }
    if not ready:
        body["reason"] = "no provider is enabled and healthy" if providers else "the config declares no provider"
    return JSONResponse(body, status_code=200 if ready else 503)


async def list_models(request: Request) -> Response:
    """`GET /v1/models` in OpenAI's list shape: the model names the config offers."""
    engine: Engine = request.app.state.engine
    config = engine.runtime.config
    created = int(engine.loaded_at.timestamp())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-proxy", "description": model.description}
        for name, model in config.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})


async def _http_exception(request: Request, exc: Exception) -> Response:
    """404/405 and friends in the API's error shape instead of Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    response = error_for_path(request.url.path, exc.status_code, detail)
    response.headers.update(exc.headers or {})  # a 405's Allow (RFC 9110 requires it)
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug, not a bad input: logged with its traceback, answered as a 500 naming the request id (no details)."""
    request_id = request_id_of(request)
    log.exception("unexpected error serving %s %s (request %s)", request.method, request.url.path, request_id)
    return error_for_path(request.url.path, 500, f"internal error in the proxy (request id {request_id})")


def build_app(
    engine: Engine,
    *,
    api_routes: Sequence[BaseRoute] = (),
    mcp_app: ASGIApp | None = None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """The HTTP app over `engine`. `api_routes` are the OpenAI/Anthropic/metrics routes; `mcp_app` (the MCP SDK's
    streamable HTTP app, which serves `/mcp`) is mounted last; `lifespan` must run its session manager."""
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/metrics", metrics_route_handler(engine), methods=["GET"]),
        *api_routes,
    ]
    if mcp_app is not None:
        routes.append(Mount("/", app=mcp_app))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )
    app.state.engine = engine
    app.add_middleware(ProxyMiddleware, engine=engine)
    return app
