"""YAML text -> plain Python data plus the `line:col` of every key and value.

Stricter than `yaml.safe_load`, because a config file deserves it:
- duplicate keys are errors naming both lines (PyYAML silently keeps the last one);
- keys must be scalars and are kept as their source text (`1:` is the key "1", `on:` is "on");
- alias expansion is bounded (a "billion laughs" file is rejected after `MAX_NODES` nodes, in bounded memory),
  and so is nesting depth;
- NaN and infinities are rejected; timestamps stay strings.
Merge keys (`<<: *defaults`) work as in YAML 1.1. Every problem becomes a `ConfigIssue` with its position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml

from proxy.errors import ConfigIssue

# The pure-Python loader on purpose: libyaml's composer recurses in C and crashes the process on input nested
# deeply enough (`[[[[...`), while the Python one raises RecursionError, which we report. Config files are small.
_BaseLoader = yaml.SafeLoader

MAX_NODES = 100_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass
class YamlDocument:
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # value node of each path
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # key node of mapping entries
    plain_scalars: dict[Path, str] = field(default_factory=dict)  # source text of unquoted non-string scalars

    def position(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """The position of `path`, or of its nearest ancestor that has one."""
        table = self.key_positions if key else self.positions
        probe = tuple(path)
        while True:
            if probe in table:
                return table[probe]
            if key and probe in self.positions:
                return self.positions[probe]
            if not probe:
                return (None, None)
            probe = probe[:-1]


class _TooBig(Exception):
    pass


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Walker:
    def __init__(self, file: str, loader: Any) -> None:
        self.file = file
        self.loader = loader
        self.nodes = 0
        self.doc = YamlDocument(data=None)
        self.issues: list[ConfigIssue] = []

    def issue(self, node: yaml.Node, path: Path, message: str) -> None:
        from proxy.config.suggest import format_path

        line, col = _pos(node)
        self.issues.append(ConfigIssue(self.file, line, col, format_path(path), message, "yaml"))

    def walk(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(f"the document expands to more than {MAX_NODES:,} nodes (aliases expanded too many times?)")
        if depth > MAX_DEPTH:
            raise _TooBig(f"the document is nested more than {MAX_DEPTH} levels deep")
        self.doc.positions[path] = _pos(node)
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            self.issue(node, path, f"the tag `{node.tag}` is not allowed in a config file")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                first = seen[key_node.value]
                self.issue(
                    key_node,
                    (*path, key_node.value),
                    f"duplicate key `{key_node.value}` (first defined at line {first.start_mark.line + 1}); "
                    "keep only one",
                )
            else:
                seen[key_node.value] = key_node
        try:
            self.loader.flatten_mapping(node)  # expands `<<: *anchor` merge keys in place
        except yaml.constructor.ConstructorError as exc:
            self.issue(node, path, f"invalid merge key: {exc.problem}")
            return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.issue(key_node, path, "a key must be a plain name, not a list or a mapping")
                continue
            key = key_node.value
            child = (*path, key)
            self.doc.key_positions[child] = _pos(key_node)
            result[key] = self.walk(value_node, child, depth + 1)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issue(node, path, f"cannot read this value: {problem}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.issue(node, path, f"`{node.value}` is not a finite number")
            return None
        if isinstance(value, date):  # pragma: no cover - timestamps are kept as text above
            return node.value
        if node.style is None and not isinstance(value, str):
            self.doc.plain_scalars[path] = node.value
        return value


def _syntax_issue(file: str, exc: yaml.YAMLError) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if "'\\t'" in problem or "\t" in problem:
        message = "a tab character is used for indentation; YAML needs spaces"
    elif isinstance(exc, yaml.reader.ReaderError):
        message = f"the file contains a character YAML does not allow (code {exc.character!r}); is it a text file?"
    else:
        message = f"YAML syntax error: {problem}"
        context_mark = getattr(exc, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            message += f" ({context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1})"
        elif context:
            message += f" ({context})"
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigIssue(file, line, column, "", message, "yaml")


def parse_yaml(text: str, file: str) -> tuple[YamlDocument | None, list[ConfigIssue]]:
    """Parse one YAML document. Returns (document or None, issues); never raises for bad input."""
    if not text.strip():
        return None, [
            ConfigIssue(
                file,
                None,
                None,
                "",
                "the file is empty; expected a mapping with `version`, `providers` and `models`",
                "yaml",
            )
        ]
    try:
        loader = _BaseLoader(text)  # the reader checks for unprintable characters right here
    except yaml.YAMLError as exc:
        return None, [_syntax_issue(file, exc)]
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            return None, [_syntax_issue(file, exc)]
        except RecursionError:
            return None, [ConfigIssue(file, None, None, "", "the document is nested too deeply", "yaml")]
        if root is None:
            return None, [ConfigIssue(file, None, None, "", "the file has no content; expected a mapping", "yaml")]
        walker = _Walker(file, loader)
        try:
            data = walker.walk(root, (), 0)
        except _TooBig as exc:
            return None, [ConfigIssue(file, *_pos(root), "", str(exc), "yaml")]
        except RecursionError:
            return None, [ConfigIssue(file, *_pos(root), "", "the document is nested too deeply", "yaml")]
    finally:
        loader.dispose()
    walker.doc.data = data
    return walker.doc, walker.issues
