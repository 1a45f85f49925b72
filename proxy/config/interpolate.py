"""`${VAR}` and `${VAR:-default}` interpolation from the environment, applied to every string in the document.

- `${VAR}` is replaced by the variable's value. `${VAR:-text}` uses `text` when VAR is unset or empty.
- `$${` writes a literal `${`. References do not nest: a default cannot hold another `${...}` (reported).
- A value that is exactly one `${...}` is listed in `whole`; where the schema wants a number or boolean there,
  the loader converts it (`coerce`), so `port: ${PORT:-8085}` is an integer while an all-digit API key stays a
  string.
- An unset variable without a default is reported with its path. Under `providers.<name>` it does not fail the
  file: the loader disables that provider and says why (`unset` lists those paths and variables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.suggest import clip

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))([eE][-+]?[0-9]+)?$")
_MAX_DIGITS = 400  # longer digit strings stay text (a float holds ~309 digits; Python reads at most 4,300)

Path = tuple[str | int, ...]


@dataclass
class Interpolation:
    data: Any
    unset: dict[Path, list[str]] = field(default_factory=dict)  # path -> variables that were unset, no default
    malformed: dict[Path, str] = field(default_factory=dict)  # path -> what is wrong with a reference
    variables: dict[Path, list[str]] = field(default_factory=dict)  # path -> every variable it references
    whole: set[Path] = field(default_factory=set)  # paths whose value was exactly one reference


def coerce(text: str) -> Any:
    """The number or boolean `text` spells (`8085`, `0.5`, `1e6`, `true`), else `text` unchanged. A number too
    long to be a sensible value, or beyond a float's range, stays text (the schema then says what it expected)."""
    if len(text) <= _MAX_DIGITS:
        if _INT.match(text):
            return int(text)
        if _FLOAT.match(text):
            value = float(text)
            return value if math.isfinite(value) else text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _expand(value: str, path: Path, env: Mapping[str, str], result: Interpolation) -> Any:
    if "$" not in value:
        return value
    whole = False
    pieces: list[str] = []
    last = 0
    for match in _REFERENCE.finditer(value):
        pieces.append(value[last : match.start()])
        last = match.end()
        token = match.group(0)
        if token == "$${":
            pieces.append("${")
            continue
        inner = match.group(1)
        if inner is None:
            result.malformed[path] = "a `${` is never closed with `}`"
            pieces.append(token)
            continue
        name, sep, default = inner.partition(":-")
        name = name.strip()
        if "${" in default:
            result.malformed[path] = (
                f"the default of `${{{clip(name)}:-...}}` contains another `${{...}}` reference; references do not "
                "nest, so write the default value itself"
            )
            pieces.append(match.group(0))
            continue
        if not _NAME.match(name):
            result.malformed[path] = (
                f"`${{{clip(inner)}}}` is not a variable reference; write `${{NAME}}` or `${{NAME:-default}}` "
                "(use `$${` for a literal `${`)"
            )
            pieces.append(token)
            continue
        result.variables.setdefault(path, []).append(name)
        current = env.get(name)
        if current is None or (sep and current == ""):
            if sep:
                current = default
            else:
                result.unset.setdefault(path, []).append(name)
                current = ""
        pieces.append(current)
        whole = match.start() == 0 and match.end() == len(value)
    pieces.append(value[last:])
    expanded = "".join(pieces)
    if whole:
        result.whole.add(path)
    return expanded


def interpolate(data: Any, env: Mapping[str, str]) -> Interpolation:
    """Expand references in every string of `data` (a fresh copy is returned; `data` is not changed)."""
    result = Interpolation(data=None)

    def walk(node: Any, path: Path) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, (*path, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*path, i)) for i, value in enumerate(node)]
        if isinstance(node, str):
            return _expand(node, path, env, result)
        return node

    result.data = walk(data, ())
    return result
