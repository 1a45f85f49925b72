"""The README stays true: its config reference equals the schema's, and it shows the two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.config.reference import markdown_reference

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_config_reference_matches_the_schema():
    match = re.search(r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", README, re.S)
    assert match, "README lost its config reference markers"
    assert match.group(1) == markdown_reference(), "regenerate with `llm-proxy schema --format markdown`"


def test_two_setup_commands():
    block = README.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[1].startswith("pip install -e '.[dev]' && python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --quiet --disable-pip-version-check -e '.[dev]'" in ci and "python3 -m pytest" in ci
