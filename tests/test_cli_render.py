"""`llm-proxy render`: text and JSON output, config selection, --arg parsing, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.cli_render import parse_value

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = str(ROOT / "examples" / "offline.yaml")
SUMMARY = (
    "Summarize the following document for {audience}.\n"
    "Keep it short: three to five sentences, plain words, no jargon.\n\nDocument:\n{text}"
)


@pytest.fixture(autouse=True)
def _no_config_variable(monkeypatch):
    monkeypatch.delenv("LLM_PROXY_CONFIG", raising=False)


def _config(tmp_path: Path, templates: str, files: dict[str, str] | None = None) -> str:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, body in (files or {}).items():
        (tmp_path / "templates" / name).write_text(body)
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "version: 1\nproviders:\n  m: {type: mock}\nmodels:\n  default:\n    targets: [{provider: m, model: x}]\n"
        "templates:\n" + templates
    )
    return str(path)


def test_text_output_on_the_embedded_default(capsys):
    assert main(["render", "summarize", "--arg", "text=The report.", "--arg", "audience=engineers"]) == 0
    out, err = capsys.readouterr()
    expected = SUMMARY.format(audience="engineers", text="The report.")
    assert out == f"--- system ---\nYou are a concise writer.\n--- user ---\n{expected}\n"
    assert err == ""


def test_json_output_on_the_offline_example(capsys):
    assert main(["--config", OFFLINE, "render", "greet", "--arg", "name=Ada", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    version = document.pop("version")
    assert len(version) == 12 and int(version, 16) >= 0
    assert document == {
        "template": "greet",
        "model": "echo",
        "max_tokens": None,
        "temperature": None,
        "messages": [{"role": "user", "content": "Write a one-line greeting for Ada, in a cheerful mood."}],
    }


def test_json_output_carries_the_template_settings(capsys):
    assert main(["render", "summarize", "--arg", "text=x", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["model"], document["max_tokens"]) == ("default", 300)
    assert [m["role"] for m in document["messages"]] == ["system", "user"]


def test_config_from_the_environment_and_after_the_subcommand(capsys, monkeypatch):
    monkeypatch.setenv("LLM_PROXY_CONFIG", OFFLINE)
    assert main(["render", "greet", "--arg", "name=Bo"]) == 0
    assert capsys.readouterr().out == "--- user ---\nWrite a one-line greeting for Bo, in a cheerful mood.\n"
    monkeypatch.delenv("LLM_PROXY_CONFIG")
    assert main(["render", "greet", "--config", OFFLINE, "--arg", "name=Cy", "--arg", "mood=grumpy"]) == 0
    assert capsys.readouterr().out == "--- user ---\nWrite a one-line greeting for Cy, in a grumpy mood.\n"


def test_values_that_parse_as_json_are_json(tmp_path, capsys):
    config = _config(
        tmp_path,
        "  t:\n    text: \"{{ n + 1 }} {{ tags | join('+') }} {{ doc.title }} {{ s }} {{ flag }}\"\n"
        "    arguments: {n: {}, tags: {}, doc: {}, s: {}, flag: {default: unset}}\n",
    )
    argv = ["render", "t", "--config", config, "--arg", "n=41", "--arg", 'tags=["a","b"]']
    argv += ["--arg", 'doc={"title": "T"}', "--arg", 's="7"', "--arg", "flag=null"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "--- user ---\n42 a+b T 7 unset\n"


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("true") is True
    assert parse_value("null") is None and parse_value('"3"') == "3" and parse_value("[1]") == [1]
    assert parse_value("Ada") == "Ada" and parse_value("") == "" and parse_value("a=b") == "a=b"
    assert parse_value("NaN") == "NaN" and parse_value("Infinity") == "Infinity"
    assert parse_value("{not json") == "{not json"


def test_unknown_template_exit_1(capsys):
    assert main(["--config", OFFLINE, "render", "gret"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: unknown template `gret` (did you mean `greet`?); known templates: `greet`\n"


def test_bad_arguments_exit_1(capsys):
    assert main(["--config", OFFLINE, "render", "greet", "--arg", "nmae=Ada"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: template `greet`: unknown argument `nmae` (did you mean `name`?); ")
    assert "missing required argument `name`" in err


def test_render_failure_exit_1_names_the_file_and_line(tmp_path, capsys):
    config = _config(
        tmp_path, "  t: {file: t.j2, arguments: {x: {}}}\n", {"t.j2": "fine\n{{ ''.__class__.__mro__ }}\n"}
    )
    assert main(["render", "t", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: template `t` was stopped by the sandbox (t.j2, line 2): access to attribute")
    assert "Traceback" not in err


def test_invalid_config_and_refused_include_exit_1(tmp_path, capsys):
    broken = _config(tmp_path, "  t: {file: t.j2}\n", {"t.j2": "{{ x }"})
    assert main(["render", "t", "--config", broken]) == 1
    assert "Jinja2 syntax error" in capsys.readouterr().err
    include = _config(tmp_path, "  t: {file: t.j2}\n", {"t.j2": "{% include '/etc/passwd' %}"})
    assert main(["render", "t", "--config", include]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "`{% include %}` is not allowed" in err and "root:" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "greet", "--arg", "name"], "--arg expects KEY=VALUE, got `name`"),
        (["render", "greet", "--arg", "=x"], "--arg expects KEY=VALUE, got `=x`"),
        (["render", "greet", "--arg", "name=a", "--arg", "name=b"], "--arg `name` is given twice"),
        (["render"], "the following arguments are required: TEMPLATE"),
        (["render", "greet", "--format", "yaml"], "invalid choice: 'yaml'"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--config", OFFLINE, *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_as_a_subprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLM_PROXY_CONFIG"}
    command = [sys.executable, "-m", "proxy", "render", "--config", OFFLINE]
    ok = subprocess.run([*command, "greet", "--arg", "name=Ada"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout == "--- user ---\nWrite a one-line greeting for Ada, in a cheerful mood.\n"
    bad = subprocess.run([*command, "greet"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 1 and bad.stdout == "" and "missing required argument `name`" in bad.stderr
    usage = subprocess.run([*command, "greet", "--arg", "x"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
