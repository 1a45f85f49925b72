"""YAML text -> plain Python data plus the `line:col` of every key and value.

Stricter than `yaml.safe_load`, because a config file deserves it:
- duplicate keys are errors naming both lines (PyYAML silently keeps the last one);
- keys must be scalars and are kept as their source text (`1:` is the key "1", `on:` is "on");
- alias expansion is bounded (a "billion laughs" file is rejected after `MAX_NODES` nodes, in bounded memory),
  and so is nesting depth;
- NaN and infinities are rejected; timestamps stay strings;
- numbers YAML 1.1 reads differently from what they look like are errors that say so: a leading zero (`0100` is
  the octal 64), `0x`/`0b` prefixes and base 60 (`1:30` is 90); so are whole numbers beyond 64 bits, and values an
  explicit tag cannot read (`!!int abc`);
- unquoted numbers in exponent form without a dot or sign (`1e6`, YAML 1.2 style), which YAML 1.1 reads as text,
  are listed in `numeric_text` so the loader can treat them as numbers where the schema wants one.
Merge keys (`<<: *defaults`) work as in YAML 1.1. Every problem becomes a `ConfigIssue` with its position.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml

from proxy.config.suggest import clip, format_path
from proxy.errors import ConfigIssue

# The pure-Python loader on purpose: libyaml's composer recurses in C and crashes the process on input nested
# deeply enough (`[[[[...`), while the Python one raises RecursionError, which we report. Config files are small.
_BaseLoader = yaml.SafeLoader

MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_INT = 2**63 - 1  # the largest whole number a config value may be (beyond it, a number is surely a typo)

Path = tuple[str | int, ...]
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_OCTAL_INT = re.compile(r"^[-+]?0[0-7_]+$")
# YAML 1.2 floats that YAML 1.1 resolves as text: an exponent without a dot or without a sign (`1e6`, `2.5e10`).
NUMERIC_TEXT = re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


@dataclass
class YamlDocument:
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # value node of each path
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # key node of mapping entries
    plain_scalars: dict[Path, str] = field(default_factory=dict)  # source text of unquoted non-string scalars
    numeric_text: set[Path] = field(default_factory=set)  # unquoted text that YAML 1.2 reads as a number (`1e6`)

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

    def issue(self, node: yaml.Node, path: Path, message: str, *, mark: Any = None) -> None:
        mark = mark or node.start_mark
        self.issues.append(ConfigIssue(self.file, mark.line + 1, mark.column + 1, format_path(path), message, "yaml"))

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
            # PyYAML has taken the bad `<<` entry out already; `problem_mark` is where its value starts.
            message = f"invalid merge key `<<`: {exc.problem}; merge an anchored mapping (`<<: *name`)"
            self.issue(node, path, message, mark=exc.problem_mark)
            # Keep the mapping's own keys, so the rest of it is still checked (a merge key is never data).
            node.value = [
                (k, v)
                for k, v in node.value
                if not (isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge")
            ]
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
        text = clip(node.value, 40)
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issue(node, path, f"cannot read this value: {problem}")
            return None
        except (ValueError, KeyError, TypeError, OverflowError):
            # An explicit tag that does not fit the text (`!!int abc`, `!!bool maybe`), or a whole number too long
            # for Python to read.
            if node.tag == _INT_TAG and node.value.strip("+-_0123456789") == "":
                self.issue(node, path, f"`{text}` is too large a number")
            else:
                kind = node.tag.rsplit(":", 1)[-1]
                self.issue(node, path, f"`{text}` cannot be read as `!!{kind}`; remove the tag or fix the value")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.issue(node, path, f"`{text}` is not a finite number")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            self.issue(node, path, f"`{text}` is too large a number (at most {MAX_INT})")
            return None
        if isinstance(value, date):  # pragma: no cover - timestamps are kept as text above
            return node.value
        if node.style is None and isinstance(value, int | float) and not isinstance(value, bool):
            surprise = _yaml11_number(node.value, value)
            if surprise:
                self.issue(node, path, surprise)
                return None
        if node.style is None and not isinstance(value, str):
            self.doc.plain_scalars[path] = node.value
        if node.style is None and isinstance(value, str) and NUMERIC_TEXT.match(value):
            self.doc.numeric_text.add(path)
        return value


def _yaml11_number(source: str, value: float) -> str | None:
    """Why an unquoted number means something other than it looks (YAML 1.1 rules), or None when it does not."""
    plain = source.strip()
    if ":" in plain:
        return (
            f"YAML reads `{clip(plain, 40)}` as the base-60 number {value:g}; for a duration write e.g. `1m30s`, "
            "or put it in quotes if it is text"
        )
    if isinstance(value, float):
        return None
    if _DECIMAL_INT.match(plain):
        return None
    if _OCTAL_INT.match(plain):
        return (
            f"YAML reads `{clip(plain, 40)}` as the octal number {value} because it starts with 0; "
            f"write it without the leading zeros, or put it in quotes if it is text"
        )
    base = "hexadecimal" if "x" in plain.lower() else "binary"
    return (
        f"YAML reads `{clip(plain, 40)}` as the {base} number {value}; write {value}, or put it in quotes if it is text"
    )


def _syntax_issue(file: str, exc: yaml.YAMLError) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if "'\\t'" in problem or "\t" in problem:
        message = "a tab character is used for indentation or after a `:`; YAML needs spaces there"
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
