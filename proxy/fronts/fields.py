"""Typed readers for the fields of a JSON request body, shared by the HTTP fronts: each returns the value with its
type narrowed, or raises the front's error naming the field path (`messages[2].content[0].type`).

    FIELDS = Fields(error=lambda path, problem: RequestError(f"{path}: {problem}", param=path))
    temperature = FIELDS.number(body["temperature"], "temperature", 0, 2)

A `Fields` is parameterised by the error it raises (`error(path, problem)` builds it, message and `param`) and by
how its messages phrase a bad value (`out_of_range`, `surrogate`), so each front keeps its own wording there; a
value of the wrong kind is named alike by both ("must be a number, not a string", `proxy.json_kinds`). Booleans
are never numbers; numbers must be finite (Python's JSON reader accepts `NaN`, `Infinity` and `1e999`, which no
upstream would); null counts as absent only where a method says `optional`. Nothing here knows an API.

Free-form JSON that is sent on as it is (tool schemas, tool inputs, `response_format`) goes through `json_object`:
at most `MAX_JSON_DEPTH` levels deep, every string real text, every number finite. `check_values` checks a whole
body for the last two in one quick pass, and names the path only when something is wrong; both use `_scan`, and
`json_object(..., values_checked=True)` only bounds the nesting of JSON in a body `check_values` passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from proxy.json_kinds import json_kind

MAX_JSON_DEPTH = 64  # for free-form JSON (tool schemas, tool inputs): deeper is almost surely garbage
MAX_MODEL_NAME = 256  # characters; longer is no model name (and would be echoed back, logged and counted)
MAX_MESSAGES = 100_000  # per request, as Anthropic's API; far more is a body built to keep the proxy busy
MAX_TOKENS = 2**31 - 1  # max_tokens, top_k: what any API accepts; beyond it, token arithmetic would overflow a float
NOT_FINITE = "must be a finite number, not NaN or Infinity (JSON has neither)"
_SHOWN_DIGITS = 30  # longer numbers are not echoed (and huge ints cannot even be turned into text)


# --- naming a value in a message ---------------------------------------------------------------------------


def brief(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters for an error message (a client's 1 MB "role" need not come back whole)."""
    return text if len(text) <= limit else text[:limit] + "…"


def not_value(what: str, low: str | None, high: str | None, value: float) -> str:
    """`must be a finite number between 0 and 2, not 3` (bounds only when both are given; huge ints unechoed)."""
    bounds = f" between {low} and {high}" if low is not None and high is not None else ""
    if isinstance(value, int) and abs(value) >= 10**_SHOWN_DIGITS:
        shown = "a number that large"
    else:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"must be {what}{bounds}, not {shown}"


def between_got(what: str, low: str | None, high: str | None, value: float) -> str:
    """`must be between 0 and 2, got 3` (the value's repr, cut to 24 characters)."""
    text = repr(value)
    return f"must be between {low} and {high}, got {text if len(text) <= 24 else text[:24] + '…'}"


def field_path(keys: tuple[str | int, ...]) -> str:
    """`("messages", 2, "content")` -> `messages[2].content`."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def is_finite(value: object) -> bool:
    """False for a float NaN or infinity (what `NaN`, `Infinity` and `1e999` parse to)."""
    return not isinstance(value, float) or math.isfinite(value)


_SURROGATE, _NOT_FINITE, _TOO_DEEP = "surrogate", "not finite", "too deep"  # what `_scan` finds


def _scan(body: object, *, max_depth: int | None = None, values: bool = True) -> str | None:
    """The first problem in `body`, level by level: when `values`, a string (value or key) holding a lone surrogate
    (`_SURROGATE`) or a number that is NaN or infinite (`_NOT_FINITE`); nesting deeper than `max_depth` levels
    (`_TOO_DEEP`); None when there is none. One iterative pass without paths: ~5x faster than the walk that names
    them, for 20 MB bodies of tiny messages, and tool schemas come with every request."""
    level: list[Any] = [body]
    depth = 0
    while level:
        if depth == max_depth:
            return _TOO_DEEP
        depth += 1
        children: list[Any] = []
        push = children.append
        for node in level:
            if type(node) is dict:
                if values:
                    for key in node:
                        if not key.isascii() and not is_text(key):  # JSON keys are strings
                            return _SURROGATE
                items: Any = node.values()
            else:
                items = node
            for item in items:
                kind = type(item)
                if kind is str:
                    if not item.isascii() and values and not is_text(item):
                        return _SURROGATE
                elif kind is dict or kind is list:
                    push(item)
                elif kind is float and item - item and values:  # nan - nan, inf - inf: NaN (truthy); finite: 0.0
                    return _NOT_FINITE
        level = children
    return None


def is_text(value: str) -> bool:
    """False when `value` holds a lone UTF-16 surrogate (JSON can escape one, UTF-8 cannot carry it). O(1) for
    ASCII text."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the readers -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fields:
    """Field readers raising `error(path, problem)`; see the module docstring for the phrasing parameters.

    `out_of_range(what, low, high, value)` words a number outside its bounds (`what` is `a finite number` or
    `an integer`, the bounds already formatted, `None` when not given); `integral_floats` reads `2.0` as the
    integer 2; `surrogate` is the problem of a string holding a lone UTF-16 surrogate. A value of the wrong kind is
    named by `json_kind`, alike for every front."""

    error: Callable[[str, str], Exception]
    out_of_range: Callable[[str, str | None, str | None, float], str] = not_value
    integral_floats: bool = True
    surrogate: str = "holds a lone UTF-16 surrogate escape, which is not Unicode text"

    def fail(self, path: str, problem: str) -> NoReturn:
        raise self.error(path, problem)

    def expect(self, value: object, kinds: tuple[type, ...], path: str, what: str) -> Any:
        """`value` if it is one of `kinds` (a bool only when `bool` is listed), else `must be <what>, not <kind>`."""
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(path, f"must be {what}, not {json_kind(value)}")
        return value

    def number(self, value: object, path: str, low: float | None = None, high: float | None = None) -> float:
        number = self.expect(value, (int, float), path, "a number")
        infinite = isinstance(number, float) and not math.isfinite(number)  # (a huge int cannot become a float)
        if infinite or (low is not None and number < low) or (high is not None and number > high):
            self.fail(
                path,
                self.out_of_range(
                    "a finite number",
                    None if low is None else f"{low:g}",
                    None if high is None else f"{high:g}",
                    number,
                ),
            )
        return float(number)

    def integer(self, value: object, path: str, low: int | None = None, high: int | None = None) -> int:
        if self.integral_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        number = self.expect(value, (int,), path, "an integer")
        if (low is not None and number < low) or (high is not None and number > high):
            self.fail(path, self.out_of_range("an integer", f"{low}", f"{high}", number))
        return number

    def text(self, value: str, path: str) -> str:
        """`value`, refused if it holds a lone UTF-16 surrogate (no upstream could be sent it)."""
        if not is_text(value):
            self.fail(path, self.surrogate)
        return value

    def string(self, value: object, path: str, *, non_empty: bool = False) -> str:
        text = self.expect(value, (str,), path, "a string")
        if non_empty and not text:
            self.fail(path, "must not be empty")
        return self.text(text, path)

    def optional_string(self, value: object, path: str) -> str | None:
        return None if value is None else self.string(value, path)

    def boolean(self, value: object, path: str) -> bool:
        return self.expect(value, (bool,), path, "a boolean")

    def optional_bool(self, value: object, path: str) -> bool | None:
        return None if value is None else self.boolean(value, path)

    def object(self, value: object, path: str) -> dict[str, Any]:
        return self.expect(value, (dict,), path, "an object")

    def array(self, value: object, path: str, *, non_empty: bool = False) -> list[Any]:
        items = self.expect(value, (list,), path, "an array")
        if non_empty and not items:
            self.fail(path, "must not be empty")
        return items

    def one_of(self, value: object, path: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, path)
        if text not in choices:
            listing = ", ".join(f"`{c}`" for c in choices)
            self.fail(path, f"must be one of {listing}, not `{text[:100]}`")
        return text

    def model_name(self, value: object, path: str = "model") -> str:
        """A model name: a non-empty string of at most `MAX_MODEL_NAME` characters."""
        name = self.string(value, path, non_empty=True)
        if len(name) > MAX_MODEL_NAME:
            self.fail(path, f"is {len(name)} characters long; a model name has at most {MAX_MODEL_NAME}")
        return name

    def check_values(self, body: Any) -> None:
        """Refuse strings (values or keys) anywhere in `body` holding a lone UTF-16 surrogate (not Unicode text: it
        would fail later when an upstream body or the answer is encoded) and numbers that are NaN or infinite (no
        upstream takes them). A quick pass first; the walk naming a bad value's path only when that fails."""
        if _scan(body) is None:
            return
        stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
        while stack:
            value, path = stack.pop()
            if isinstance(value, str):
                self.text(value, field_path(path))
            elif not is_finite(value):
                self.fail(field_path(path), NOT_FINITE)
            elif isinstance(value, dict):
                for key, item in value.items():
                    if not is_text(key):
                        self.fail(field_path(path) or "the request body", "a key holds a lone UTF-16 surrogate escape")
                    stack.append((item, (*path, key)))
            elif isinstance(value, list):
                stack.extend((item, (*path, index)) for index, item in enumerate(value))

    check_unicode = check_values  # the older name

    def json_object(self, value: object, path: str, *, values_checked: bool = False) -> dict[str, Any]:
        """A free-form JSON object (tool schema, tool input): nesting bounded, every key and string real text, every
        number finite. `values_checked`: the whole body holding it went through `check_values` already, so only
        the nesting is left to check."""
        obj = self.object(value, path)
        problem = _scan(obj, max_depth=MAX_JSON_DEPTH, values=not values_checked)
        if problem is _SURROGATE:
            self.fail(path, self.surrogate)
        if problem is _NOT_FINITE:
            self.fail(path, "holds a number that is NaN or infinite (JSON has neither)")
        if problem is _TOO_DEEP:
            self.fail(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
        return obj
