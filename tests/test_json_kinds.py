"""proxy.json_kinds: the one way error messages name a JSON value's kind."""

from __future__ import annotations

import pytest

from proxy.json_kinds import KINDS, expected_kinds, json_kind


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "a boolean"),  # a bool is an int to Python, never a number here
        (False, "a boolean"),
        (0, "an integer"),
        (10**400, "an integer"),
        (2.0, "a number"),  # integral, still written as a float
        (float("nan"), "a number"),
        (float("inf"), "a number"),
        ("", "a string"),
        ("42", "a string"),
        ([], "an array"),
        ([[{"a": [1]}]], "an array"),  # named by the outer container only
        ({}, "an object"),
        ({"a": {"b": [None]}}, "an object"),
    ],
    ids=repr,
)
def test_every_json_value_is_named_with_its_article(value: object, kind: str) -> None:
    assert json_kind(value) == kind


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"\x00", "a value of Python type `bytes`"),  # YAML `!!binary`
        ({1, 2}, "a value of Python type `set`"),  # YAML `!!set`
        ((1, 2), "a value of Python type `tuple`"),
    ],
    ids=repr,
)
def test_a_value_json_cannot_hold_is_named_by_its_python_type(value: object, kind: str) -> None:
    assert json_kind(value) == kind


def test_a_kind_reads_the_same_expected_or_found() -> None:
    # the words for a schema's `type` are those for a value of that type
    samples = {"null": None, "boolean": True, "integer": 1, "number": 1.5, "string": "", "array": [], "object": {}}
    assert {name: json_kind(value) for name, value in samples.items()} == KINDS
    assert expected_kinds("object") == "an object"
    assert expected_kinds(["string", "null"]) == "a string or null"
