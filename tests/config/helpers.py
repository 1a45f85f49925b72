"""Helpers for config tests: a minimal valid config and a loader that returns the issues."""

from __future__ import annotations

import textwrap
from pathlib import Path

from proxy.config.load import check_config_text
from proxy.errors import ConfigIssue

MINIMAL = """\
version: 1
providers:
  mock1:
    type: mock
models:
  default:
    targets:
      - {provider: mock1, model: m}
"""


def issues_of(text: str, *, env: dict[str, str] | None = None, base_dir: Path | None = None) -> list[ConfigIssue]:
    result = check_config_text(textwrap.dedent(text), file="test.yaml", base_dir=base_dir, env=env or {})
    return list(result.issues)


def config_of(text: str, *, env: dict[str, str] | None = None, base_dir: Path | None = None):
    result = check_config_text(textwrap.dedent(text), file="test.yaml", base_dir=base_dir, env=env or {})
    assert not result.issues, [i.format() for i in result.issues]
    return result.config


def only(issues: list[ConfigIssue]) -> ConfigIssue:
    assert len(issues) == 1, [i.format() for i in issues]
    return issues[0]
