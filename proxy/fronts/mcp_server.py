"""The MCP server of the proxy: `McpFront` puts the engine (and its runtime's prompt templates) behind an SDK
`MCPServer`.

    front = McpFront(engine)
    await front.server.run_stdio_async()           # or mount front.server.streamable_http_app() (fronts/serve.py)
    reloader.listeners.append(front.on_reload)     # keep the prompts in step with config reloads

What it serves (protocol <-> engine only; no routing or policy here):
- the tools of `mcp_tools` (`complete_text`, `complete_chat`, `complete_template`, `list_providers`,
  `get_metrics`);
- every prompt template of the current runtime as an MCP prompt: `prompts/list` shows its description and
  arguments, `prompts/get` renders it (MCP prompts have no system role: a template's system text comes first, as its
  own user message). A bad or missing argument and an unknown prompt are JSON-RPC `invalid params` errors whose
  message names the problem, in both protocol eras (an uncaught exception would be an opaque internal error on
  2026-07-28). So are malformed `tools/call` and `prompts/get` parameters (a non-text name, `arguments` that is not
  an object, a prompt argument that is not text), which the SDK would refuse as a bare "Invalid request parameters".

Reloads: the engine swaps its runtime (templates included); `refresh()` (or `on_reload`, the reload-listener form)
re-registers the prompts and, when the list changed, `notify_prompts_changed()` tells clients in both eras:
`subscriptions/listen` streams (2026-07-28) through the server's subscription bus, and every open handshake-era
connection through its standalone channel (the SDK has no public broadcast for those, so the front remembers the
connections it has seen; each is forgotten when it closes).

Shutdown: `closing` refuses new tool calls; `drain(grace_period)` waits for the running ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.connection import Connection
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import AssistantMessage, Context, UserMessage
from mcp.server.mcpserver.prompts.base import Message as PromptMessage
from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import PromptsListChanged
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy import __version__
from proxy.config.suggest import clip, did_you_mean, quote_list
from proxy.engine import Engine
from proxy.errors import TemplateError
from proxy.fronts.mcp_tools import build_tools
from proxy.json_kinds import json_kind
from proxy.runtime import Runtime
from proxy.templates import PromptTemplates

log = logging.getLogger(__name__)

SERVER_NAME = "llm-proxy"
INSTRUCTIONS = (
    "An LLM proxy: complete_text, complete_chat and complete_template send requests to the LLM providers of its "
    "YAML config (with routing, fallbacks, rate limits and caching); list_providers shows the model names you can "
    "ask for; get_metrics shows its counters. Its prompt templates are also listed as MCP prompts."
)


class _TemplatePrompt(Prompt):
    """A prompt rendered by the templates module; errors become `invalid params` with the template's message."""

    async def render(self, arguments: dict[str, Any] | None, context: Context) -> list[PromptMessage]:
        try:
            return self.fn(arguments or {})
        except TemplateError as exc:
            data = {"prompt": self.name, "param": exc.param}
            raise MCPError(code=INVALID_PARAMS, message=str(exc), data=data) from None


def _params_problem(method: str, params: Any) -> str | None:
    """What is wrong with the shape of a `tools/call` or `prompts/get` request's params, in words, or None."""
    if params is None:
        return f"`{method}` needs params with a `name`"
    if not isinstance(params, Mapping):
        return f"the params of `{method}` must be an object, got {json_kind(params)}"
    what = "tool" if method == "tools/call" else "prompt"
    name = params.get("name")
    if name is None and "name" not in params:
        return f"`{method}` needs the {what}'s `name` (a string)"
    if not isinstance(name, str):
        return f"`{method}` needs the {what}'s `name` as a string, got {json_kind(name)}"
    arguments = params.get("arguments")
    if arguments is None:
        return None
    if not isinstance(arguments, Mapping):
        return f"the `arguments` of {what} `{clip(name)}` must be an object (name: value), got {json_kind(arguments)}"
    if method == "prompts/get":
        for key, value in arguments.items():
            if not isinstance(value, str) and value is not None:
                return (
                    f"prompt `{clip(name)}`: argument `{clip(key)}` must be a string, got {json_kind(value)} (MCP "
                    "prompt arguments are all strings; the `complete_template` tool takes any JSON value)"
                )
    return None


def _prompt_signature(templates: PromptTemplates) -> list[tuple[Any, ...]]:
    """What clients see of the prompts, to tell whether a reload changed them."""
    signature = []
    for name in templates.names():
        config = templates.get(name)
        arguments = tuple((a.name, a.description, a.required) for a in config.arguments)
        signature.append((name, config.description, arguments))
    return signature


class McpFront:
    """The MCP front: tools and prompts over one engine. See the module docstring."""

    def __init__(self, engine: Engine, *, name: str = SERVER_NAME) -> None:
        self.engine = engine
        self.closing = False
        self._in_flight = 0
        self._idle: anyio.Event | None = None
        self._legacy_connections: set[Connection] = set()
        self._prompts: list[tuple[Any, ...]] = []  # what clients were shown (see `_prompt_signature`)
        self.bus = InMemorySubscriptionBus()
        self.server: MCPServer = MCPServer(
            name, version=__version__, instructions=INSTRUCTIONS, tools=build_tools(self), subscriptions=self.bus
        )
        self.server.middleware.append(self._middleware)
        # Handshake-era clients are told `prompts.listChanged` only if the options say so (MCP_SDK.md §2, the
        # documented workaround); 2026-07-28 clients learn it from `subscriptions/listen` being served.
        lowlevel = self.server._lowlevel_server
        lowlevel.create_initialization_options = functools.partial(
            lowlevel.create_initialization_options, NotificationOptions(prompts_changed=True)
        )
        self._install_prompts(self.templates)

    @property
    def templates(self) -> PromptTemplates:
        """The current runtime's templates (they change with a reload)."""
        return self.engine.runtime.templates

    # --- prompts ----------------------------------------------------------------------------------------------

    def _render_prompt(self, name: str, arguments: dict[str, Any]) -> list[PromptMessage]:
        rendered = self.templates.render(name, arguments)
        return [
            AssistantMessage(message.text()) if message.role == "assistant" else UserMessage(message.text())
            for message in rendered.messages
        ]

    def _install_prompts(self, templates: PromptTemplates) -> None:
        """Make the prompts match `templates` (no await inside: clients never see a half-done list)."""
        for name, *_ in self._prompts:
            self.server.remove_prompt(name)
        self._prompts = _prompt_signature(templates)
        for name in templates.names():
            config = templates.get(name)
            render: Callable[[dict[str, Any]], list[PromptMessage]] = functools.partial(self._render_prompt, name)
            self.server.add_prompt(
                _TemplatePrompt(
                    name=name,
                    description=config.description or f"Prompt template `{name}`",
                    arguments=[
                        PromptArgument(name=a.name, description=a.description, required=a.required)
                        for a in config.arguments
                    ],
                    fn=render,
                )
            )

    async def refresh(self, engine: Engine | None = None) -> bool:
        """Serve on `engine` when given (the caller closes the one it replaces), and make the prompts match the
        current runtime's templates. Returns True when the prompt list changed, after notifying clients."""
        if engine is not None:
            self.engine = engine
        templates = self.templates
        changed = _prompt_signature(templates) != self._prompts
        self._install_prompts(templates)
        if changed:
            await self.notify_prompts_changed()
        return changed

    async def on_reload(self, old: Runtime, new: Runtime) -> None:
        """A config-reload listener (`Reloader.listeners`): the engine now serves `new`."""
        await self.refresh()

    async def notify_prompts_changed(self) -> None:
        """Send `prompts/list_changed` to every client that can receive it, in both protocol eras."""
        await self.bus.publish(PromptsListChanged())
        for connection in list(self._legacy_connections):
            try:
                await connection.outbound.notify("notifications/prompts/list_changed", None)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._legacy_connections.discard(connection)

    # --- middleware: prompt lookups and connection tracking -----------------------------------------------------

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> HandlerResult:
        if ctx.method in ("tools/call", "prompts/get") and ctx.request_id is not None:
            problem = _params_problem(ctx.method, ctx.params)
            if problem is not None:
                raise MCPError(code=INVALID_PARAMS, message=problem)
            name = ctx.params["name"]  # text: `_params_problem` checked it
            if ctx.method == "prompts/get" and name not in self.templates:
                known = quote_list(self.templates.names()) or "(none)"
                hint = did_you_mean(name, self.templates.names()).removeprefix("; ")
                hint = f" ({hint})" if hint else ""
                message = f"unknown prompt `{clip(name)}`{hint}; known prompts: {known}"
                raise MCPError(code=INVALID_PARAMS, message=message)
        connection = getattr(ctx.session, "_connection", None)  # private: no public way to reach it (see above)
        if (
            isinstance(connection, Connection)
            and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
            and connection not in self._legacy_connections
        ):
            self._legacy_connections.add(connection)
            connection.exit_stack.callback(self._legacy_connections.discard, connection)
        return await call_next(ctx)

    # --- in-flight calls and shutdown ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Tool calls running now."""
        return self._in_flight

    def call_started(self) -> None:
        self._in_flight += 1

    def call_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, grace_period: float) -> bool:
        """Refuse new tool calls and wait up to `grace_period` seconds for the running ones; True if none is left."""
        self.closing = True
        if self._in_flight:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace_period):
                await self._idle.wait()
        if self._in_flight:
            log.warning("%d tool call(s) still running after the %gs grace period", self._in_flight, grace_period)
        return self._in_flight == 0
