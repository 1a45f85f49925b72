"""Typed readers for the fields of a JSON request body: each returns the value or raises `BodyError(400)` whose
message and `param` name the field path (`messages[2].content[0].type`).

    temperature = as_number(body["temperature"], "temperature", 0, 2)

JSON kinds are named as JSON names them (`object`, `array`, `string`, `number`, `boolean`, `null`); booleans are
never numbers; integers may be written as `2.0`; numbers must be finite (Python's JSON reader accepts `NaN`).
Nothing here is specific to the OpenAI API.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.fronts.http_common import BodyError

_SHOWN_DIGITS = 30  # longer numbers are not echoed (and huge ints cannot even be turned into text)


def fail(path: str, problem: str) -> BodyError:
    """The 400 for a bad field: the message starts with the path, and `param` is the path."""
    return BodyError(400, f"`{path}`: {problem}", param=path)


def kind_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _shown(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 10**_SHOWN_DIGITS:
        return "a number that large"
    return f"{value:g}" if isinstance(value, float) else str(value)


def expect(value: object, kinds: tuple[type, ...], path: str, what: str) -> Any:
    """`value` if it is one of `kinds` (a bool only when `bool` is listed), else the 400 `must be <what>`."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise fail(path, f"must be {what}, not {kind_name(value)}")
    return value


def as_number(value: object, path: str, low: float | None = None, high: float | None = None) -> float:
    number = expect(value, (int, float), path, "a number")
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        bounds = f" between {low:g} and {high:g}" if low is not None and high is not None else ""
        raise fail(path, f"must be a finite number{bounds}, not {_shown(number)}")
    return float(number)


def as_integer(value: object, path: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    number = expect(value, (int,), path, "an integer")
    if (low is not None and number < low) or (high is not None and number > high):
        raise fail(path, f"must be an integer between {low} and {high}, not {_shown(number)}")
    return number


def as_string(value: object, path: str, *, nonempty: bool = False) -> str:
    text = expect(value, (str,), path, "a string")
    if nonempty and not text:
        raise fail(path, "must not be empty")
    return text


def as_bool(value: object, path: str) -> bool:
    return expect(value, (bool,), path, "a boolean")


def as_object(value: object, path: str) -> dict[str, Any]:
    return expect(value, (dict,), path, "an object")


def as_list(value: object, path: str, *, nonempty: bool = False) -> list[Any]:
    items = expect(value, (list,), path, "an array")
    if nonempty and not items:
        raise fail(path, "must not be empty")
    return items


def one_of(value: object, path: str, choices: tuple[str, ...]) -> str:
    text = as_string(value, path)
    if text not in choices:
        listing = ", ".join(f"`{c}`" for c in choices)
        raise fail(path, f"must be one of {listing}, not `{text[:100]}`")
    return text


def field_path(keys: tuple[str | int, ...]) -> str:
    """`("messages", 2, "content")` -> `messages[2].content`."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(body: Any) -> None:
    """Refuse strings (values or keys) holding a lone UTF-16 surrogate: JSON can escape one (`"\\ud800"`), but it is
    not Unicode text, and would fail later when an upstream body or this answer is encoded. Walks iteratively."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                raise fail(field_path(path), "holds a lone UTF-16 surrogate escape, which is not Unicode text")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    where = field_path(path) or "the request body"
                    raise BodyError(400, f"`{where}`: a key holds a lone UTF-16 surrogate escape", param=where)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
