"""Broken templates never take the server down: a reload bringing a template with a syntax error, an undeclared
variable or an `{% include %}` of /etc/passwd is rejected with a clear message while the served prompts keep
working; a template that reaches for Python internals fails at render with a clear error and the others still
render."""

from __future__ import annotations

import pytest
from mcp import Client, MCPError

from proxy.config import load_config
from proxy.engine import Engine
from proxy.fronts.mcp_server import McpFront
from proxy.reload import Reloader
from proxy.runtime import Runtime

MODES = ("auto", "legacy")
CONFIG = """
version: 1
providers:
  mock: {{type: mock, mock: {{echo: true}}}}
models:
  default: {{targets: [{{provider: mock, model: m}}]}}
templates:
  greet:
    text: "Hello {{{{ name }}}}"
    arguments: {{name: {{required: true}}}}
  internals:
    text: "{{{{ name.__class__.__mro__ }}}}"
    arguments: {{name: {{required: true}}}}
{extra}
"""
BROKEN = {
    "syntax error": '  bad:\n    text: "Hello {{ name"\n    arguments: {name: {required: true}}',
    "undeclared variable": '  bad:\n    text: "Hello {{ nmae }}"\n    arguments: {name: {required: true}}',
    "reads a file": "  bad:\n    text: \"{% include '/etc/passwd' %}\"",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(BROKEN))
async def test_a_broken_template_in_a_reload_is_rejected_and_the_prompts_keep_serving(tmp_path, mode, fault):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(extra=""))
    engine = Engine(Runtime.build(load_config(path)))
    front = McpFront(engine)
    reloader = Reloader(engine, path, grace_period=0)
    try:
        path.write_text(CONFIG.format(extra=BROKEN[fault]))
        assert await reloader.reload() is False
        assert "templates.bad" in reloader.last_error
        async with Client(front.server, mode=mode) as client:
            names = [p.name for p in (await client.list_prompts()).prompts]
            assert names == ["greet", "internals"]
            rendered = await client.get_prompt("greet", {"name": "Ada"})
            assert rendered.messages[-1].content.text == "Hello Ada"
            result = await client.call_tool("complete_template", {"template": "greet", "arguments": {"name": "Bo"}})
            assert not result.is_error and "Hello Bo" in result.content[0].text
            assert result.structured_content["config_version"] == engine.runtime.config.version_hash
    finally:
        await reloader.aclose()
        await engine.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_a_template_reaching_for_internals_fails_clearly_and_the_others_render(tmp_path, mode):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(extra=""))
    engine = Engine(Runtime.build(load_config(path)))
    front = McpFront(engine)
    try:
        async with Client(front.server, mode=mode) as client:
            result = await client.call_tool("complete_template", {"template": "internals", "arguments": {"name": "x"}})
            assert result.is_error
            text = result.content[0].text
            assert "internals" in text and "__class__" in text and "Traceback" not in text
            with pytest.raises(MCPError, match="internals"):
                await client.get_prompt("internals", {"name": "x"})
            assert (await client.get_prompt("greet", {"name": "Ada"})).messages[-1].content.text == "Hello Ada"
    finally:
        await engine.aclose()
