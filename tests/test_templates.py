"""Prompt templates: building once, arguments, system text, versions, the sandbox, render errors, the output cap."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from proxy.config.load import load_config, load_config_text
from proxy.config.model import Config, TemplateArgument, TemplateConfig
from proxy.errors import ConfigError, RequestError, TemplateError
from proxy.templates import MAX_RENDERED_BYTES, PromptArgument, PromptInfo, PromptTemplates
from proxy.types import Message

ROOT = Path(__file__).resolve().parents[1]
HEAD = """\
version: 1
providers:
  mock1: {type: mock}
models:
  default:
    targets: [{provider: mock1, model: m}]
  other:
    targets: [{provider: mock1, model: m2}]
templates:
"""


def _load(tmp_path: Path, templates: str, files: dict[str, str] | None = None) -> Config:
    """A config in `tmp_path` with `templates` (YAML under `templates:`) and template files under templates/."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, body in (files or {}).items():
        (tmp_path / "templates" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / name).write_text(body)
    text = HEAD + textwrap.indent(textwrap.dedent(templates), "  ")
    return load_config_text(text, file=str(tmp_path / "proxy.yaml"), base_dir=tmp_path, env={})


def _build(tmp_path: Path, templates: str, files: dict[str, str] | None = None, **kwargs) -> PromptTemplates:
    return PromptTemplates.from_config(_load(tmp_path, templates, files), **kwargs)


def _unchecked(text: str, *, system: str | None = None, args: tuple[str, ...] = ("x",)) -> PromptTemplates:
    """One template `t` put into a valid config without the load-time checks, as a hand-built config could."""
    config = load_config(ROOT / "examples" / "offline.yaml")
    template = TemplateConfig(
        name="t", text=text, system=system, arguments=tuple(TemplateArgument(name=a) for a in args)
    )
    return PromptTemplates.from_config(dataclasses.replace(config, templates={"t": template}))


def _error(templates: PromptTemplates, arguments: dict, name: str = "t") -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        templates.render(name, arguments)
    return caught.value


# --- the shipped templates ------------------------------------------------------------------------------


def test_shipped_summarize_with_system_text_default_and_template_settings():
    templates = PromptTemplates.from_config(load_config(ROOT / "config" / "proxy.yaml", env={}))
    rendered = templates.render("summarize", {"text": "The quarterly report."})
    assert rendered.name == "summarize"
    assert rendered.messages == (
        Message("system", "You are a concise writer."),
        Message(
            "user",
            "Summarize the following document for executives.\n"
            "Keep it short: three to five sentences, plain words, no jargon.\n\nDocument:\nThe quarterly report.",
        ),
    )
    assert (rendered.model, rendered.max_tokens, rendered.temperature) == ("default", 300, None)
    other = templates.render("summarize", {"text": "x", "audience": "engineers"})
    assert "for engineers." in other.messages[1].content
    assert other.version == rendered.version and len(rendered.version) == 12


def test_shipped_offline_greet_without_system_text():
    templates = PromptTemplates.from_config(load_config(ROOT / "examples" / "offline.yaml", env={}))
    assert templates.names() == ("greet",) and "greet" in templates and len(templates) == 1
    rendered = templates.render("greet", {"name": "Ada"})
    assert rendered.messages == (Message("user", "Write a one-line greeting for Ada, in a cheerful mood."),)
    assert rendered.model == "echo"
    # None counts as "not given": the default applies; an explicit value wins.
    assert templates.render("greet", {"name": "Ada", "mood": None}).messages == rendered.messages
    assert templates.render("greet", {"name": "Ada", "mood": "calm"}).messages[0].content.endswith("a calm mood.")
    assert templates.get("greet").description == "Greet someone by name"


def test_prompts_list_each_template_with_its_arguments():
    templates = PromptTemplates.from_config(load_config(ROOT / "config" / "proxy.yaml", env={}))
    assert templates.prompts() == (
        PromptInfo(
            name="summarize",
            description="Summarize a document for a given audience",
            arguments=(
                PromptArgument("text", "The document to summarize", True),
                PromptArgument("audience", "Who will read the summary", False),
            ),
        ),
    )


# --- arguments ------------------------------------------------------------------------------------------

TWO_REQUIRED = """\
t:
  text: "{{ first }} {{ second }}{% if third %} {{ third }}{% endif %}"
  arguments:
    first: {required: true}
    second: {required: true}
    third: {default: 3}
"""


def test_missing_required_arguments_are_named_all_at_once(tmp_path):
    error = _error(_build(tmp_path, TWO_REQUIRED), {})
    assert isinstance(error, RequestError) and error.template == "t" and error.param == "arguments"
    assert str(error).startswith("template `t`: missing required arguments `first`, `second`; its arguments: ")
    assert "`third` (default: 3)" in str(error)
    assert _build(tmp_path, TWO_REQUIRED).render("t", {"first": 1, "second": "b"}).messages[0].content == "1 b 3"


def test_unknown_argument_did_you_mean_and_declared_names(tmp_path):
    error = _error(_build(tmp_path, TWO_REQUIRED), {"frist": 1, "second": 2})
    assert str(error) == (
        "template `t`: unknown argument `frist` (did you mean `first`?); missing required argument `first`; "
        "its arguments: `first` (required), `second` (required), `third` (default: 3)"
    )
    assert error.param == "arguments"


def test_arguments_must_be_a_mapping(tmp_path):
    error = _error(_build(tmp_path, TWO_REQUIRED), ["first"])  # type: ignore[arg-type]
    assert "`arguments` must be an object" in str(error)


def test_unknown_template_did_you_mean_and_known_names(tmp_path):
    templates = _build(tmp_path, TWO_REQUIRED + "summary: {text: hi}\n")
    error = _error(templates, {}, name="sumary")
    assert str(error) == "unknown template `sumary` (did you mean `summary`?); known templates: `t`, `summary`"
    assert error.param == "template" and error.template == "sumary"
    with pytest.raises(TemplateError, match="unknown template `nope`; known"):
        templates.get("nope")


def test_any_json_values_as_arguments(tmp_path):
    templates = _build(
        tmp_path,
        """\
        t:
          text: "{{ doc.title }}: {{ tags | join(', ') }} x{{ n + 1 }}"
          arguments: {doc: {required: true}, tags: {default: []}, n: {default: 0}}
        """,
    )
    rendered = templates.render("t", {"doc": {"title": "Plan"}, "tags": ["a", "b"], "n": 41})
    assert rendered.messages[0].content == "Plan: a, b x42"
    assert templates.render("t", {"doc": {"title": "Plan"}}).messages[0].content == "Plan:  x1"


def test_system_text_is_a_template_too_and_is_left_out_when_empty(tmp_path):
    templates = _build(
        tmp_path,
        """\
        t:
          text: "Write about {{ topic }}."
          system: "{% if persona %}You are {{ persona }}.{% endif %}"
          arguments: {topic: {required: true}, persona: {}}
        """,
    )
    assert templates.render("t", {"topic": "tea", "persona": "a poet"}).messages == (
        Message("system", "You are a poet."),
        Message("user", "Write about tea."),
    )
    assert templates.render("t", {"topic": "tea"}).messages == (Message("user", "Write about tea."),)


def test_an_empty_prompt_is_refused(tmp_path):
    templates = _build(tmp_path, 't: {text: "{{ text }}", arguments: {text: {required: true}}}\n')
    assert "rendered an empty prompt" in str(_error(templates, {"text": "  "}))


def test_to_request_overrides_win_over_the_template(tmp_path):
    templates = _build(tmp_path, "t: {text: hi, model: other, max_tokens: 50, temperature: 0.2}\n")
    rendered = templates.render("t", {})
    plain = rendered.to_request()
    assert (plain.model, plain.max_tokens, plain.temperature, plain.stream) == ("other", 50, 0.2, False)
    assert plain.messages == (Message("user", "hi"),)
    custom = rendered.to_request(model="default", max_tokens=7, temperature=0.0, stream=True, seed=3)
    assert (custom.model, custom.max_tokens, custom.temperature, custom.stream, custom.seed) == (
        "default",
        7,
        0.0,
        True,
        3,
    )
    bare = _build(tmp_path, "t: {text: hi}\n").render("t", {}).to_request(max_tokens=9)
    assert (bare.model, bare.max_tokens, bare.temperature) == (None, 9, None)


# --- built once; versions -------------------------------------------------------------------------------

FILE_TEMPLATE = """\
t:
  description: first
  file: t.j2
  system: "Be brief."
  arguments: {name: {required: true}, tone: {default: warm}}
"""


def test_files_are_read_once_when_built(tmp_path):
    templates = _build(tmp_path, FILE_TEMPLATE, {"t.j2": "Hello {{ name }}, {{ tone }}."})
    (tmp_path / "templates" / "t.j2").write_text("Changed {{ name }}")
    assert templates.render("t", {"name": "Ada"}).messages[1].content == "Hello Ada, warm."
    (tmp_path / "templates" / "t.j2").unlink()
    assert templates.render("t", {"name": "Bo"}).messages[1].content == "Hello Bo, warm."


def test_version_is_stable_and_changes_with_the_sources(tmp_path):
    body = {"t.j2": "Hello {{ name }}, {{ tone }}."}
    version = _build(tmp_path, FILE_TEMPLATE, body).version("t")
    assert _build(tmp_path, FILE_TEMPLATE, body).version("t") == version
    assert _build(tmp_path, FILE_TEMPLATE.replace("first", "second"), body).version("t") == version
    assert _build(tmp_path, FILE_TEMPLATE, body).render("t", {"name": "x"}).version == version
    changed = {
        "body": _build(tmp_path, FILE_TEMPLATE, {"t.j2": "Hi {{ name }}, {{ tone }}."}).version("t"),
        "system": _build(tmp_path, FILE_TEMPLATE.replace("Be brief.", "Be kind."), body).version("t"),
        "default": _build(tmp_path, FILE_TEMPLATE.replace("warm", "cold"), body).version("t"),
    }
    assert version not in changed.values() and len(set(changed.values())) == 3


def test_file_and_inline_text_with_the_same_source_share_a_version(tmp_path):
    from_file = _build(tmp_path, "t: {file: t.j2}\n", {"t.j2": "Same text"}).version("t")
    assert _build(tmp_path, 't: {text: "Same text"}\n').version("t") == from_file


# --- the sandbox ----------------------------------------------------------------------------------------


def test_python_internals_are_refused_at_render(tmp_path):
    templates = _build(
        tmp_path,
        """\
        mro: {text: "{{ ''.__class__.__mro__ }}"}
        globals: {text: "{{ cycler.__init__.__globals__ }}"}
        lipsum: {text: "{{ lipsum.__globals__['os'] }}"}
        format: {text: "{{ '{0.__class__}'.format(x) }}", arguments: {x: {required: true}}}
        """,
    )
    for name, attribute in (("mro", "__class__"), ("globals", "__init__"), ("lipsum", "__globals__")):
        error = _error(templates, {}, name=name)
        assert str(error).startswith(f"template `{name}` was stopped by the sandbox (its inline text, line 1): ")
        assert f"access to attribute '{attribute}'" in str(error)
    assert "was stopped by the sandbox" in str(_error(templates, {"x": "s"}, name="format"))


def test_arguments_cannot_be_mutated_by_a_template(tmp_path):
    templates = _build(tmp_path, 't: {text: "{{ items.append(1) }}{{ items }}", arguments: {items: {}}}\n')
    items = [0]
    assert "was stopped by the sandbox" in str(_error(templates, {"items": items}))
    assert items == [0]


def test_undefined_names_like_open_are_errors():
    error = _error(_unchecked("{{ open('/etc/passwd').read() }}"), {})
    assert str(error) == "template `t` uses something undefined (its inline text, line 1): 'open' is undefined"


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        ("{% include '/etc/passwd' %}", "{% include %}"),
        ("line\n{% include '../secret.txt' %}", "{% include %}"),
        ("{% include 'other.j2' %}", "{% include %}"),  # even a file inside the template directory
        ("{% import 'other.j2' as other %}", "{% import %}"),
        ("{% from 'other.j2' import m %}", "{% from ... import %}"),
        ("{% extends '../proxy.yaml' %}", "{% extends %}"),
    ],
)
def test_templates_cannot_read_files(tmp_path, body, tag):
    (tmp_path / "secret.txt").write_text("secret")
    line = body.count("\n") + 1
    files = {"t.j2": body, "other.j2": "{% macro m() %}x{% endmacro %}"}
    # the load-time checks (`llm-proxy validate`, the loader) refuse it, naming the template, the file and the line
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "t: {file: t.j2}\n", files)
    (issue,) = caught.value.issues
    assert (issue.path, issue.line, issue.layer) == ("templates.t.file", 10, "semantic")
    assert issue.message == (
        f"template file `t.j2`: `{tag}` is not allowed at line {line}: templates cannot read other files; "
        "put the text in this template"
    )
    assert "secret" not in str(caught.value).replace("secret.txt", "")
    # and building the templates of a config made without those checks refuses it too
    with pytest.raises(ConfigError) as caught:
        _unchecked(body, args=())
    (issue,) = caught.value.issues
    assert issue.path == "templates.t.text"
    assert issue.message == (  # in the same words as the load-time checks
        f"the template text: `{tag}` is not allowed at line {line}: templates cannot read other files; "
        "put the text in this template"
    )


def test_a_file_outside_the_template_dir_is_refused_even_in_a_hand_built_config(tmp_path):
    config = _load(tmp_path, "t: {file: t.j2}\n", {"t.j2": "hi"})
    (tmp_path / "outside.j2").write_text("outside")
    escaped = dataclasses.replace(config.templates["t"], file=tmp_path / "templates" / ".." / "outside.j2")
    with pytest.raises(ConfigError, match="is outside the template directory"):
        PromptTemplates.from_config(dataclasses.replace(config, templates={"t": escaped}))


def test_a_symlink_out_of_the_template_dir_is_refused(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "templates" / "t.j2").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ConfigError, match="outside the template directory"):
        _load(tmp_path, "t: {file: t.j2}\n")


# --- errors at build and at render ----------------------------------------------------------------------


def test_render_errors_name_the_template_file_and_line(tmp_path):
    body = "Title: {{ doc.title }}\n{% macro shout(s) %}\n{{ s + 1 }}\n{% endmacro %}\n{{ shout(doc.title) }}\n"
    templates = _build(tmp_path, "t: {file: sub/t.j2, arguments: {doc: {required: true}}}\n", {"sub/t.j2": body})
    error = _error(templates, {"doc": {"title": "T"}})
    assert str(error) == (
        'template `t` failed to render (sub/t.j2, line 3): TypeError: can only concatenate str (not "int") to str'
    )
    error = _error(templates, {"doc": 5})
    assert (
        str(error) == "template `t` uses something undefined (sub/t.j2, line 1): 'int object' has no attribute 'title'"
    )
    assert str(tmp_path) not in str(error)  # the server's paths are not shown to clients


def test_render_errors_in_system_text_and_arithmetic(tmp_path):
    templates = _build(
        tmp_path,
        """\
        t:
          text: "{{ 10 / n }}"
          system: "ok\\n{{ n.missing }}"
          arguments: {n: {required: true}}
        """,
    )
    assert "(its system text, line 2): 'int object' has no attribute 'missing'" in str(_error(templates, {"n": 1}))
    plain = _build(tmp_path, 't: {text: "{{ 10 / n }}", arguments: {n: {required: true}}}\n')
    assert str(_error(plain, {"n": 0})) == (
        "template `t` failed to render (its inline text, line 1): ZeroDivisionError: division by zero"
    )


def test_runaway_recursion_is_a_template_error():
    error = _error(_unchecked("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(x) }}"), {"x": 1})
    assert "RecursionError" in str(error) and "(its inline text, line 1)" in str(error)


def test_build_errors_list_every_broken_template_with_its_line():
    config = load_config(ROOT / "examples" / "offline.yaml", env={})
    broken = {
        "a": TemplateConfig(name="a", text="ok\n{{ x }"),
        "b": TemplateConfig(name="b", text="fine", system="{% if %}"),
        "c": TemplateConfig(name="c"),
    }
    with pytest.raises(ConfigError) as caught:
        PromptTemplates.from_config(dataclasses.replace(config, templates=broken))
    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("templates.a.text", "the template text: Jinja2 syntax error at line 2: unexpected '}'"),
        (
            "templates.b.system",
            "the system text: Jinja2 syntax error at line 1: Expected an expression, got 'end of statement block'",
        ),
        ("templates.c.file", "give exactly one of `file` and `text`"),
    ]
    assert all(i.file.endswith("offline.yaml") for i in caught.value.issues)


# --- the output cap -------------------------------------------------------------------------------------


def test_rendered_output_over_the_cap_is_refused(tmp_path):
    templates = _build(tmp_path, 't: {text: "{{ text }}", arguments: {text: {required: true}}}\n')
    assert MAX_RENDERED_BYTES == 1024 * 1024
    fits = "é" * (MAX_RENDERED_BYTES // 2)  # two UTF-8 bytes each: exactly the cap
    assert templates.render("t", {"text": fits}).messages[0].content == fits
    error = _error(templates, {"text": fits + "x"})
    assert str(error) == (
        "the rendered prompt of template `t` is larger than the limit of 1 MiB; shorten the arguments or the template"
    )


def test_a_loop_stops_at_the_cap_and_the_system_text_counts(tmp_path):
    loop = _unchecked("{% for i in range(100000) %}{{ x }}{% endfor %}")
    assert "larger than the limit of 1 MiB" in str(_error(loop, {"x": "y" * 1000}))
    templates = _build(
        tmp_path,
        't: {text: "{{ a }}", system: "{{ b }}", arguments: {a: {required: true}, b: {required: true}}}\n',
        max_output_bytes=100,
    )
    assert templates.render("t", {"a": "a" * 50, "b": "b" * 50}).messages[0].content == "b" * 50
    assert "limit of 100 bytes" in str(_error(templates, {"a": "a" * 51, "b": "b" * 50}))
