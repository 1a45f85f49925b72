"""`llm-proxy explain` and `llm-proxy diff` on the example configs and crafted pairs: output, formats, exit codes,
reading `git:REV:PATH` from a real repository."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = str(ROOT / "examples" / "offline.yaml")
SHIPPED = str(ROOT / "config" / "proxy.yaml")


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY", "LLM_PROXY_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- explain -------------------------------------------------------------------------------------------------


def test_explain_every_model_of_the_offline_example(capsys):
    code, out, err = run(capsys, "--config", OFFLINE, "explain")
    assert code == 0 and err == ""
    assert out.startswith("model `default`, the default model: fallback, in the declared order\n")
    assert "  1. primary/mock-large [mock]  context 8,192\n" in out
    assert "  1. primary/mock-large [mock]  weight 3 = 75% of traffic; context window unknown (no check)\n" in out
    assert "  then fallback `default` (fallback): primary/mock-large (already tried), backup/mock-small" in out
    assert "  retry: up to 2 attempts per target, backoff 100ms doubling to 1s (full jitter)" in out
    assert "  cache: deterministic requests (temperature 0 or a seed) for 5m (memory)\n" in out


def test_explain_the_shipped_config_names_disabled_targets(capsys):
    code, out, _ = run(capsys, "--config", SHIPPED, "explain", "default")
    assert code == 0
    assert (
        "  1. openai/gpt-4o-mini [openai]  context 128,000\n     DISABLED: environment variable `OPENAI_API_KEY`" in out
    )
    assert "rate limits: provider 500 requests/min (wait up to 2s)" in out
    assert "model `demo`" not in out


def test_explain_json(capsys):
    code, out, _ = run(capsys, "explain", "balanced", "--config", OFFLINE, "--format", "json")
    plan = json.loads(out)
    assert code == 0 and plan["model"] == "balanced" and plan["fallback_chain"] == ["default"]
    assert [t["share"] for t in plan["targets"]] == [0.75, 0.25]
    code, out, _ = run(capsys, "explain", "--config", OFFLINE, "--format", "json")
    assert [p["model"] for p in json.loads(out)] == ["default", "echo", "balanced"]


def test_explain_errors_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, "--config", OFFLINE, "explain", "nope")
    assert code == 1 and err == "error: unknown model `nope`; known models: `default`, `echo`, `balanced`\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproviders: {}\nmodels: {default: {targets: [{provider: x, model: y}]}}\n")
    code, _, err = run(capsys, "--config", str(bad), "explain")
    assert code == 1 and f"{bad}:3:" in err and "unknown provider `x`" in err


def test_explain_a_request_from_a_file(capsys, tmp_path):
    body = {"model": "default", "messages": [{"role": "user", "content": "word " * 5000}], "temperature": 0}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    code, out, _ = run(capsys, "--config", OFFLINE, "explain", "--request", str(path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "request for `default`: route `default`"
    assert (
        lines[1].startswith("  prompt about 5,306 tokens;")
        and "max_tokens 1024; temperature 0; not streamed" in lines[1]
    )
    assert lines[2:4] == ["  would try, in order:", "    1. primary/mock-large (model `default`)"]
    assert "does not fit its 4096-token context window" in lines[5]
    assert lines[-1] == "  cache: cacheable for 5m (deterministic: temperature is 0)"
    code, out, _ = run(capsys, "--config", OFFLINE, "explain", "balanced", "--request", str(path), "--format", "json")
    run_ = json.loads(out)  # MODEL replaces the body's model
    assert code == 0 and run_["route"] == "balanced" and run_["order"][0] == "primary/mock-large"


def test_explain_a_request_from_stdin(capsys, monkeypatch):
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(body)))
    code, out, _ = run(capsys, "--config", OFFLINE, "explain", "--request", "-", "--format", "json")
    document = json.loads(out)
    assert code == 0 and document["stream"] and document["max_tokens"] == 5 and document["order"] == ["echo/echo-1"]
    assert document["cache"]["cacheable"] is False


def test_explain_a_bad_request_names_the_field(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"model": "echo", "messages": [{"role": "robot"}]}'))
    code, _, err = run(capsys, "--config", OFFLINE, "explain", "--request", "-")
    assert code == 1 and err.startswith("stdin: `messages[0].role`:")
    monkeypatch.setattr(sys, "stdin", io.StringIO("not json"))
    code, _, err = run(capsys, "--config", OFFLINE, "explain", "--request", "-")
    assert code == 1 and err.startswith("stdin: the request is not JSON")
    code, _, err = run(capsys, "--config", OFFLINE, "explain", "--request", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read the request: No such file or directory" in err


# --- diff ----------------------------------------------------------------------------------------------------


def crafted(tmp_path: Path, name: str, old: str, new: str) -> str:
    text = Path(OFFLINE).read_text().replace(old, new)
    assert text != Path(OFFLINE).read_text()
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_diff_of_a_file_with_itself_exits_0(capsys):
    code, out, _ = run(capsys, "diff", OFFLINE, OFFLINE)
    assert code == 0 and out.endswith("no semantic change\n")
    code, out, _ = run(capsys, "diff", SHIPPED, SHIPPED, "--format", "markdown")
    assert code == 0 and "no semantic change" in out


def test_diff_a_weight_change_exits_1(capsys, tmp_path):
    new = crafted(tmp_path, "new.yaml", "model: mock-large, weight: 3", "model: mock-large, weight: 1")
    code, out, _ = run(capsys, "diff", OFFLINE, new)
    assert code == 1
    assert out.splitlines()[2:] == [
        "models:",
        "  ~ balanced: traffic primary/mock-large 75% -> 50%, backup/mock-small 25% -> 50%",
        "1 change, 0 warnings",
    ]


def test_diff_markdown_for_a_pull_request(capsys, tmp_path):
    text = (
        Path(OFFLINE)
        .read_text()
        .replace("Write a one-line greeting", "Write a warm greeting")
        .replace(
            "  echo:\n    type: mock\n",
            "  groq:\n    type: openai_compatible\n    base_url: https://api.groq.com/openai/v1\n"
            "    api_key: ${GROQ_API_KEY}\n  echo:\n    type: mock\n",
        )
    )
    new = tmp_path / "new.yaml"
    new.write_text(text)
    code, out, _ = run(capsys, "diff", OFFLINE, str(new), "--format", "markdown")
    assert code == 1
    assert out.startswith("<!-- llm-proxy-diff -->\n### llm-proxy config diff\n")
    assert "**2 changes**, 1 warning" in out
    assert "> [!WARNING]\n> **Risky changes**\n> - provider `groq` needs `GROQ_API_KEY`" in out
    assert (
        "| added | providers | `groq` | openai_compatible at https://api.groq.com/openai/v1, reads GROQ_API_KEY" in out
    )
    assert "| changed | templates | `greet` | body: +1 -1 lines |" in out
    assert "```diff\n--- greet (old)\n+++ greet (new)\n@@ -1 +1 @@\n-Write a one-line greeting" in out


def test_diff_json(capsys, tmp_path):
    new = crafted(tmp_path, "new.yaml", "retry: {max_attempts: 2,", "retry: {max_attempts: 4,")
    code, out, _ = run(capsys, "diff", OFFLINE, new, "--format", "json")
    document = json.loads(out)
    assert code == 1 and document["valid"] and document["changed"]
    assert document["changes"] == [
        {
            "section": "retry",
            "name": "",
            "kind": "changed",
            "path": "retry.max_attempts",
            "detail": "max_attempts: 2 -> 4",
            "diff": None,
        }
    ]


def test_diff_a_removed_model_still_named_exits_2(capsys, tmp_path):
    new = crafted(tmp_path, "new.yaml", "  echo:\n    targets:\n      - {provider: echo, model: echo-1}\n", "")
    code, out, err = run(capsys, "diff", OFFLINE, new)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{new}:51:12: templates.greet.model: unknown model `echo`; declared models: `default`, `balanced`",
        f"{new}: 1 problem",
        "! model `echo` is removed, but `templates.greet.model` still names it",
    ]
    code, out, _ = run(capsys, "diff", OFFLINE, new, "--format", "markdown")
    assert code == 2 and f"**`{new}` is not a valid config** (1 problem):" in out
    assert "> - model `echo` is removed, but `templates.greet.model` still names it" in out
    code, out, _ = run(capsys, "diff", OFFLINE, new, "--format", "json")
    document = json.loads(out)
    assert code == 2 and not document["valid"] and document["issues"][0]["line"] == 51
    code, _, err = run(capsys, "diff", OFFLINE, str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml: no such file" in err


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_diff_reads_git_revisions_with_their_templates(capsys, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "deploy" / "prompts").mkdir(parents=True)
    config = (
        Path(OFFLINE)
        .read_text()
        .replace("templates:\n  greet:", "template_dir: prompts\ntemplates:\n  brief:\n    file: brief.j2\n  greet:")
    )
    (repo / "deploy" / "proxy.yaml").write_text(config)
    (repo / "deploy" / "prompts" / "brief.j2").write_text("Be brief.\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    (repo / "deploy" / "prompts" / "brief.j2").write_text("Be very brief.\n")
    (repo / "deploy" / "proxy.yaml").write_text(config.replace("weight: 3", "weight: 2"))
    monkeypatch.chdir(repo / "deploy")
    code, out, err = run(capsys, "diff", "git:HEAD:proxy.yaml", "proxy.yaml")
    assert (code, err) == (1, "")
    assert out.splitlines()[0].startswith("--- git:HEAD:proxy.yaml (version ")
    assert "  ~ balanced: traffic primary/mock-large 75% -> 66.7%, backup/mock-small 25% -> 33.3%" in out
    assert "  ~ brief: body: +1 -1 lines\n      --- brief (old)" in out
    git(repo, "commit", "-q", "-am", "two")
    code, out, _ = run(capsys, "diff", "git:HEAD~1:proxy.yaml", "git:HEAD:proxy.yaml", "--format", "json")
    assert code == 1 and [c["path"] for c in json.loads(out)["changes"]] == [
        "models.balanced.targets",
        "templates.brief",
    ]
    assert run(capsys, "diff", "git:HEAD:proxy.yaml", "proxy.yaml")[0] == 0
    code, _, err = run(capsys, "diff", "git:no-such-rev:proxy.yaml", "proxy.yaml")
    assert code == 2 and err.startswith("git:no-such-rev:proxy.yaml: git: fatal:")
    code, _, err = run(capsys, "diff", "git:HEAD", "proxy.yaml")
    assert code == 2 and "expected git:REV:PATH" in err


def test_the_commands_as_a_real_process(tmp_path):
    new = crafted(tmp_path, "new.yaml", "model: mock-large, weight: 3", "model: mock-large, weight: 1")
    done = subprocess.run([sys.executable, "-m", "proxy", "diff", OFFLINE, new], capture_output=True, text=True)
    assert done.returncode == 1 and "traffic primary/mock-large 75% -> 50%" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", OFFLINE, "explain", "echo"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("model `echo`: fallback")
    usage = subprocess.run([sys.executable, "-m", "proxy", "diff", OFFLINE], capture_output=True, text=True)
    assert usage.returncode == 2 and "NEW" in usage.stderr


def test_the_ci_example_runs_commands_this_cli_accepts():
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "validate-and-diff.yml").read_text())
    steps = workflow["jobs"]["validate-and-diff"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert 'llm-proxy validate "$CONFIG"' in runs
    diff = next(line.strip() for line in runs.splitlines() if line.strip().startswith("llm-proxy diff"))
    argv = shlex.split(diff.split(">")[0].replace("$BASE_REF", "main").replace("$CONFIG", "config/proxy.yaml"))
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.old, args.new, args.format) == (
        "diff",
        "git:origin/main:config/proxy.yaml",
        "config/proxy.yaml",
        "markdown",
    )
    script = next(step["with"]["script"] for step in steps if "script" in step.get("with", {}))
    assert "<!-- llm-proxy-diff -->" in script  # the marker `diff --format markdown` writes, to update one comment
