"""Template safety: expressions that would build a huge value fail before doing the work, with an error naming the
template and line (to `render`, MCP in-process and over HTTP); ordinary uses still work; `{% include %}` and
friends fail `llm-proxy validate` with the template and line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mcp import Client, MCPError

from proxy.cli import main
from proxy.config import load_config, load_config_text
from proxy.config.model import TemplateConfig
from proxy.config.template_sandbox import (
    MAX_ITEMS,
    MAX_NUMBER_DIGITS,
    MAX_RENDER_STEPS,
    MAX_TEXT_CHARS,
    printed_size,
)
from proxy.engine import Engine
from proxy.errors import TemplateError
from proxy.fronts.mcp_server import McpFront
from proxy.runtime import Runtime
from proxy.templates import MAX_RENDERED_BYTES, PromptTemplates
from tests.http_server import serve_mcp_http

ROOT = Path(__file__).resolve().parents[1]
MODES = ("auto", "legacy")
TEXT = f"would be longer than {MAX_TEXT_CHARS:,} characters"
ITEMS = f"would have more than {MAX_ITEMS:,} items"
DIGITS = f"would be a number with more than {MAX_NUMBER_DIGITS:,} digits"
NS = "{% set ns = namespace(s='x') %}"
BIG = "{% set s = 'x' * 1000000 %}"


def _templates(text: str) -> PromptTemplates:
    """Template `t` (inline `text`, no arguments) built by the runtime, as the server builds it."""
    config = load_config(ROOT / "examples" / "offline.yaml", env={})
    return PromptTemplates.from_config(
        dataclasses.replace(config, templates={"t": TemplateConfig(name="t", text=text)})
    )


def _error(text: str) -> str:
    with pytest.raises(TemplateError) as caught:
        _templates(text).render("t", {})
    return str(caught.value)


def test_the_limits_are_the_output_cap():
    assert MAX_TEXT_CHARS == MAX_RENDERED_BYTES == 1024 * 1024
    assert _templates("{{ 'x' * 1048576 }}").render("t", {}).messages[0].content == "x" * MAX_TEXT_CHARS
    assert _error("{{ 'x' * 1048577 }}") == (
        "template `t` hit a sandbox limit (its inline text, line 1): "
        "the result of `*` would be longer than 1,048,576 characters"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # operators
        ("{{ 'x' * 10**9 }}", f"the result of `*` {TEXT}"),
        ("{{ 10**9 * 'x' }}", f"the result of `*` {TEXT}"),
        ("{{ [0] * 10**9 }}", f"the result of `*` {ITEMS}"),
        ("{{ 10 ** (10 ** 10) }}", f"the result of `**` {DIGITS}"),
        ("{{ (10 ** 4000) * (10 ** 4000) }}", f"the result of `*` {DIGITS}"),
        (NS + "{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", f"the result of `+` {TEXT}"),
        (NS + "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", f"the result of `~` {TEXT}"),
        ("{{ '%0999999999d' % 1 }}", f"the result of `%` {TEXT}"),
        ("{{ '%*d' % (10**9, 1) }}", f"the result of `%` {TEXT}"),
        (BIG + "{{ ('%s' * 1000) % ((s,) * 1000) }}", f"the result of `%` {TEXT}"),
        # padding, joining and replacing methods
        ("{{ 'x'.ljust(10**9) }}", f"the result of `ljust` {TEXT}"),
        ("{{ 'x'.rjust(10**9) }}", f"the result of `rjust` {TEXT}"),
        ("{{ 'x'.center(10**9) }}", f"the result of `center` {TEXT}"),
        ("{{ '1'.zfill(10**9) }}", f"the result of `zfill` {TEXT}"),
        ("{{ '\t'.expandtabs(10**9) }}", f"the result of `expandtabs` {TEXT}"),
        (BIG + "{{ s.replace('', 'yy') }}", f"the result of `replace` {TEXT}"),
        (BIG + "{{ s.join(range(100000)|map('string')) }}", f"the result of `join` {TEXT}"),
        ("{{ '{:>1000000000}'.format(1) }}", f"the result of `format` {TEXT}"),
        ("{{ '{:.999999999f}'.format(1.5) }}", f"the result of `format` {TEXT}"),
        (BIG + "{{ ('{0}' * 1000).format(s) }}", f"the result of `format` {TEXT}"),
        ("{{ (1).to_bytes(10**9, 'big') }}", f"the result of `to_bytes` {TEXT}"),
        # filters
        ("{{ 'x'|center(1000000000) }}", f"the result of the `center` filter {TEXT}"),
        ("{{ 'x'|indent(10**9, true) }}", f"the result of the `indent` filter {TEXT}"),
        ("{{ '%*d'|format(10**9, 1) }}", f"the result of the `format` filter {TEXT}"),
        ("{{ range(100000)|join('x' * 1000) }}", f"the result of the `join` filter {TEXT}"),
        (BIG + "{{ s|replace('', 'yy') }}", f"the result of the `replace` filter {TEXT}"),
        (BIG + "{{ s|wordwrap(1, wrapstring=s) }}", f"the result of the `wordwrap` filter {TEXT}"),
        (BIG + "{{ ([s] * 1000)|tojson }}", f"the result of the `tojson` filter {TEXT}"),
        (BIG + "{{ ([s] * 1000)|string }}", f"the result of the `string` filter {TEXT}"),
        (
            BIG + "{{ ([[s]] * 1000)|sum(start=[])|map('length')|sum }}{{ ([s] * 1000)|sum(start='') }}",
            f"the result of `+` {TEXT}",
        ),
        ("{{ [1]|slice(10**9)|list }}", f"the result of the `slice` filter {ITEMS}"),
        ("{{ [1]|batch(10**9, 0)|list }}", f"the result of the `batch` filter {ITEMS}"),
        ("{{ lipsum(10**6) }}", "`lipsum` would make more than 100,000 words"),
        # text built by macros and blocks, and printed values, before the output cap could see it
        (
            "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}"
            + NS
            + "{% for i in range(40) %}{% set ns.s = twice(ns.s) %}{% endfor %}",
            f"the text of a block or macro {TEXT}",
        ),
        (BIG + "{{ [s] * 1000 }}", f"the printed value {TEXT}"),
    ],
)
def test_a_huge_value_is_refused_before_it_is_built(text, message):
    assert _error(text) == f"template `t` hit a sandbox limit (its inline text, line 1): {message}"


def test_jinja_already_caps_range():
    assert _error("{% for i in range(10**9) %}{% endfor %}x") == (
        "template `t` failed to render (its inline text, line 1): OverflowError: Range too big. "
        "The sandbox blocks ranges larger than MAX_RANGE (100000)."
    )


def test_nested_loops_and_runaway_macros_stop_at_the_step_budget():
    nested = "Items:\n{% for i in range(100000) %}\n{% for j in range(100000) %}{% endfor %}\n{% endfor %}x"
    assert _error(nested) == (
        "template `t` hit a sandbox limit (its inline text, line 3): "
        f"the template ran more than {MAX_RENDER_STEPS:,} loop iterations and calls"
    )
    fan_out = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}x"
    assert "the template ran more than 1,000,000 loop iterations and calls" in _error(fan_out)


@pytest.mark.parametrize(
    "work",
    ["{% set x = s ~ 'y' %}", "{% set x = s + 'y' %}", "{% set x = s[1:] %}", "{% if 'zz' in s %}{% endif %}",
     "{% set x = s|upper %}", "{% set x = s.upper() %}", "{% set x = s * 1 %}", "{% set x = [s]|join %}"],
)  # fmt: skip
def test_work_on_a_big_value_costs_steps_in_proportion_to_its_size(work):
    # a million characters, copied or searched 100,000 times, would take minutes; each copy costs 976 steps
    loop = BIG + "{% for i in range(100000) %}" + work + "{% endfor %}x"
    assert _error(loop).endswith(f"the template ran more than {MAX_RENDER_STEPS:,} loop iterations and calls")
    small = "{% set s = 'x' * 1000 %}{% for i in range(1000) %}" + work + "{% endfor %}x"
    assert _templates(small).render("t", {}).messages[0].content == "x"


def test_the_step_budget_is_per_render_and_shared_by_the_system_text_and_the_body():
    loops = "{% for i in range(600) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x"  # 600,000+ steps
    config = load_config(ROOT / "examples" / "offline.yaml", env={})
    both = TemplateConfig(name="t", text=loops, system=loops)
    templates = PromptTemplates.from_config(dataclasses.replace(config, templates={"t": both}))
    with pytest.raises(TemplateError, match="hit a sandbox limit \\(its inline text, line 1\\): the template ran"):
        templates.render("t", {})
    single = _templates(loops)
    for _ in range(3):  # each render has its own budget
        assert single.render("t", {}).messages[0].content == "x"


def test_ordinary_uses_still_work():
    text = (
        "{{ '-' * 20 }}|{{ 2 ** 8 }}|{{ 10 ** 10 ** 10 }}|{% for i in range(10) %}{{ i }}{% endfor %}|"
        "{{ [0] * 3 }}|{{ 'a' ~ 1 }}|{{ 'a' + 'b' }}|{{ '%03d' % 7 }}|{{ '{:>4}'.format('z') }}|"
        "{{ 'x'.ljust(3, '.') }}|{{ 'x'|center(5) }}|{{ [1, 2]|join(', ') }}|{{ 'a\nb'|indent(2) }}|"
        "{{ {'k': [1]}|tojson(indent=1) }}|{{ [[1], [2]]|sum(start=[]) }}|{{ 'a-a'|replace('-', '--') }}|"
        "{{ range(5)|batch(2, 0)|list }}|{{ lipsum(1, false, 3, 5)|wordcount > 0 }}|{{ '%s=%s'|format('k', 1) }}"
    )
    # Jinja's `**` is left-associative: 10 ** 10 ** 10 is (10 ** 10) ** 10, a 101-digit number
    assert _templates(text).render("t", {}).messages[0].content == (
        "--------------------|256|1" + "0" * 100 + "|0123456789|[0, 0, 0]|a1|ab|007|   z|x..|  x  |1, 2|a\n  b|"
        '{\n "k": [\n  1\n ]\n}|[1, 2]|a--a|[[0, 1], [2, 3], [4, 0]]|True|k=1'
    )


def test_the_error_names_the_template_file_and_line(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "pad.j2").write_text("Title: {{ title }}\n\n{{ title.center(width) }}\n")
    config = load_config_text(
        textwrap.dedent(
            """\
            version: 1
            providers: {mock1: {type: mock}}
            models: {default: {targets: [{provider: mock1, model: m}]}}
            templates:
              pad: {file: pad.j2, arguments: {title: {required: true}, width: {required: true}}}
            """
        ),
        file=str(tmp_path / "proxy.yaml"),
        base_dir=tmp_path,
        env={},
    )
    templates = PromptTemplates.from_config(config)
    assert templates.render("pad", {"title": "T", "width": 5}).messages[0].content == "Title: T\n\n  T  "
    with pytest.raises(TemplateError) as caught:
        templates.render("pad", {"title": "T", "width": 10**9})
    assert str(caught.value) == f"template `pad` hit a sandbox limit (pad.j2, line 3): the result of `center` {TEXT}"


def test_printed_size_stops_early_even_on_a_value_that_contains_itself():
    assert printed_size("abc") == 3
    assert printed_size([1, "ab"]) == 2 + 1 + 4
    huge = ["x" * 1000] * 10**6
    assert MAX_TEXT_CHARS < printed_size(huge) < MAX_TEXT_CHARS + 2000


# --- how the errors reach clients -----------------------------------------------------------------------

CONFIG = """
version: 1
providers:
  echo: {type: mock, mock: {echo: true}}
models:
  default: {targets: [{provider: echo, model: m}]}
templates:
  greet:
    text: "Hello {{ name }}"
    arguments: {name: {required: true}}
  pad:
    text: "{{ name.ljust(10**9) }}"
    arguments: {name: {required: true}}
"""
PAD_ERROR = f"template `pad` hit a sandbox limit (its inline text, line 1): the result of `ljust` {TEXT}"


async def _check_client(client: Client) -> None:
    result = await client.call_tool("complete_template", {"template": "pad", "arguments": {"name": "x"}})
    assert result.is_error and PAD_ERROR in result.content[0].text and "Traceback" not in result.content[0].text
    with pytest.raises(MCPError, match="hit a sandbox limit"):
        await client.get_prompt("pad", {"name": "x"})
    assert (await client.get_prompt("greet", {"name": "Ada"})).messages[-1].content.text == "Hello Ada"


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_clients_get_the_size_limit_as_a_tool_error(mode):
    engine = Engine(Runtime.build(load_config_text(CONFIG, env={})))
    try:
        async with Client(McpFront(engine).server, mode=mode) as client:
            await _check_client(client)
    finally:
        await engine.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_clients_over_http_get_the_size_limit_as_a_tool_error(mode):
    async with serve_mcp_http(load_config_text(CONFIG, env={})) as (url, _), Client(url, mode=mode) as client:
        await _check_client(client)


# --- tags that read files fail `llm-proxy validate` -----------------------------------------------------


def _write_config(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "report.j2").write_text("Report\n\n{% extends 'base.j2' %}\n")
    (tmp_path / "templates" / "base.j2").write_text("base")
    path = tmp_path / "proxy.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            providers: {mock1: {type: mock}}
            models: {default: {targets: [{provider: mock1, model: m}]}}
            templates:
              report: {file: report.j2}
              inline:
                text: "ok"
                system: "You are\\n{% from 'base.j2' import x %}"
            """
        )
    )
    return path


def test_validate_refuses_include_import_and_extends_with_the_template_and_line(tmp_path, capsys):
    path = _write_config(tmp_path)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:5:18: templates.report.file: template file `report.j2`: `{{% extends %}}` is not allowed at line 3: "
        "templates cannot read other files; put the text in this template",
        f"{path}:8:13: templates.inline.system: the system text: `{{% from ... import %}}` is not allowed at line 2: "
        "templates cannot read other files; put the text in this template",
        f"{path}: 2 problems",
    ]
    run = subprocess.run([sys.executable, "-m", "proxy", "validate", str(path)], capture_output=True, text=True)
    assert run.returncode == 1 and "`{% extends %}` is not allowed at line 3" in run.stderr


def test_the_loader_refuses_them_before_any_runtime_is_built(tmp_path):
    path = _write_config(tmp_path)
    with pytest.raises(Exception, match="is not allowed at line 3") as caught:
        load_config(path)
    assert [issue.path for issue in caught.value.issues] == ["templates.report.file", "templates.inline.system"]
