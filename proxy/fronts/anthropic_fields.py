"""Checks for the fields of a JSON request body: each returns the value with its type narrowed, or raises
`RequestError` whose message starts with the field's path (`messages[2].content[0].text: must be a string, not
an integer`) and whose `param` is that path. Null counts as absent only where a function says `optional`.
"""

from __future__ import annotations

from typing import Any, NoReturn

from proxy.errors import RequestError

MAX_JSON_DEPTH = 64  # for free-form JSON (tool schemas, tool inputs): deeper is almost surely garbage


def fail(path: str, problem: str) -> NoReturn:
    raise RequestError(f"{path}: {problem}", param=path)


def json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def expect_object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(path, f"must be an object, not {json_kind(value)}")
    return value


def array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        fail(path, f"must be an array, not {json_kind(value)}")
    return value


def unicode_text(value: str, path: str) -> str:
    """`value`, refused if it holds a lone UTF-16 surrogate (JSON can escape one, `\\ud800`; UTF-8 cannot carry it,
    so no upstream could be sent the text). O(1) for ASCII text."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            fail(path, "holds a lone UTF-16 surrogate (an unpaired `\\ud800`-`\\udfff` escape), which is not text")
    return value


def string(value: object, path: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        fail(path, f"must be a string, not {json_kind(value)}")
    if non_empty and not value:
        fail(path, "must not be empty")
    return unicode_text(value, path)


def optional_string(value: object, path: str) -> str | None:
    return None if value is None else string(value, path)


def optional_bool(value: object, path: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        fail(path, f"must be a boolean, not {json_kind(value)}")
    return value


def brief(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters for an error message (a client's 1 MB "role" need not come back whole)."""
    return text if len(text) <= limit else text[:limit] + "…"


def shown(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:24] + "…"


def integer(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"must be an integer, not {json_kind(value)}")
    if not low <= value <= high:
        fail(path, f"must be between {low} and {high}, got {shown(value)}")
    return value


def number(value: object, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(path, f"must be a number, not {json_kind(value)}")
    if not low <= value <= high:  # also refuses NaN and infinities
        fail(path, f"must be between {low:g} and {high:g}, got {shown(value)}")
    return float(value)


def json_object(value: object, path: str) -> dict[str, Any]:
    """A free-form JSON object (tool schema, tool input): nesting bounded, every key and string real text."""
    obj = expect_object(value, path)
    level: list[Any] = [obj]
    for _ in range(MAX_JSON_DEPTH):
        children: list[Any] = []
        for node in level:
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str):
                    unicode_text(key, path)
                if isinstance(child, str):
                    unicode_text(child, path)
                elif isinstance(child, dict | list):
                    children.append(child)
        if not children:
            return obj
        level = children
    fail(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
