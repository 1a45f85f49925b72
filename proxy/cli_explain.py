"""`llm-proxy explain`: the effective route plan of one model (or all), and dry runs of one request.

    llm-proxy explain [MODEL] [--request FILE|-] [--format text|json]

Without `--request`: each model's strategy, its targets in order with weights (and traffic shares), context windows,
which are disabled and why, the timeouts, rate limits and breaker that apply to each, the cache and retry policy,
and the fallback chain. With `--request` (an OpenAI chat body from a file, or `-` for stdin; MODEL, when given,
replaces its `model`): the prompt's token estimate, which targets it fits, the order they would be tried in, and
whether the answer would be cached. Nothing is sent to a provider.

Exit 0 on success; 1 for an invalid config, an unknown model or a bad request body (the message on stderr);
2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from proxy.config.durations import format_duration
from proxy.config.load import check_config_file
from proxy.errors import ConfigError, ProxyError
from proxy.explain import dry_run, route_plan, route_plans
from proxy.runtime import Runtime
from proxy.types import ChatRequest


class ExplainError(Exception):
    """Something the user must fix (config, model name, request body); the message says what."""


def add_parser(commands: argparse._SubParsersAction, config_option) -> None:
    explain = commands.add_parser(
        "explain",
        help="print the effective route plan of a model (or dry-run one request); nothing is sent",
        description="Print the route plan the engine will use for MODEL (default: every model), or with --request "
        "dry-run one OpenAI chat body: its token estimate, the targets it fits, their order, and cacheability.",
    )
    config_option(explain, top=False)
    explain.add_argument("model", nargs="?", metavar="MODEL", help="a model name from the config (default: all)")
    explain.add_argument(
        "--request", metavar="FILE", help="an OpenAI chat request body (JSON) to dry-run; `-` reads stdin"
    )
    explain.add_argument("--format", choices=("text", "json"), default="text", help="output format")


# --- text ------------------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:g}"


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share * 100:.3g}%"


def _limits_text(limits: dict[str, Any] | None) -> str:
    if limits is None:
        return "none"
    parts = []
    if limits["requests_per_minute"]:
        parts.append(f"{_num(limits['requests_per_minute'])} requests/min")
    if limits["tokens_per_minute"]:
        parts.append(f"{_num(limits['tokens_per_minute'])} tokens/min")
    if limits["concurrency"]:
        parts.append(f"{limits['concurrency']} at once")
    return ", ".join(parts) + f" (wait up to {format_duration(limits['max_wait'])})"


def _window_text(target: dict[str, Any]) -> str:
    window = target["context_window"]
    if window is None:
        return "context window unknown (no check)"
    source = " (known model)" if target["context_window_source"] == "known model" else ""
    text = f"context {window:,}{source}"
    if target["max_output_tokens"]:
        text += f", max output {target['max_output_tokens']:,}"
    return text


def _breaker_text(breaker: dict[str, Any]) -> str:
    text = f"breaker {breaker['state']}"
    if breaker["state"] != "closed" and breaker["next_probe_in"] is not None:
        text += f" (next probe in {breaker['next_probe_in']:.0f}s)"
    opens = f"opens after {breaker['failures']} failures in a row"
    if breaker["error_rate"] is not None:
        opens += f" or {breaker['error_rate']:.0%} errors over {format_duration(breaker['window'])}"
    return f"{text}; {opens}, probes after {format_duration(breaker['cooldown'])}"


def _cache_text(cache: dict[str, Any]) -> str:
    when = cache["when"]
    if when == "never":
        reason = "backend `none`" if cache["backend"] == "none" else "off"
        return f"not cached ({reason})"
    what = "every request" if when == "always" else "deterministic requests (temperature 0 or a seed)"
    return f"{what} for {format_duration(cache['ttl'])} ({cache['backend']})"


def plan_text(plan: dict[str, Any]) -> str:
    """One model's plan as an indented block."""
    default = ", the default model" if plan["default"] else ""
    lines = [f"model `{plan['model']}`{default}: {plan['strategy']}, {plan['order']}"]
    if plan["description"]:
        lines.append(f"  {plan['description']}")
    for number, target in enumerate(plan["targets"], 1):
        weight = ""
        if plan["strategy"] == "weighted":
            weight = f"weight {_num(target['weight'])} = "
        if target["share"] is not None:
            weight += f"{_percent(target['share'])} of traffic"
            if target["live_share"] != target["share"]:
                weight += f" ({_percent(target['live_share']) or 'none'} while some targets are unavailable)"
            weight += "; "
        lines.append(f"  {number}. {target['label']} [{target['provider_type']}]  {weight}{_window_text(target)}")
        if not target["enabled"]:
            lines.append(f"     DISABLED: {target['disabled_reason']}")
        timeout = target["timeout"]
        lines.append(
            f"     timeouts: connect {format_duration(timeout['connect'])}, first token "
            f"{format_duration(timeout['first_token'])}, total {format_duration(timeout['total'])}; "
            f"{_breaker_text(target['breaker'])}"
        )
        limits = target["limits"]
        scopes = f"provider {_limits_text(limits['provider'])}"
        if limits["target"] is not None:
            scopes += f"; this target {_limits_text(limits['target'])}"
        lines.append(f"     rate limits: {scopes}")
    if plan["available_targets"] == 0:
        lines.append("  ! no target is available: requests go straight to the fallback chain, or fail")
    for fallback in plan["fallbacks"]:
        targets = ", ".join(
            t["label"] + (" (already tried)" if t["already_tried"] else "") + ("" if t["enabled"] else " (disabled)")
            for t in fallback["targets"]
        )
        lines.append(f"  then fallback `{fallback['model']}` ({fallback['strategy']}): {targets}")
    if not plan["fallbacks"]:
        lines.append("  no fallback model")
    retry = plan["retry"]
    lines.append(f"  cache: {_cache_text(plan['cache'])}")
    lines.append(
        f"  retry: up to {retry['max_attempts']} attempts per target, backoff "
        f"{format_duration(retry['initial_backoff'])} doubling to {format_duration(retry['max_backoff'])} "
        f"({retry['jitter']} jitter), "
        f"{format_duration(retry['deadline'])} deadline for the whole chain"
    )
    return "\n".join(lines) + "\n"


def dry_run_text(run: dict[str, Any]) -> str:
    chain = f", then {' -> '.join(f'`{m}`' for m in run['fallback_chain'])}" if run["fallback_chain"] else ""
    temperature = "unset" if run["temperature"] is None else _num(run["temperature"])
    lines = [
        f"request for `{run['model']}`: route `{run['route']}`{chain}",
        f"  prompt about {run['prompt_tokens']:,} tokens; max_tokens {run['max_tokens']}; temperature {temperature}; "
        f"{'streamed' if run['stream'] else 'not streamed'}",
    ]
    tried = [c for c in run["candidates"] if c["position"] is not None]
    if tried:
        lines.append("  would try, in order:")
        for c in tried:
            clamp = "" if c["max_tokens"] == run["max_tokens"] else f" (max_tokens lowered to {c['max_tokens']})"
            lines.append(f"    {c['position']}. {c['target']} (model `{c['model']}`){clamp}")
    else:
        lines.append("  no target can take this request: it would fail with the reasons below")
    skipped = [c for c in run["candidates"] if c["skip"] is not None]
    if skipped:
        lines.append("  skipped:")
        lines.extend(f"    - {c['target']} (model `{c['model']}`): {c['skip']}" for c in skipped)
    cache = run["cache"]
    if cache["cacheable"]:
        lines.append(f"  cache: cacheable for {format_duration(cache['ttl'])} ({cache['reason']})")
    else:
        lines.append(f"  cache: not cacheable ({cache['reason']})")
    return "\n".join(lines) + "\n"


# --- running ---------------------------------------------------------------------------------------------


def read_request(source: str, model: str | None) -> ChatRequest:
    """The request body in `source` (a path, or `-` for stdin) as a `ChatRequest`; `model` replaces its model."""
    from proxy.fronts.http_common import BodyError
    from proxy.fronts.openai_inbound import parse_chat_request

    where = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ExplainError(f"{where}: cannot read the request: {reason}") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ExplainError(f"{where}: the request is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ExplainError(f"{where}: the request must be a JSON object (an OpenAI chat completions body)")
    if model is not None:
        body["model"] = model
    try:
        return parse_chat_request(body).request
    except BodyError as exc:
        raise ExplainError(f"{where}: {exc.message}") from None


async def explain(config_path: str | None, model: str | None, request: ChatRequest | None) -> Any:
    """The JSON document `explain` prints: a dry run, one plan, or a list of plans."""
    result = check_config_file(config_path)
    if result.config is None:
        raise ExplainError(str(ConfigError(result.issues)))
    runtime = Runtime.build(result.config)
    try:
        if request is not None:
            return dry_run(runtime, request)
        return route_plan(runtime, model) if model is not None else route_plans(runtime)
    except ProxyError as exc:
        raise ExplainError(f"error: {exc}") from None
    finally:
        await runtime.aclose()


def cmd_explain(args: argparse.Namespace, config_path: str | None) -> int:
    try:
        request = read_request(args.request, args.model) if args.request else None
        document = asyncio.run(explain(config_path, args.model, request))
    except ConfigError as exc:  # a provider that cannot be built
        print(str(exc), file=sys.stderr)
        return 1
    except ExplainError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.format == "json":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.request:
        sys.stdout.write(dry_run_text(document))
    else:
        plans = document if isinstance(document, list) else [document]
        sys.stdout.write("\n".join(plan_text(plan) for plan in plans))
    return 0
