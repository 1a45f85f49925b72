"""How error messages name the kind of a JSON value: one wording for the HTTP fronts, the MCP front and the config
checks, so that each reads "must be a string, not an array" or "expected an object, got null".

The names are JSON Schema's type names with their article (`a string`, `an integer`, `an object`; null has none),
which are also what editors validating a YAML config against the published schema say. A bool is `a boolean`,
never a number; an int is `an integer` and a float `a number`, even `2.0`, so "must be an integer, not a number"
says what the value was. Anything JSON or YAML cannot hold as plain data (`!!binary` bytes, a set) is named by its
Python type. Only error paths call these: nothing here is on a request's way.
"""

from __future__ import annotations

KINDS = {
    "null": "null",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
}  # JSON Schema's type names -> as messages say them


def json_kind(value: object) -> str:
    """`value`'s kind as messages name it: `null`, `a boolean`, `an integer`, `a number`, `a string`, `an array`,
    `an object`; anything else by its Python type (a value of Python type `bytes`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a value of Python type `{type(value).__name__}`"


def expected_kinds(names: str | list[str]) -> str:
    """JSON Schema's `type` (a name or a list of them) as messages say it: `a string or null`."""
    listed = names if isinstance(names, list) else [names]
    return " or ".join(KINDS.get(name, name) for name in listed)
