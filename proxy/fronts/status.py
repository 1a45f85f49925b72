"""The live status page: `GET /status` (one self-contained HTML page) and `GET /status.json` (what it shows).

`/status.json` is read from the engine at request time: the config version and load time, the last reload's outcome
(with its `file:line:col` problems when rejected), every model's route plan (`proxy.explain.route_plans`: strategy,
targets in order with weights and traffic shares, context windows, disabled targets and why, breaker states, the
fallback chain), every provider (enabled or why not, breaker, rate-limit headroom, cumulative counters and latency
histogram buckets) and the request totals (successful, failed, and cancelled: the client went away). It holds no
secret: no key, token or Redis URL is ever in it.

`/status` is the page: `static/status.html` with its CSS and JS and the vendored uPlot (MIT, `static/uPlot.LICENSE`)
inlined, so it needs no other request and no internet; a Content-Security-Policy allows exactly those inline blocks
(by hash) and requests to this origin. The page polls `status.json` and keeps the charts' rolling window in the
browser (`static/status.js`). The page itself holds no data: with `server.auth.bearer_tokens` set, `status.json`
needs a token, which the page asks for and keeps in the tab's session storage; the page shell must then be served
without one, which is why `PUBLIC_PATHS` lists it for the HTTP app's auth middleware.

    routes = status.routes          # add to the HTTP app's api_routes
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.engine import Engine
from proxy.explain import route_plans
from proxy.metrics import LATENCY_BUCKETS

STATIC = Path(__file__).resolve().parent / "static"
PUBLIC_PATHS = frozenset({"/status"})  # the page shell (no data); `/status.json` keeps needing a token
_SLOT = re.compile(r"\{\{([A-Z_]+)\}\}")
_ASSETS = {
    "UPLOT_CSS": "uPlot.min.css",
    "STATUS_CSS": "status.css",
    "UPLOT_JS": "uPlot.iife.min.js",
    "STATUS_JS": "status.js",
}


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> tuple[bytes, str]:
    """The assembled page and its Content-Security-Policy (read once from the package's static files)."""
    template = (STATIC / "status.html").read_text(encoding="utf-8")
    assets = {slot: (STATIC / name).read_text(encoding="utf-8") for slot, name in _ASSETS.items()}
    for text in assets.values():
        if "</script" in text.lower() or "</style" in text.lower():
            raise ValueError("a status page asset would end its inline block early")
    html = _SLOT.sub(lambda match: assets[match.group(1)], template)
    scripts = " ".join(_csp_hash(assets[slot]) for slot in ("UPLOT_JS", "STATUS_JS"))
    styles = " ".join(_csp_hash(assets[slot]) for slot in ("UPLOT_CSS", "STATUS_CSS"))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles} 'unsafe-hashes'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), policy


async def status_page(request: Request) -> Response:
    body, policy = page()
    headers = {
        "cache-control": "no-store",
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
    }
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def _provider(entry: dict[str, Any], engine: Engine) -> dict[str, Any]:
    metrics = entry.get("metrics") or {}
    stats = engine.metrics.providers.get(entry["name"])
    return {
        "name": entry["name"],
        "type": entry["type"],
        "enabled": entry["enabled"],
        "disabled_reason": entry["disabled_reason"],
        "models": entry["models"],
        "breaker": entry["breaker"]["state"],
        "breaker_targets": {name: t["state"] for name, t in entry["breaker"]["targets"].items()},
        "limits": {k: v for k, v in entry["limits"].items() if k != "headroom"},
        "headroom": entry["limits"].get("headroom", {}),
        "requests": metrics.get("request_count", 0),
        "errors": metrics.get("error_count", 0),
        "tokens": metrics.get("token_count", 0),
        "cost": metrics.get("cost", 0.0),
        "errors_by_kind": metrics.get("errors_by_kind", {}),
        "latency_ms": metrics.get("latency_ms", {}),
        "latency_buckets": list(stats.latency.buckets) if stats is not None else [0] * (len(LATENCY_BUCKETS) + 1),
    }


async def status_document(engine: Engine) -> dict[str, Any]:
    """What `/status.json` answers (see the module docstring)."""
    runtime = engine.runtime
    providers = await engine.list_providers(include_metrics=True)
    metrics = engine.metrics
    snapshot = metrics.snapshot(providers=runtime.config.providers)
    return {
        "now": time.time(),
        "config": engine.config_info(),
        "reload": {"last": metrics.last_reload, "ok": metrics.reloads_ok, "rejected": metrics.reloads_rejected},
        "totals": {
            key: snapshot[key]
            for key in (
                "total_requests",
                "success_requests",
                "failed_requests",
                "cancelled_requests",
                "cached_requests",
                "latency_ms",
            )
        },
        "latency_bounds": list(LATENCY_BUCKETS),
        "providers": [_provider(entry, engine) for entry in providers],
        "models": route_plans(runtime),
    }


async def status_json(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return JSONResponse(await status_document(engine), headers={"cache-control": "no-store"})


routes: list[Route] = [
    Route("/status", status_page, methods=["GET"]),
    Route("/status.json", status_json, methods=["GET"]),
]
