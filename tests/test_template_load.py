"""Each template file is read, and each template compiled, once per config load: the load-time checks make what the
runtime builds from; a reload reads the files afresh; a config changed by hand is built from what it says."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from pathlib import Path

import jinja2
import pytest

from proxy.config.load import check_config_file, load_config
from proxy.errors import ConfigError
from proxy.runtime import Runtime
from proxy.templates import PromptTemplates

CONFIG = """\
version: 1
providers:
  mock1: {type: mock}
models:
  default:
    targets: [{provider: mock1, model: m}]
templates:
  summarize:
    file: summarize.j2
    system: "You summarize {{ style }} texts."
    arguments: {text: {required: true}, style: {default: short}}
  same_file:
    file: summarize.j2
    arguments: {text: {required: true}, style: {}}
  inline:
    text: "Say {{ word }}."
    arguments: {word: {required: true}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "summarize.j2").write_text("Summarize ({{ style }}):\n{{ text }}\n")
    (tmp_path / "proxy.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, project: Path) -> dict[str, Counter]:
    """Counts reads of the template directory's files (any way `pathlib` opens them) and Jinja parses and
    compiles (by template text)."""
    counts: dict[str, Counter] = {"reads": Counter(), "parses": Counter(), "compiles": Counter()}
    templates = (project / "templates").resolve()

    open_ = Path.open

    def counting_open(self: Path, mode: str = "r", *args, **kwargs):  # read_text and read_bytes open too
        if "r" in mode and self.resolve().parent == templates:
            counts["reads"][self.name] += 1
        return open_(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    parse, compile_ = jinja2.Environment.parse, jinja2.Environment.compile

    def counting_parse(self, source, *args, **kwargs):
        counts["parses"][source] += 1
        return parse(self, source, *args, **kwargs)

    def counting_compile(self, source, *args, **kwargs):
        counts["compiles"][source if isinstance(source, str) else "<parsed tree>"] += 1
        return compile_(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "parse", counting_parse)
    monkeypatch.setattr(jinja2.Environment, "compile", counting_compile)
    return counts


async def test_a_load_and_a_runtime_build_read_and_compile_each_template_once(project, counted):
    runtime = Runtime.build(load_config(project / "proxy.yaml", env={}))
    try:
        assert counted["reads"] == {"summarize.j2": 1}  # two templates name it: still one read
        # the file's text, the system text and the inline text: parsed once and compiled once each
        assert sorted(counted["parses"].values()) == [1, 1, 1]
        assert counted["compiles"] == {"<parsed tree>": 3}
        rendered = runtime.templates.render("summarize", {"text": "T"})
        assert [m.content for m in rendered.messages] == ["You summarize short texts.", "Summarize (short):\nT"]
        assert runtime.templates.render("inline", {"word": "hi"}).messages[-1].content == "Say hi."
    finally:
        await runtime.aclose()


def test_a_reload_reads_a_changed_template_file_again(project, counted):
    first = PromptTemplates.from_config(load_config(project / "proxy.yaml", env={}))
    (project / "templates" / "summarize.j2").write_text("Shorten: {{ text }}")
    result = check_config_file(project / "proxy.yaml", env={})
    assert result.config is not None
    second = PromptTemplates.from_config(result.config)
    assert counted["reads"] == {"summarize.j2": 2}  # once per load
    assert first.render("summarize", {"text": "T"}).messages[-1].content == "Summarize (short):\nT"
    assert second.render("summarize", {"text": "T"}).messages[-1].content == "Shorten: T"
    assert first.version("summarize") != second.version("summarize")


def test_a_reload_reports_a_template_file_broken_since_the_last_load(project):
    load_config(project / "proxy.yaml", env={})
    (project / "templates" / "summarize.j2").write_text("{{ text ")
    result = check_config_file(project / "proxy.yaml", env={})
    assert result.config is None
    error = "Jinja2 syntax error at line 1: unexpected end of template, expected 'end of print statement'."
    assert [(i.path, i.message) for i in result.issues] == [
        ("templates.summarize.file", f"template file `summarize.j2`: {error}"),
        ("templates.same_file.file", f"template file `summarize.j2`: {error}"),
    ]


def test_the_config_version_follows_the_template_files(project):
    before = load_config(project / "proxy.yaml", env={}).version_hash
    (project / "templates" / "summarize.j2").write_text("Shorten: {{ text }} {{ style }}")
    assert load_config(project / "proxy.yaml", env={}).version_hash != before


def test_a_template_changed_by_hand_is_built_from_what_it_says(project):
    config = load_config(project / "proxy.yaml", env={})
    assert config.templates == dict(config.templates)  # compares as the plain mapping it stands for
    inline = dataclasses.replace(config.templates["inline"], text="Shout {{ word | upper }}!")
    edited = dataclasses.replace(config, templates={**config.templates, "inline": inline})
    rendered = PromptTemplates.from_config(edited).render("inline", {"word": "hi"})
    assert rendered.messages[-1].content == "Shout HI!"
    broken = dataclasses.replace(inline, text="{{ word | uper }}")
    with pytest.raises(ConfigError) as caught:
        PromptTemplates.from_config(dataclasses.replace(config, templates={"inline": broken}))
    (issue,) = caught.value.issues
    assert (issue.path, issue.message) == (
        "templates.inline.text",
        "the template text: unknown filter `uper` at line 1; did you mean `upper`?",
    )


def test_a_config_pointed_at_another_template_dir_by_hand_reads_its_files(project):
    config = load_config(project / "proxy.yaml", env={})
    other = project / "other"
    other.mkdir()
    (other / "summarize.j2").write_text("Other: {{ text }} {{ style }}")
    moved = dataclasses.replace(
        config,
        template_dir=other,
        templates={
            name: dataclasses.replace(t, file=other / "summarize.j2") if t.file else t
            for name, t in config.templates.items()
        },
    )
    assert PromptTemplates.from_config(moved).render("same_file", {"text": "x"}).messages[-1].content == "Other: x "
    moved_dir_only = dataclasses.replace(config, template_dir=other)  # the files still named in the old directory
    with pytest.raises(ConfigError) as caught:
        PromptTemplates.from_config(moved_dir_only)
    assert {issue.path for issue in caught.value.issues} == {"templates.summarize.file", "templates.same_file.file"}


def test_a_loaded_config_pickles_as_its_plain_templates(project):
    config = load_config(project / "proxy.yaml", env={})
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and type(copy.templates) is dict
    assert PromptTemplates.from_config(copy).render("inline", {"word": "hi"}).messages[-1].content == "Say hi."


def test_resolving_a_template_dir_or_file_fails_in_the_same_words(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "a.j2").symlink_to("a.j2")
    head = CONFIG.split("templates:\n")[0]
    messages = {}
    for extra in ("template_dir: loop\ntemplates:\n  t: {text: x}\n", "templates:\n  t: {file: a.j2}\n"):
        (tmp_path / "proxy.yaml").write_text(head + extra)
        (issue,) = check_config_file(tmp_path / "proxy.yaml", env={}).issues
        messages[issue.path] = issue.message
    assert messages == {
        "template_dir": "`loop` cannot be used: its symbolic links form a loop",
        "templates.t.file": "`a.j2` cannot be used: its symbolic links form a loop",
    }
