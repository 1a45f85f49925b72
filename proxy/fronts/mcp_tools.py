"""The five MCP tools: `complete_text`, `complete_chat`, `complete_template`, `list_providers`, `get_metrics`.

Each tool is a small async function whose typed, documented signature is its input schema and whose
`Annotated[CallToolResult, Model]` return is its output schema (`tool_results`). They read the front's current
engine once per call (the engine reads its runtime once per request, so a reload never changes a call midway).

`ProxyTool` wraps every call the same way, so the functions only say what the tool does:
- arguments are checked first: an unknown argument (with did-you-mean) or a value of the wrong type or range gives
  an `isError` result naming the argument, in words rather than pydantic's dump (pydantic's lax mode converts
  `"5"` to 5, but `true` is not taken for a number, nor a message object with keys it does not know);
- while the server shuts down, new calls are refused (`McpFront.closing`) and running ones are counted, so the
  shutdown can wait for them;
- a `ProxyError` becomes the tool error of `tool_results.proxy_error_result`; anything else is a bug: logged with
  its traceback, reported without its text;
- each call gets its own request id (`proxy.logs.request_id`), so its log lines (the engine's request line
  included) and its `proxy.request` span carry it. The MCP SDK opens the `tools/call <name>` span itself (MCP_SDK.md
  section 7); the engine's span nests under it because the SDK's tracer follows `proxy.telemetry`.

Streaming (`stream: true`): the engine's stream is read to its end; each text delta goes to the client as a
progress notification (`message` = the delta, `progress` = characters so far), a no-op when the client sent no
progress token; the result carries the whole text. A failure after output started is an error result quoting the
partial output. When the client cancels, the SDK cancels this task; the `finally` closes the engine stream, which
cancels the upstream call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from proxy import logs
from proxy.config.suggest import clip, did_you_mean
from proxy.errors import ProxyError, RequestError
from proxy.fronts.fields import MAX_TOKENS
from proxy.fronts.tool_results import (
    Completion,
    ConfigInfo,
    MetricsReport,
    ModelEntry,
    ProviderEntry,
    ProvidersReport,
    argument_problems,
    completion_result,
    internal_error_result,
    invalid_arguments_result,
    proxy_error_result,
    report_result,
    shutting_down_result,
    truncated_result,
)
from proxy.ids import random_hex
from proxy.types import ChatRequest, Message

if TYPE_CHECKING:
    from proxy.engine import Engine
    from proxy.fronts.mcp_server import McpFront

log = logging.getLogger(__name__)

# --- argument types (their descriptions are what a model reads in the input schema) ----------------------------

ModelArg = Annotated[
    str | None,
    Field(
        description="Model name from the proxy's config (`list_providers` lists them under `models`). "
        "Omit it to use the config's default model."
    ),
]


def _not_a_boolean(value: Any) -> Any:
    """Lax mode reads `true` as 1: a boolean is not a number here."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not true or false")
    return value


def _token_count(value: int | None) -> int | None:
    if value is not None and value > MAX_TOKENS:
        raise PydanticCustomError("less_than_equal", "Input should be at most {limit}", {"limit": MAX_TOKENS})
    return value


NoBoolean = BeforeValidator(_not_a_boolean)
TokenCount = AfterValidator(_token_count)  # a validator, not `le=`: the input schema stays as clients know it
MaxTokensArg = Annotated[
    int | None,
    Field(ge=1, description="Maximum tokens to generate (default: the config's `defaults.max_tokens`)"),
    NoBoolean,
    TokenCount,
]
TemperatureArg = Annotated[
    float | None, Field(ge=0, le=2, description="Sampling temperature, 0 to 2 (default: the provider's)"), NoBoolean
]
StreamArg = Annotated[
    bool,
    Field(
        description="Stream the answer: text deltas arrive as progress notifications (send a progress token) "
        "while the result still carries the whole text."
    ),
]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")  # `{"role": "user", "text": "..."}` names `text`, not just `content`

    role: Literal["system", "user", "assistant"] = Field(description="Who says it")
    content: str = Field(description="The message text")


_COMPLETE_ANNOTATIONS = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)
_REPORT_ANNOTATIONS = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


# --- the call wrapper -----------------------------------------------------------------------------------------


class ProxyTool(Tool):
    """A tool whose calls are checked, counted and mapped to user-facing errors (see the module docstring)."""

    front: Any = Field(default=None, exclude=True)

    def _problems(self, arguments: dict[str, Any]) -> list[tuple[str, str]]:
        fields = self.fn_metadata.arg_model.model_fields
        known = [field.alias or name for name, field in fields.items()]
        problems = []
        for key in arguments:
            if key not in known:
                hint = did_you_mean(key, known).removeprefix("; ")
                hint = f" ({hint})" if hint else ""
                listing = ", ".join(f"`{name}`" for name in known)
                problems.append(
                    (key, f"unknown argument `{clip(key)}` for `{self.name}`{hint}; its arguments: {listing}")
                )
        try:
            self.fn_metadata.validate_arguments(arguments)
        except ValidationError as exc:
            problems += argument_problems(self.name, exc)
        return problems

    async def run(self, arguments: dict[str, Any], context: Context, convert_result: bool = False) -> Any:
        problems = self._problems(arguments)
        if problems:
            return invalid_arguments_result(problems)
        front: McpFront = self.front
        if front.closing:
            return shutting_down_result()
        front.call_started()
        token = logs.request_id.set(f"req_{random_hex()}")
        try:
            return await super().run(arguments, context, convert_result=convert_result)
        except ToolError as exc:  # the SDK wraps what the function raised; `__cause__` is the original
            cause = exc.__cause__
            if isinstance(cause, ProxyError):
                return proxy_error_result(cause)
            log.error("tool %s failed", self.name, exc_info=cause or exc)
            return internal_error_result(self.name, cause or exc)
        finally:
            logs.request_id.reset(token)
            front.call_finished()


def _tool(front: McpFront, fn: Callable[..., Any], name: str, title: str, annotations: ToolAnnotations) -> ProxyTool:
    tool = ProxyTool.from_function(fn, name=name, title=title, annotations=annotations)
    tool.front = front
    return tool


# --- running a completion -------------------------------------------------------------------------------------


async def run_completion(
    engine: Engine, ctx: Context, request: ChatRequest, *, stream: bool, template_version: str | None = None
) -> CallToolResult:
    """Complete `request` on `engine`; with `stream`, send text deltas as progress notifications."""
    if not stream:
        return completion_result(await engine.complete(request, template_version=template_version))
    chunks = engine.stream(request, template_version=template_version)
    parts: list[str] = []
    sent = 0
    try:
        async for chunk in chunks:
            if chunk.text:
                parts.append(chunk.text)
                sent += len(chunk.text)
                await ctx.report_progress(sent, None, chunk.text)
    except ProxyError as exc:
        if parts:
            return truncated_result("".join(parts), exc)
        raise
    finally:
        with anyio.CancelScope(shield=True):  # also when cancelled: closing the stream cancels the upstream call
            await chunks.aclose()
    if chunks.response is None:  # the engine's contract: set after a clean end
        raise RuntimeError("the engine stream ended without a response")
    return completion_result(chunks.response)


def _chat_messages(messages: list[ChatMessage]) -> tuple[Message, ...]:
    if not any(m.role != "system" for m in messages):
        raise RequestError("`messages` needs at least one user or assistant message", param="messages")
    return tuple(Message(m.role, m.content) for m in messages)


# --- the tools ------------------------------------------------------------------------------------------------


def build_tools(front: McpFront) -> list[Tool]:
    """The proxy's MCP tools, bound to `front` (which holds the current engine)."""

    async def complete_text(
        ctx: Context,
        prompt: Annotated[str, Field(min_length=1, description="The prompt, sent as one user message")],
        model: ModelArg = None,
        max_tokens: MaxTokensArg = None,
        temperature: TemperatureArg = None,
        stream: StreamArg = False,
        system: Annotated[str | None, Field(description="An optional system prompt")] = None,
    ) -> Annotated[CallToolResult, Completion]:
        """Send a prompt to an LLM through the proxy (routing, fallbacks, rate limits and cache as configured) and
        return its answer: the text, plus which provider and model answered, token usage, cost, whether it came
        from the cache, every attempt made and the latency."""
        request = ChatRequest.from_prompt(
            prompt, system=system, model=model, max_tokens=max_tokens, temperature=temperature
        )
        return await run_completion(front.engine, ctx, request, stream=stream)

    async def complete_chat(
        ctx: Context,
        messages: Annotated[
            list[ChatMessage], Field(min_length=1, description="The conversation so far, oldest first")
        ],
        model: ModelArg = None,
        max_tokens: MaxTokensArg = None,
        temperature: TemperatureArg = None,
        stream: StreamArg = False,
    ) -> Annotated[CallToolResult, Completion]:
        """Continue a conversation (system, user and assistant messages) with an LLM through the proxy and return
        the next assistant message, with the same details as `complete_text`."""
        request = ChatRequest(
            messages=_chat_messages(messages), model=model, max_tokens=max_tokens, temperature=temperature
        )
        return await run_completion(front.engine, ctx, request, stream=stream)

    async def complete_template(
        ctx: Context,
        template: Annotated[str, Field(description="Template name (the templates are this server's MCP prompts)")],
        arguments: Annotated[
            dict[str, Any] | None,
            Field(description="The template's arguments, name -> value (see the prompt's arguments)"),
        ] = None,
        model: Annotated[str | None, Field(description="Overrides the template's model")] = None,
        max_tokens: Annotated[
            int | None, Field(ge=1, description="Overrides the template's max_tokens"), NoBoolean, TokenCount
        ] = None,
        temperature: Annotated[
            float | None, Field(ge=0, le=2, description="Overrides the template's temperature"), NoBoolean
        ] = None,
        stream: StreamArg = False,
    ) -> Annotated[CallToolResult, Completion]:
        """Render one of the proxy's prompt templates with `arguments` and complete it; the template's model
        settings apply unless overridden. Unknown templates and missing or unknown arguments are reported by name."""
        engine = front.engine
        rendered = engine.runtime.templates.render(template, arguments or {})
        request = rendered.to_request(model=model, max_tokens=max_tokens, temperature=temperature)
        return await run_completion(engine, ctx, request, stream=stream, template_version=rendered.version)

    async def list_providers(
        include_metrics: Annotated[bool, Field(description="Add each provider's request counters")] = False,
    ) -> Annotated[CallToolResult, ProvidersReport]:
        """List the configured model names and every provider: its type, models, whether it is enabled (and why
        not), circuit-breaker state, rate limits with current headroom; plus the config version and when it was
        loaded. Never shows a key."""
        engine = front.engine
        config = engine.runtime.config
        models = [
            ModelEntry(
                name=name,
                default=name == config.defaults.model,
                strategy=model.strategy,
                targets=[f"{t.provider}/{t.model}" for t in model.targets],
                fallback=model.fallback,
                description=model.description,
            )
            for name, model in config.models.items()
        ]
        providers = await engine.list_providers(include_metrics=include_metrics)
        return report_result(
            ProvidersReport(
                config=ConfigInfo.model_validate(engine.config_info()),
                models=models,
                providers=[ProviderEntry.model_validate(entry) for entry in providers],
            )
        )

    async def get_metrics(
        provider: Annotated[
            str | None, Field(description="Limit the per-provider parts to this provider (its config name)")
        ] = None,
    ) -> Annotated[CallToolResult, MetricsReport]:
        """The proxy's counters since it started: requests (total, succeeded, failed), attempts and errors per
        provider, latency percentiles, cache hits, fallbacks, retries, rate-limit waits and config reloads."""
        return report_result(MetricsReport.model_validate(front.engine.metrics_snapshot(provider)))

    return [
        _tool(front, complete_text, "complete_text", "Complete a prompt", _COMPLETE_ANNOTATIONS),
        _tool(front, complete_chat, "complete_chat", "Complete a chat", _COMPLETE_ANNOTATIONS),
        _tool(front, complete_template, "complete_template", "Complete a prompt template", _COMPLETE_ANNOTATIONS),
        _tool(front, list_providers, "list_providers", "List providers and models", _REPORT_ANNOTATIONS),
        _tool(front, get_metrics, "get_metrics", "Proxy metrics", _REPORT_ANNOTATIONS),
    ]
