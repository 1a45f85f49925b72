"""What the MCP tools return: the structured output models, and the `CallToolResult`s for answers and failures.

Success: text content (the answer itself, what a model reads) plus structured content matching the tool's output
schema. Failure: an `isError` result whose text says what went wrong in the user's terms, built from the proxy's
error tree (unknown model -> the known names; every target failed -> each target's reason; rate limited -> when
to retry; a bad argument -> which one; a stream cut off -> the partial output, marked incomplete). The same facts
go machine-readable into the result's `_meta` under `ERROR_META_KEY`. Never a traceback, never a secret (the
messages come from `ProxyError`s, which carry none).

Imports pydantic and the MCP types; nothing from the engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.config.suggest import clip
from proxy.errors import (
    AllTargetsFailed,
    ProxyError,
    RateLimited,
    RequestError,
    StreamInterrupted,
    TemplateError,
    UnknownModel,
    UpstreamError,
)
from proxy.types import ChatResponse

ERROR_META_KEY = "llm-proxy/error"
MAX_PARTIAL_CHARS = 20_000  # partial output quoted in a truncated-stream error (the rest is counted, not shown)


# --- structured output ------------------------------------------------------------------------------------


class TokenUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens (including cached ones), as the provider counted them")
    output_tokens: int = Field(description="Generated tokens")


class AttemptInfo(BaseModel):
    target: str = Field(description="`provider/model` of the attempt (config names)")
    attempt: int = Field(description="1-based attempt number on that target")
    error_kind: str | None = Field(description="How it failed (`rate_limited`, `timeout`, ...); null if it answered")
    status: int | None = Field(description="The upstream HTTP status, when there was one")
    message: str | None = Field(description="What went wrong, for a failed attempt")
    delay: float = Field(description="Seconds waited before the next attempt")


class Completion(BaseModel):
    """The structured result of `complete_text`, `complete_chat` and `complete_template`."""

    text: str = Field(description="The generated text")
    model: str = Field(description="The upstream model id that answered")
    provider: str = Field(description="The provider that answered (its name in the proxy's config)")
    route: str = Field(description="The configured model name the request resolved to (e.g. `default`)")
    finish_reason: str | None = Field(description="`stop`, `length`, `tool_calls` or `content_filter`")
    usage: TokenUsage
    cost: float = Field(description="Cost in USD from the provider's configured pricing (0 when unpriced or cached)")
    cached: bool = Field(description="Served from the proxy's response cache (no upstream call)")
    attempts: list[AttemptInfo] = Field(description="Every upstream attempt in order; the answering one last")
    latency_ms: float = Field(description="Time the proxy took, in milliseconds")
    config_version: str = Field(description="Version (content hash) of the proxy config that served the request")


class ConfigInfo(BaseModel):
    version: str = Field(description="Short hash of the config file's content")
    loaded_at: str = Field(description="When this config version was loaded (ISO 8601, UTC)")
    path: str | None = Field(description="The config file (null for a config built in memory)")


class ModelEntry(BaseModel):
    name: str = Field(description="The name to pass as `model`")
    default: bool = Field(description="Used when a request names no model")
    strategy: str = Field(description="How it routes among its targets")
    targets: list[str] = Field(description="Its targets as `provider/model`, in config order")
    fallback: str | None = Field(description="The model tried when every target failed")
    description: str | None = None


class ProviderEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str = Field(description="openai | anthropic | openai_compatible | mock | python")
    enabled: bool
    disabled_reason: str | None = Field(description="Why the provider is disabled (e.g. an unset key variable)")
    models: list[str] = Field(description="Upstream model ids the config routes to on this provider")
    limits: dict[str, Any] = Field(description="Rate-limit settings and current headroom")
    breaker: dict[str, Any] = Field(description="Circuit breaker: `state` (closed, open, half_open) per target")
    metrics: dict[str, Any] | None = Field(default=None, description="Per-provider counters (`include_metrics`)")


class ProvidersReport(BaseModel):
    """The structured result of `list_providers`."""

    config: ConfigInfo
    models: list[ModelEntry] = Field(description="The model names clients can ask for")
    providers: list[ProviderEntry]


class MetricsReport(BaseModel):
    """The structured result of `get_metrics` (DESIGN.md "Telemetry"; more keys follow the listed ones)."""

    model_config = ConfigDict(extra="allow")

    total_requests: int = Field(
        description="Client completion requests (= success_requests + failed_requests + cancelled_requests)"
    )
    success_requests: int
    failed_requests: int
    cancelled_requests: int = Field(
        description="Requests whose client went away (disconnected or cancelled) before the answer was complete"
    )
    provider_usage: dict[str, int] = Field(description="Attempts sent to each provider")
    provider_errors: dict[str, int] = Field(description="Failed attempts per provider")
    provider_metrics: dict[str, dict[str, Any]] = Field(description="Per-provider counters and latency percentiles")


# --- successes ----------------------------------------------------------------------------------------------


def completion_result(response: ChatResponse) -> CallToolResult:
    """The answer as text content, with every field of `Completion` as structured content."""
    usage = response.usage
    completion = Completion(
        text=response.text or "",
        model=response.model,
        provider=response.provider,
        route=response.route,
        finish_reason=response.finish_reason,
        usage=TokenUsage(
            input_tokens=usage.input_tokens if usage else 0, output_tokens=usage.output_tokens if usage else 0
        ),
        cost=response.cost,
        cached=response.cached,
        attempts=[AttemptInfo.model_validate(attempt.as_dict()) for attempt in response.attempts],
        latency_ms=round(response.latency_ms, 3),
        config_version=response.config_version,
    )
    return CallToolResult(
        content=[TextContent(type="text", text=completion.text)],
        structured_content=completion.model_dump(mode="json"),
    )


def report_result(report: BaseModel) -> CallToolResult:
    """A report (`list_providers`, `get_metrics`): pretty JSON as text, the same object as structured content."""
    data = report.model_dump(mode="json", exclude_none=False)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, indent=2, ensure_ascii=False))],
        structured_content=data,
    )


# --- failures -----------------------------------------------------------------------------------------------


def error_result(message: str, **details: Any) -> CallToolResult:
    """An `isError` result: `message` as text, `details` (JSON-able, secret-free) under `_meta[ERROR_META_KEY]`."""
    meta = {ERROR_META_KEY: {"message": message, **details}}
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True, _meta=meta)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{round(value)} s"


def _describe(error: ProxyError) -> str:
    return error.describe() if isinstance(error, UpstreamError) else str(error)


def proxy_error_result(error: ProxyError) -> CallToolResult:
    """The tool error for a `ProxyError` raised by the engine or the templates."""
    if isinstance(error, StreamInterrupted):
        return truncated_result(error.partial_text, error)
    retry_after = getattr(error, "retry_after", None)
    details: dict[str, Any] = {"type": type(error).__name__, "status": error.status_code}
    if isinstance(error, AllTargetsFailed):
        lines = [f"All targets of model `{error.model}` failed:"]
        lines += [f"- {label}: {_describe(failure)}" for label, failure in error.failures]
        if not error.failures:
            lines.append("- no target was available")
        details["failures"] = [
            {"target": label, "error": type(failure).__name__, "message": str(failure)}
            for label, failure in error.failures
        ]
        message = "\n".join(lines)
    elif isinstance(error, UnknownModel):
        message = str(error)
        details["known_models"] = list(error.known)
    elif isinstance(error, RateLimited):
        message = f"Rate limited: {error}"
    elif isinstance(error, UpstreamError):
        message = f"The upstream provider failed: {error.describe()}"
    else:
        message = str(error)
    if retry_after is not None:
        message += f"\nRetry after {_seconds(retry_after)}."
        details["retry_after"] = retry_after
    if isinstance(error, RequestError) and error.param:
        details["param"] = error.param
    if isinstance(error, TemplateError):
        details["template"] = error.template
    return error_result(message, **details)


def truncated_result(partial: str, error: ProxyError) -> CallToolResult:
    """A stream that failed after its output started: an error naming the partial output, never a clean result."""
    reason = _describe(error)
    shown = partial[:MAX_PARTIAL_CHARS]
    more = f" (first {len(shown)} shown)" if len(shown) < len(partial) else ""
    message = (
        f"The answer was cut off after {len(partial)} characters: {reason}\nPartial output (incomplete){more}:\n{shown}"
    )
    return error_result(
        message, type="StreamInterrupted", status=error.status_code, partial_text=shown, partial_chars=len(partial)
    )


def shutting_down_result() -> CallToolResult:
    return error_result("The proxy is shutting down and takes no new requests; retry shortly.", type="ShuttingDown")


def internal_error_result(tool: str, error: BaseException) -> CallToolResult:
    """A bug in the proxy: say so without its text (which could carry anything); the traceback is in the log."""
    return error_result(
        f"`{tool}` failed because of an internal error in the proxy ({type(error).__name__}); "
        "the details are in the proxy's log.",
        type="InternalError",
    )


# --- argument validation ------------------------------------------------------------------------------------


def _argument_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) > 60:
        value = value[:60]  # not the whole of a megabyte string
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # nested too deeply, or a circular value
        return f"a {type(value).__name__}"
    return clip(text)


def argument_problems(tool: str, error: ValidationError) -> list[tuple[str, str]]:
    """(argument path, message) for each problem pydantic found in `tool`'s arguments."""
    problems = []
    for item in error.errors(include_url=False):
        # Union members add a type tag to the location (`str`, `function-after[...]`): keep the argument part.
        loc = [part for part in item["loc"] if isinstance(part, int) or part.isidentifier()]
        loc = [part for part in loc if part not in {"str", "int", "float", "bool", "none", "list", "dict"}]
        path = _argument_path(loc) or "arguments"
        if item["type"] == "missing":
            problems.append((path, f"`{tool}` needs the argument `{path}`"))
        elif item["type"] == "extra_forbidden" and len(loc) > 1:
            parent = _argument_path(loc[:-1])
            problems.append((path, f"invalid argument `{parent}` for `{tool}`: unknown key `{clip(loc[-1])}`"))
        else:
            msg = item["msg"][0].lower() + item["msg"][1:]
            problems.append((path, f"invalid argument `{path}` for `{tool}`: {msg} (got {_shown(item.get('input'))})"))
    seen: set[tuple[str, str]] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]


MAX_LISTED_PROBLEMS = 10  # a call with thousands of bad arguments gets a readable answer, not megabytes


def invalid_arguments_result(problems: Sequence[tuple[str, str]]) -> CallToolResult:
    """One line per (argument path, message), the first `MAX_LISTED_PROBLEMS` of them; `_meta` names the
    arguments (`param` is the first)."""
    lines = [message for _, message in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more problems with the arguments")
    return error_result(
        "\n".join(lines),
        type="InvalidArguments",
        status=400,
        param=problems[0][0][:100] if problems else None,
        params=[path[:100] for path, _ in problems[:MAX_LISTED_PROBLEMS]],
        problems=len(problems),
    )
