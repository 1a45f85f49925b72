"""`llm-proxy diff OLD NEW`: what a config change does, for reviews (like `git diff --exit-code`).

    llm-proxy diff config/proxy.yaml new.yaml
    llm-proxy diff git:origin/main:config/proxy.yaml config/proxy.yaml --format markdown   # a PR comment

OLD and NEW are config files, or `git:REV:PATH`: the file at a git revision (PATH relative to the current directory,
read with `git show`, with its template directory from the same revision). Both are loaded like `validate` does,
with this environment. The semantic diff and its warnings come from `proxy.config_diff`; this module reads the
inputs and prints `text`, `markdown` (a pull-request comment, marked `<!-- llm-proxy-diff -->` so a bot can update
it) or `json`.

Exit 0 when nothing changed, 1 when something did, 2 when a side cannot be read or is invalid (its problems, each
`file:line:col`, are printed: on stderr for text, in the document for markdown and json).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.load import check_config_text, read_config_bytes
from proxy.config.model import Config
from proxy.config.yaml_source import parse_yaml
from proxy.config_diff import ConfigDiff, Risk, Snapshot, dangling_model_references, diff_configs, provider_variables
from proxy.errors import ConfigIssue

EXIT_SAME, EXIT_CHANGED, EXIT_INVALID = 0, 1, 2
MARKER = "<!-- llm-proxy-diff -->"
MAX_TEMPLATE_FILES = 1000
_SYMBOL = {"added": "+", "removed": "-", "changed": "~"}


def add_parser(commands: argparse._SubParsersAction) -> None:
    diff = commands.add_parser(
        "diff",
        help="semantic diff of two configs with risk warnings; exit 0 same, 1 changed, 2 invalid",
        description="Compare two configs by meaning: providers, models (weights as traffic shares), limits, "
        "timeouts, cache, templates; warn about risky changes. OLD and NEW are paths or git:REV:PATH.",
    )
    diff.add_argument("old", metavar="OLD", help="the config before: a path, or git:REV:PATH")
    diff.add_argument("new", metavar="NEW", help="the config after: a path, or git:REV:PATH")
    diff.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="output format")


# --- reading a side ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    label: str
    version: str | None
    snapshot: Snapshot | None  # None when invalid
    issues: tuple[ConfigIssue, ...]
    text: str | None


def _template_bodies(config: Config) -> dict[str, str]:
    bodies = {}
    for name, template in config.templates.items():
        if template.text is not None:
            bodies[name] = template.text
        elif template.file is not None:
            try:
                bodies[name] = template.file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # checked when the config loaded; a race shows as "no body change"
    return bodies


def _side(label: str, text: str, base_dir: Path) -> Side:
    result = check_config_text(text, file=label, base_dir=base_dir)
    if result.config is None:
        return Side(label, None, None, result.issues, text)
    snapshot = Snapshot(result.config, provider_variables(text), _template_bodies(result.config))
    return Side(label, result.config.version_hash, snapshot, (), text)


def _failed(label: str, message: str) -> Side:
    return Side(label, None, None, (ConfigIssue(label, None, None, "", message, "io"),), None)


def read_file_side(path: str) -> Side:
    text, issues = read_config_bytes(Path(path))
    if text is None:
        return Side(path, None, None, tuple(issues), None)
    return _side(path, text, Path(path).resolve().parent)


class GitError(Exception):
    pass


def _git(*args: str, cwd: Path | None = None) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(message[0] if message else f"git {args[0]} failed")
    return done.stdout


def read_git_side(spec: str) -> Side:
    """`git:REV:PATH`: the file at REV (PATH relative to the current directory), with REV's template directory."""
    rev, sep, path = spec[len("git:") :].partition(":")
    if not sep or not rev or not path:
        return _failed(spec, "expected git:REV:PATH, e.g. git:origin/main:config/proxy.yaml")
    try:
        top = Path(_git("rev-parse", "--show-toplevel").decode().strip())
        prefix = _git("rev-parse", "--show-prefix").decode().strip()
        in_repo = posixpath.normpath(posixpath.join(prefix, path))
        if in_repo.startswith(".."):
            return _failed(spec, "the path is outside the git repository")
        raw = _git("show", f"{rev}:{in_repo}", cwd=top)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return _failed(spec, "the file is not UTF-8 text (is it a binary file?)")
        with tempfile.TemporaryDirectory(prefix="llm-proxy-diff-") as tmp:
            root = Path(tmp)
            target = root / in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            _checkout_templates(rev, in_repo, text, top, root)
            return _side(spec, text, target.parent)
    except GitError as exc:
        return _failed(spec, f"git: {exc}")


def _checkout_templates(rev: str, in_repo: str, text: str, top: Path, root: Path) -> None:
    """Write REV's template directory (the one `text` names) under `root`, so template files load as at REV."""
    doc, _ = parse_yaml(text, "<config>")
    data = doc.data if doc is not None and isinstance(doc.data, dict) else {}
    if not data.get("templates") or not isinstance(data.get("template_dir", "templates"), str):
        return
    folder = posixpath.normpath(posixpath.join(posixpath.dirname(in_repo), data.get("template_dir", "templates")))
    if folder.startswith(".."):
        return
    names = [n for n in _git("ls-tree", "-r", "-z", "--name-only", rev, "--", folder, cwd=top).split(b"\0") if n]
    for name in names[:MAX_TEMPLATE_FILES]:
        relative = name.decode("utf-8", "replace")
        destination = root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(_git("show", f"{rev}:{relative}", cwd=top))


def read_side(spec: str) -> Side:
    return read_git_side(spec) if spec.startswith("git:") else read_file_side(spec)


# --- output ------------------------------------------------------------------------------------------------


def _subject(change: Any) -> str:
    return change.name if change.name else change.path.rsplit(".", 1)[0]


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def as_text(old: Side, new: Side, diff: ConfigDiff) -> str:
    lines = [f"--- {old.label} (version {old.version})", f"+++ {new.label} (version {new.version})"]
    section = None
    for change in diff.changes:
        if change.section != section:
            section = change.section
            lines.append(f"{section}:")
        detail = change.detail if change.name else change.path + ": " + change.detail.split(": ", 1)[-1]
        head = f"  {_SYMBOL[change.kind]} {change.name}: " if change.name else f"  {_SYMBOL[change.kind]} "
        lines.append(head + detail)
        if change.diff:
            lines.extend(f"      {line}" for line in change.diff.splitlines())
    if diff.warnings:
        lines.append("warnings:")
        lines.extend(f"  ! {risk.message}" for risk in diff.warnings)
    if diff.changed:
        lines.append(f"{_count(len(diff.changes), 'change')}, {_count(len(diff.warnings), 'warning')}")
    else:
        lines.append("no semantic change")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _warnings_block(warnings: tuple[Risk, ...] | list[Risk]) -> list[str]:
    if not warnings:
        return []
    return ["> [!WARNING]", "> **Risky changes**", *(f"> - {_cell(risk.message)}" for risk in warnings), ""]


def as_markdown(old: Side, new: Side, diff: ConfigDiff) -> str:
    head = f"`{old.label}` (`{old.version}`) → `{new.label}` (`{new.version}`)"
    lines = [MARKER, "### llm-proxy config diff", ""]
    if not diff.changed:
        lines += [f"{head}: no semantic change.", ""]
        return "\n".join(lines)
    lines += [f"{head}: **{_count(len(diff.changes), 'change')}**, {_count(len(diff.warnings), 'warning')}", ""]
    lines += _warnings_block(diff.warnings)
    lines += ["| | section | name | change |", "|:-:|---|---|---|"]
    for change in diff.changes:
        name = f"`{change.name}`" if change.name else ""
        detail = change.detail if change.name else change.path + ": " + change.detail.split(": ", 1)[-1]
        lines.append(f"| {change.kind} | {change.section} | {name} | {_cell(detail)} |")
    lines.append("")
    for change in diff.changes:
        if change.diff:
            lines += [f"<details><summary>template <code>{change.name}</code></summary>", "", "```diff"]
            lines += [change.diff, "```", "", "</details>", ""]
    return "\n".join(lines)


def _invalid(old: Side, new: Side, fmt: str) -> str:
    warnings: list[Risk] = []
    if old.snapshot is not None and new.snapshot is None and new.text is not None:
        warnings = dangling_model_references(old.snapshot.config, new.text)
    bad = [side for side in (old, new) if side.snapshot is None]
    if fmt == "json":
        document = {
            "valid": False,
            "old": old.label,
            "new": new.label,
            "issues": [issue.as_dict() for side in bad for issue in side.issues],
            "warnings": [risk.as_dict() for risk in warnings],
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt == "markdown":
        lines = [MARKER, "### llm-proxy config diff", ""]
        for side in bad:
            lines += [f"**`{side.label}` is not a valid config** ({_count(len(side.issues), 'problem')}):", ""]
            lines += ["```", *(issue.format() for issue in side.issues), "```", ""]
        return "\n".join([*lines, *_warnings_block(warnings)])
    lines = [issue.format() for side in bad for issue in side.issues]
    lines += [f"{side.label}: {_count(len(side.issues), 'problem')}" for side in bad]
    lines += [f"! {risk.message}" for risk in warnings]
    return "\n".join(lines) + "\n"


def cmd_diff(args: argparse.Namespace) -> int:
    old, new = read_side(args.old), read_side(args.new)
    if old.snapshot is None or new.snapshot is None:
        output = _invalid(old, new, args.format)
        (sys.stderr if args.format == "text" else sys.stdout).write(output)
        return EXIT_INVALID
    diff = diff_configs(old.snapshot, new.snapshot, env=os.environ)
    if args.format == "json":
        document = {"valid": True, "old": old.label, "new": new.label, **diff.as_dict()}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(as_markdown(old, new, diff))
    else:
        sys.stdout.write(as_text(old, new, diff))
    return EXIT_CHANGED if diff.changed else EXIT_SAME
