"""Validate config data against `schemas/config.schema.json`, turning jsonschema's errors into plain messages.

Messages name what is wrong in the user's terms (`unknown key `provders`; did you mean `providers`?`,
`expected a duration like `500ms`, `5s`, `2m`, `1h``), point at the key or value's line, and never echo the value
of a secret field.

Stricter than plain JSON Schema in one way: a whole number must be written as one (`port: 80.0` is refused, as
`80.0` would reach code that needs an integer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from proxy.config.suggest import did_you_mean, format_path, quote_list
from proxy.config.yaml_source import MAX_INT, Path
from proxy.json_kinds import expected_kinds, json_kind
from proxy.resources import config_schema

SECRET_KEYS = frozenset({"api_key", "bearer_tokens", "headers", "url"})
_YAML_BOOLEAN_WORDS = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false"})


def _is_whole_number(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_whole_number),
)


@functools.cache
def validator() -> Draft202012Validator:
    schema = config_schema()
    Draft202012Validator.check_schema(schema)
    return _StrictValidator(schema)


def _is_secret(path: Path) -> bool:
    return any(isinstance(part, str) and part in SECRET_KEYS for part in path)


def _show(value: Any, path: Path) -> str:
    if _is_secret(path):
        return "(value hidden)"
    text = repr(value) if not isinstance(value, str) else f"`{value}`"
    return text if len(text) <= 60 else text[:57] + "..."


class Issue:
    """One schema problem before positions are attached: a path, whether it points at a key, and a message."""

    __slots__ = ("at_key", "message", "path")

    def __init__(self, path: Path, message: str, *, at_key: bool = False) -> None:
        self.path = path
        self.message = message
        self.at_key = at_key


def _describe(error: ValidationError, plain_scalars: dict[Path, str]) -> Iterator[Issue]:
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "propertyNames" in error.schema_path and isinstance(value, str):
        yield Issue(
            (*path, value),
            f"invalid name `{value}`: use letters, digits, `_`, `-` and `.`, starting with "
            "a letter or digit (at most 64 characters)",
            at_key=True,
        )
        return
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        for key in value:
            if key not in known:
                yield Issue((*path, key), f"unknown key `{key}`{did_you_mean(key, known)}", at_key=True)
        return
    if kind == "required":
        missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
        for key in missing:
            yield Issue(path, f"missing required key `{key}`", at_key=True)
        return
    if kind == "type":
        expected = error.validator_value
        message = f"expected {expected_kinds(expected)}, got {json_kind(value)}"
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            message += f" {_show(value, path)}"
        elif value == "":
            message = f"expected {expected_kinds(expected)}, got an empty string"
        raw = plain_scalars.get(path, "")
        wants_text = "string" in str(expected)
        if isinstance(value, bool) and raw.lower() in _YAML_BOOLEAN_WORDS and wants_text:
            message += f" (YAML reads a bare `{raw}` as {str(value).lower()}; put it in quotes)"
        elif value is None and expected in ("object", "array"):
            message += " (nothing follows the key; indent its contents under it)"
        elif value is None and not raw:
            message += " (an empty value)"
        elif raw and wants_text and not _is_secret(path):
            message += f' (put it in quotes to make it a string: `"{raw}"`)'
        elif raw and wants_text:
            message += " (put it in quotes to make it a string)"
        elif isinstance(value, float) and value.is_integer() and expected == "integer":
            message += f" (write `{int(value)}`)"
        yield Issue(path, message)
        return
    if kind == "enum":
        options = [str(o) for o in error.validator_value]
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        yield Issue(path, f"{_show(value, path)} is not one of {quote_list(options)}{hint}")
        return
    if kind == "const":
        yield Issue(path, f"must be {error.validator_value!r}, got {_show(value, path)}")
        return
    if kind == "oneOf" and schema.get("description", "").startswith("A duration"):
        yield Issue(
            path,
            f"{_show(value, path)} is not a duration; write a number with a unit (`500ms`, `5s`, "
            "`2m`, `1h`) or a number of seconds",
        )
        return
    bounds = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
    }
    if kind in bounds:
        yield Issue(path, f"must be {bounds[kind]} {error.validator_value}, got {_show(value, path)}")
        return
    if kind == "minLength":
        yield Issue(
            path,
            "must not be empty"
            if error.validator_value == 1
            else f"must be at least {error.validator_value} characters long",
        )
        return
    if kind in ("minItems", "minProperties"):
        what = "item" if kind == "minItems" else "entry"
        yield Issue(path, f"needs at least {error.validator_value} {what}{'s' if error.validator_value != 1 else ''}")
        return
    if kind == "pattern":
        about = schema.get("description", "")
        yield Issue(path, f"{_show(value, path)} is not valid here" + (f": {about}" if about else ""))
        return
    yield Issue(path, error.message if not _is_secret(path) else f"invalid value ({kind})")


def _get(data: Any, path: Path) -> Any:
    node = data
    for part in path:
        node = node[part]
    return node


def _set(data: Any, path: Path, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def schema_issues(
    data: Any,
    *,
    plain_scalars: dict[Path, str],
    whole_references: set[Path],
    coerce: Callable[[str], Any],
    numeric_text: AbstractSet[Path] = frozenset(),
) -> list[Issue]:
    """Every schema problem in `data`. Converts whole `${VAR}` references to numbers/booleans, and unquoted
    `numeric_text` (`1e6`) to numbers, where the schema wants those (mutating `data` in place), then reports what
    is still wrong."""
    check = validator()
    errors = list(check.iter_errors(data))
    convertible = whole_references | numeric_text
    converted_paths: list[Path] = []
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator in ("type", "oneOf") and path in convertible and isinstance(error.instance, str):
            converted = coerce(error.instance)
            if converted is not error.instance and not isinstance(converted, str):
                _set(data, path, converted)
                converted_paths.append(path)
    if converted_paths:
        errors = list(check.iter_errors(data))
    issues: dict[tuple[Path, str], Issue] = {}
    for path in converted_paths:
        value = _get(data, path)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            shown = "(value hidden)" if _is_secret(path) else f"`{str(value)[:37]}...`"
            too_large = Issue(path, f"{shown} is too large a number (at most {MAX_INT})")
            issues[(path, too_large.message)] = too_large
            errors = [e for e in errors if tuple(e.absolute_path) != path]
    for error in errors:
        for issue in _describe(error, plain_scalars):
            issues.setdefault((issue.path, issue.message), issue)  # `required` reports every missing key each time
    return list(issues.values())


def format_issue_path(path: Path) -> str:
    return format_path(path)
