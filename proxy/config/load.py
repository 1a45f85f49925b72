"""Load a config file: read -> YAML with positions -> `${VAR}` interpolation -> JSON Schema -> semantic checks
-> frozen `Config`.

Every layer runs and every problem is collected, so one run reports all of them, each as
`file:line:col: path: message`. Bad input of any kind (unreadable, binary, huge, a YAML bomb) becomes a
`ConfigIssue`, never a traceback. Template files are read and compiled once per load, by the checks; the `Config`
carries what they made to the runtime (`proxy.config.template_load`).

    config = load_config("config/proxy.yaml")          # raises ConfigError listing every problem
    issues = check_config_file("config/proxy.yaml")    # [] when valid
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.build import build_config
from proxy.config.interpolate import coerce, interpolate
from proxy.config.model import Config
from proxy.config.schema_check import schema_issues
from proxy.config.semantic import semantic_problems
from proxy.config.suggest import clip, format_path
from proxy.config.template_checks import read_template_file, resolve_path
from proxy.config.template_load import TemplateLoad, one_load
from proxy.config.yaml_source import YamlDocument, parse_yaml
from proxy.errors import ConfigError, ConfigIssue
from proxy.resources import default_config_path

MAX_CONFIG_BYTES = 2 * 1024 * 1024
MAX_ISSUES = 100  # problems listed for one file; the rest are counted


@dataclass(frozen=True)
class LoadResult:
    config: Config | None
    issues: tuple[ConfigIssue, ...]


def _issue_at(file: str, doc: YamlDocument, path: tuple, message: str, layer: str, *, at_key: bool = False):
    line, column = doc.position(path, key=at_key)
    return ConfigIssue(file, line, column, format_path(path), message, layer)


def read_config_bytes(path: Path) -> tuple[str | None, list[ConfigIssue]]:
    """The file's text, or the reason it cannot be used as a config file."""
    file = str(path)
    try:
        if path.is_dir():
            return None, [ConfigIssue(file, None, None, "", "is a directory, not a config file", "io")]
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device would block the read, or never end
            return None, [ConfigIssue(file, None, None, "", "is not a regular file (a pipe or a device?)", "io")]
        size = info.st_size
        if size > MAX_CONFIG_BYTES:
            return None, [
                ConfigIssue(
                    file,
                    None,
                    None,
                    "",
                    f"the file is {size / 1e6:.1f} MB; a config file may be "
                    f"at most {MAX_CONFIG_BYTES // (1024 * 1024)} MiB",
                    "io",
                )
            ]
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since it was measured
        if len(raw) > MAX_CONFIG_BYTES:
            return None, [
                ConfigIssue(file, None, None, "", f"the file is over {MAX_CONFIG_BYTES // (1024 * 1024)} MiB", "io")
            ]
    except FileNotFoundError:
        return None, [ConfigIssue(file, None, None, "", "no such file", "io")]
    except PermissionError:
        return None, [ConfigIssue(file, None, None, "", "cannot read the file: permission denied", "io")]
    except OSError as exc:
        return None, [ConfigIssue(file, None, None, "", f"cannot read the file: {exc.strerror or exc}", "io")]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        message = "the file is saved as UTF-16 (Windows 'Unicode'); save it as UTF-8"
        return None, [ConfigIssue(file, 1, 1, "", message, "io")]
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [ConfigIssue(file, line, column, "", "the file is not UTF-8 text (is it a binary file?)", "io")]


def _guarded(check: Callable[[], list], fallback: list) -> list:
    # Semantic checks run even when the schema found problems, so one run reports everything; on data the schema
    # already rejected they may meet a wrong shape, which the schema issue explains.
    try:
        return check()
    except (TypeError, AttributeError, KeyError, IndexError):
        return fallback


def _template_dir(data: dict[str, Any], base_dir: Path | None) -> tuple[Path | None, str | None]:
    """Where template files are read from, or why `template_dir` cannot be used (None when it is not text: the
    schema reports that)."""
    if base_dir is None:
        return None, None
    value = data.get("template_dir", "templates")
    if not isinstance(value, str) or not value:
        return None, None
    try:
        return resolve_path(base_dir / value, value), None
    except ValueError as exc:
        return None, str(exc)


def _version_hash(text: str, config: Config) -> str:
    digest = hashlib.sha256(text.encode("utf-8"))
    for template in config.templates.values():
        if template.file is not None:
            # As the checks read it (once per load; a path they did not read is read now). Unreadable since: the
            # runtime's build says so.
            with contextlib.suppress(ValueError):
                digest.update(read_template_file(template.file).encode("utf-8"))
    return digest.hexdigest()[:12]


def check_config_text(
    text: str, *, file: str = "<config>", base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> LoadResult:
    """Run every layer on `text`. `base_dir` is where relative paths (template_dir) start."""
    with one_load() as load:  # each template file read, each template compiled, once
        return _check(text, file, base_dir, os.environ if env is None else env, load)


def _check(text: str, file: str, base_dir: Path | None, env: Mapping[str, str], load: TemplateLoad) -> LoadResult:
    doc, issues = parse_yaml(text, file)
    if doc is None:
        return LoadResult(None, tuple(issues))
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        issues.append(
            ConfigIssue(
                file,
                1,
                1,
                "",
                f"the top level must be a mapping (`version: 1`, `providers:`, `models:`), not {kind}",
                "yaml",
            )
        )
        return LoadResult(None, tuple(issues))

    expanded = interpolate(doc.data, env)
    data: dict[str, Any] = expanded.data
    disabled: dict[str, list[str]] = {}
    for path, message in expanded.malformed.items():
        issues.append(_issue_at(file, doc, path, message, "env"))
    for path, names in expanded.unset.items():
        if len(path) >= 2 and path[0] == "providers":
            disabled.setdefault(str(path[1]), []).extend(names)
            continue
        for name in names:
            issues.append(
                _issue_at(
                    file,
                    doc,
                    path,
                    f"environment variable `{clip(name)}` is not set; set it or write `${{{clip(name)}:-default}}`",
                    "env",
                )
            )

    # One message per value: a value the YAML or env layer already explained is not reported again by the later
    # layers (it was read as nothing, so they would only say "got nothing").
    explained = {issue.path for issue in issues}
    unset_paths = set(expanded.unset)
    for problem in schema_issues(
        data,
        plain_scalars=doc.plain_scalars,
        whole_references=expanded.whole,
        coerce=coerce,
        numeric_text=doc.numeric_text,
    ):
        if problem.path in unset_paths:
            continue  # an empty value from an unset variable: already reported or the provider is disabled
        if format_path(problem.path) in explained and not problem.at_key:
            continue
        issues.append(_issue_at(file, doc, problem.path, problem.message, "schema", at_key=problem.at_key))

    template_dir, problem = _template_dir(data, base_dir)
    if problem:
        issues.append(_issue_at(file, doc, ("template_dir",), problem, "semantic"))
    usable_dir = template_dir is not None or base_dir is None  # else `template_dir` itself is what is wrong
    explained = {issue.path for issue in issues}
    semantic = lambda: semantic_problems(data, template_dir=template_dir, check_files=usable_dir)  # noqa: E731
    for path, message, at_key in _guarded(semantic, []):
        if path in unset_paths:
            continue  # a value left empty by an unset variable (reported, or its provider is disabled)
        if format_path(path) in explained and not at_key:
            continue  # e.g. `provider: 1` is "expected text"; "unknown provider `1`" would say it again
        issues.append(_issue_at(file, doc, path, message, "semantic", at_key=at_key))

    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        if len(issues) > MAX_ISSUES:  # what validate prints, reload logs and /readyz shows stays readable
            more, total = len(issues) - MAX_ISSUES, len(issues)
            issues = issues[:MAX_ISSUES]
            message = f"... and {more} more problems not shown ({total} in all); fix these first"
            issues.append(ConfigIssue(file, None, None, "", message, "yaml"))
        return LoadResult(None, tuple(issues))
    reasons = {
        name: "environment variable"
        + ("s " if len(set(names)) > 1 else " ")
        + ", ".join(f"`{n}`" for n in dict.fromkeys(names))
        + (" are" if len(set(names)) > 1 else " is")
        + " not set"
        for name, names in disabled.items()
    }
    config = build_config(
        data, path=Path(file) if base_dir else None, version_hash="", template_dir=template_dir, disabled=reasons
    )
    version = _version_hash(text, config)
    templates = load.attach(config.templates, config.template_dir)
    return LoadResult(dataclasses.replace(config, templates=templates, version_hash=version), ())


def check_config_file(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> LoadResult:
    """Read and check a config file (the embedded default when `path` is None)."""
    resolved = Path(path) if path is not None else default_config_path()
    text, issues = read_config_bytes(resolved)
    if text is None:
        return LoadResult(None, tuple(issues))
    return check_config_text(
        text, file=str(path if path is not None else resolved), base_dir=resolved.resolve().parent, env=env
    )


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """The typed config from `path` (the embedded default when None); raises ConfigError with every problem."""
    result = check_config_file(path, env=env)
    if result.config is None:
        raise ConfigError(result.issues)
    return result.config


def load_config_text(
    text: str, *, file: str = "<config>", base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    result = check_config_text(text, file=file, base_dir=base_dir, env=env)
    if result.config is None:
        raise ConfigError(result.issues)
    return result.config
