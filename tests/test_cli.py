"""The `llm-proxy` command line: validate, schema, --version, config selection; also as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from proxy import __version__
from proxy.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = """\
version: 1
provders: {}
providers:
  openai: {type: opneai}
models:
  default:
    targets: [{provider: openia, model: x}]
"""


def test_validate_shipped_configs(capsys):
    assert main(["validate", "config/proxy.yaml", "examples/offline.yaml"]) == 0
    out = capsys.readouterr().out
    assert "config/proxy.yaml: valid" in out and "examples/offline.yaml: valid" in out


def test_validate_reports_every_problem_on_stderr(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}:2:1: provders: unknown key `provders`; did you mean `providers`?"
    assert err[1].startswith(f"{bad}:4:18: providers.openai.type: `opneai` is not one of")
    assert (
        err[2] == f"{bad}:7:26: models.default.targets[0].provider: unknown provider `openia`; did you mean `openai`?"
    )
    assert err[3] == f"{bad}: 3 problems"


def test_validate_an_empty_path_is_a_problem_not_the_default_config(capsys):
    assert main(["validate", "config/proxy.yaml", ""]) == 1  # `llm-proxy validate "$UNSET"` checked the default
    captured = capsys.readouterr()
    assert "an empty PATH" in captured.err and "valid" not in captured.out


def test_validate_json_format(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", "--format", "json", str(bad), "examples/offline.yaml"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["valid"] for r in report] == [False, True]
    first = report[0]["issues"][0]
    assert first == {
        "file": str(bad),
        "line": 2,
        "column": 1,
        "path": "provders",
        "message": "unknown key `provders`; did you mean `providers`?",
        "layer": "schema",
    }


def test_config_option_before_or_after_the_subcommand_and_env(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["--config", str(bad), "validate"]) == 1
    assert main(["validate", "--config", str(bad)]) == 1
    monkeypatch.setenv("LLM_PROXY_CONFIG", str(bad))
    assert main(["validate"]) == 1
    assert main(["validate", "--config", "examples/offline.yaml"]) == 0


def test_validate_embedded_default_names_disabled_providers(capsys, monkeypatch):
    monkeypatch.delenv("LLM_PROXY_CONFIG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["validate"]) == 0
    assert "provider `openai` is disabled: environment variable `OPENAI_API_KEY` is not set" in capsys.readouterr().out


def test_missing_file_is_a_clean_error(capsys):
    assert main(["validate", "/nonexistent.yaml"]) == 1
    assert "/nonexistent.yaml: no such file" in capsys.readouterr().err


def test_console_script_and_module_entry_points(tmp_path):
    version = subprocess.run(["llm-proxy", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"llm-proxy {__version__}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("\x00")
    run = subprocess.run([sys.executable, "-m", "proxy", "validate", str(bad)], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    elsewhere = subprocess.run(
        ["llm-proxy", "validate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)},
    )
    assert elsewhere.returncode == 0, elsewhere.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLM_PROXY_CONFIG")}
    return {**keep, **extra}


def test_complete_demo_on_the_embedded_default_from_any_directory(tmp_path):
    run = subprocess.run(
        ["llm-proxy", "complete", "--model", "demo", "hello"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert run.returncode == 0, run.stderr
    assert "demo" in run.stdout and "mock" in run.stdout


def test_complete_default_without_keys_names_the_unset_variables(tmp_path):
    run = subprocess.run(
        ["llm-proxy", "complete", "hello"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(OLLAMA_BASE_URL="http://127.0.0.1:9/v1"),
    )
    assert run.returncode == 1
    assert "`OPENAI_API_KEY` is not set" in run.stderr and "`ANTHROPIC_API_KEY` is not set" in run.stderr
    assert "Traceback" not in run.stderr


def test_complete_stream_and_json(capsys):
    assert main(["--config", "examples/offline.yaml", "complete", "--model", "echo", "--stream", "a b c"]) == 0
    assert capsys.readouterr().out == "a b c\n"
    assert main(["--config", "examples/offline.yaml", "complete", "--model", "echo", "--json", "a b c"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "a b c" and result["provider"] == "echo" and result["usage"]["output_tokens"] > 0


def test_complete_unknown_model(capsys):
    assert main(["complete", "--model", "nope", "hi"]) == 1
    assert "unknown model `nope`; known models: `default`, `demo`" in capsys.readouterr().err
