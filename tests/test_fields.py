"""proxy.fronts.fields: one set of readers, each front's error and wording (the fronts' own tests pin the rest)."""

from __future__ import annotations

import pytest

from proxy.errors import RequestError
from proxy.fronts.anthropic_inbound import FIELDS as ANTHROPIC
from proxy.fronts.fields import Fields
from proxy.fronts.http_common import BodyError
from proxy.fronts.openai_inbound import FIELDS as OPENAI


def test_each_front_raises_its_own_error_naming_the_path():
    with pytest.raises(BodyError) as openai:
        OPENAI.string(3, "messages[0].content")
    assert (openai.value.status, openai.value.param) == (400, "messages[0].content")
    assert openai.value.message == "`messages[0].content`: must be a string, not an integer"
    with pytest.raises(RequestError) as anthropic:
        ANTHROPIC.string(3, "messages[0].content")
    assert anthropic.value.param == "messages[0].content"
    assert str(anthropic.value) == "messages[0].content: must be a string, not an integer"


@pytest.mark.parametrize("fields", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize(
    ("read", "value", "words"),
    [
        ("number", True, "must be a number, not a boolean"),
        ("string", ["x"], "must be a string, not an array"),
        ("object", None, "must be an object, not null"),
        ("array", {"a": 1}, "must be an array, not an object"),
        ("boolean", "true", "must be a boolean, not a string"),
    ],
)
def test_both_fronts_name_a_wrong_kind_alike(fields: Fields, read: str, value: object, words: str):
    with pytest.raises((BodyError, RequestError), match=words + "$"):
        getattr(fields, read)(value, "field")


def test_integral_floats_are_integers_only_where_asked():
    assert OPENAI.integer(2.0, "n") == 2
    with pytest.raises(BodyError, match="must be an integer, not a number"):
        OPENAI.integer(2.5, "n")
    with pytest.raises(RequestError, match="must be an integer, not a number"):
        ANTHROPIC.integer(2.0, "max_tokens", 1, 10)


@pytest.mark.parametrize("fields", [OPENAI, ANTHROPIC])
def test_a_huge_integer_is_out_of_range_not_a_crash(fields: Fields):
    with pytest.raises((BodyError, RequestError)) as caught:
        fields.number(10**400, "temperature", 0, 2)
    assert "temperature" in str(caught.value)
    with pytest.raises((BodyError, RequestError)):
        fields.number(float("nan"), "temperature", 0, 2)


def test_lone_surrogates_are_found_anywhere_with_their_path():
    with pytest.raises(BodyError) as caught:
        OPENAI.check_unicode({"messages": [{"content": "ok"}, {"content": "bad \ud800"}]})
    assert caught.value.param == "messages[1].content"
    with pytest.raises(BodyError) as key:
        OPENAI.check_unicode({"metadata": {"\udc00": 1}})
    assert key.value.message == "`metadata`: a key holds a lone UTF-16 surrogate escape"
    with pytest.raises(RequestError, match=r"^tools\[0\]\.input_schema: holds a lone UTF-16 surrogate"):
        ANTHROPIC.json_object({"a": ["\ud800"]}, "tools[0].input_schema")


def _nested(depth: int) -> dict:
    value: dict = {"type": "string"}
    for _ in range(depth - 1):
        value = {"items": value}
    return value


@pytest.mark.parametrize("fields", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"properties": {"a": {"enum": ["ok", "bad \ud800"]}}}, "lone UTF-16 surrogate"),
        ({"properties": {"\udc00": {}}}, "lone UTF-16 surrogate"),
        ({"a": [[{"minimum": float("nan")}]]}, "NaN or infinite"),
        ({"a": [1, -float("inf")]}, "NaN or infinite"),
        (_nested(65), "deeper than 64 levels"),
    ],
)
def test_json_object_refuses_bad_values_at_any_depth(fields: Fields, value: dict, words: str):
    # One pass without paths for speed (tool schemas come with every request); each kind of value is still found.
    with pytest.raises((BodyError, RequestError), match=words) as caught:
        fields.json_object(value, "tools[0].parameters")
    assert "tools[0].parameters" in str(caught.value)


def test_json_object_of_a_checked_body_bounds_only_the_nesting():
    # The OpenAI front runs `check_values` over the whole body first; its tool schemas then need only the depth bound.
    assert OPENAI.json_object({"a": ["\ud800", float("nan")]}, "x", values_checked=True)
    with pytest.raises(BodyError, match="deeper than 64 levels"):
        OPENAI.json_object(_nested(65), "tools[0].function.parameters", values_checked=True)
    assert OPENAI.json_object(_nested(63), "x", values_checked=True)


@pytest.mark.parametrize("fields", [OPENAI, ANTHROPIC])
def test_json_object_takes_any_real_json(fields: Fields):
    value = {
        "type": "object",
        "properties": {"é": {"enum": ["ünïcode 😀", 1, 2.5, -0.0, True, None, 10**400]}, "n": _nested(62)},
        "required": [],
    }
    assert fields.json_object(value, "x") is value
