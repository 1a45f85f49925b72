"""Did-you-mean suggestions and config-path formatting for error messages."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def clip(text: object, limit: int = 60) -> str:
    """`text` for a message: at most `limit` characters (a value can be megabytes long)."""
    shown = str(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`"; did you mean `providers`?"` when a choice is close to `word`, else an empty string."""
    if len(word) > 200:
        return ""  # nothing sensible is that long, and comparing costs time in proportion to its length
    options = [c for c in choices if isinstance(c, str)]
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    if not matches:
        lowered = {c.lower(): c for c in options}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f"; did you mean `{matches[0]}`?" if matches else ""


def format_path(path: Sequence[str | int]) -> str:
    """(`models`, `fast`, `targets`, 1, `weight`) -> `models.fast.targets[1].weight`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def quote_list(items: Iterable[str]) -> str:
    return ", ".join(f"`{item}`" for item in items)
