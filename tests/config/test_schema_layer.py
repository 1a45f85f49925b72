"""Layer 3: the JSON Schema, with plain messages, positions and did-you-mean."""

from __future__ import annotations

import pytest

from tests.config.helpers import MINIMAL, issues_of, only


def test_minimal_config_is_valid():
    assert issues_of(MINIMAL) == []


@pytest.mark.parametrize(
    ("extra", "path", "hint"),
    [
        ("provders: {}\n", "provders", "did you mean `providers`?"),
        ("retry: {max_atempts: 2}\n", "retry.max_atempts", "did you mean `max_attempts`?"),
        ("server: {http: {prot: 1}}\n", "server.http.prot", "did you mean `port`?"),
        ("telemetry: {traces: {exporter: otlp, endpont: http://x}}\n", "telemetry.traces.endpont", "`endpoint`"),
    ],
)
def test_unknown_keys_at_every_level_get_did_you_mean(extra, path, hint):
    issue = only(issues_of(MINIMAL + extra))
    assert issue.path == path
    assert "unknown key" in issue.message and hint in issue.message


def test_unknown_key_inside_provider_and_target_points_at_the_key():
    text = MINIMAL.replace("    type: mock\n", "    type: mock\n    api_kye: x\n")
    issue = only(issues_of(text))
    assert (issue.line, issue.column, issue.path) == (5, 5, "providers.mock1.api_kye")
    assert "`api_key`" in issue.message


def test_misspelled_enum_gets_did_you_mean():
    issue = only(issues_of(MINIMAL.replace("type: mock", "type: mokc")))
    assert issue.path == "providers.mock1.type" and "did you mean `mock`?" in issue.message


def test_wrong_types_are_named():
    issue = only(issues_of(MINIMAL + "retry: {max_attempts: three}\n"))
    assert "expected an integer, got a string `three`" in issue.message
    issue = only(issues_of(MINIMAL + "retry: [1, 2]\n"))
    assert "expected an object, got an array" in issue.message


def test_a_list_where_a_map_belongs():
    issue = only(
        issues_of("version: 1\nproviders:\n  - mock1\nmodels: {default: {targets: [{provider: a, model: b}]}}\n")
    )
    assert issue.path == "providers" and "expected an object, got an array" in issue.message


def test_negative_numbers_are_rejected():
    issue = only(issues_of(MINIMAL + "cache: {max_entries: -5}\n"))
    assert issue.path == "cache.max_entries" and "must be >= 1, got -5" in issue.message


def test_bad_duration():
    issue = only(issues_of(MINIMAL + "retry: {deadline: 10 minutes}\n"))
    assert "is not a duration" in issue.message and "`500ms`" in issue.message


def test_durations_accept_units_and_plain_seconds():
    assert issues_of(MINIMAL + "retry: {deadline: 90, initial_backoff: 250ms, max_backoff: 1.5s}\n") == []


def test_missing_required_keys():
    issues = issues_of("version: 1\n")
    messages = {i.message for i in issues}
    assert "missing required key `providers`" in messages and "missing required key `models`" in messages


def test_version_must_be_1():
    issue = only(issues_of(MINIMAL.replace("version: 1", "version: 2")))
    assert issue.path == "version" and "must be 1" in issue.message


def test_yaml_boolean_words_get_a_quoting_hint():
    issue = only(issues_of(MINIMAL.replace("model: m", "model: no")))
    assert issue.message == "expected a string, got a boolean (YAML reads a bare `no` as false; put it in quotes)"


def test_empty_section_value_hint():
    issue = only(issues_of(MINIMAL + "retry:\n"))
    assert issue.message == "expected an object, got null (nothing follows the key; indent its contents under it)"


def test_an_empty_scalar_value_is_named():
    issue = only(issues_of(MINIMAL + "server: {http: {port: }}\n"))
    assert issue.path == "server.http.port"
    assert issue.message == "expected an integer, got null (an empty value)"


@pytest.mark.parametrize("word", ["null", "~", "NULL"])
def test_a_yaml_null_word_where_text_belongs_gets_a_quoting_hint(word):
    issue = only(issues_of(MINIMAL.replace("model: m", f"model: {word}")))
    assert issue.message == f'expected a string, got null (put it in quotes to make it a string: `"{word}"`)'


def test_invalid_names():
    text = MINIMAL.replace("  mock1:\n    type: mock", "  'bad name':\n    type: mock")
    assert any("invalid name `bad name`" in i.message for i in issues_of(text))


def test_secret_values_are_never_echoed():
    text = MINIMAL.replace(
        "    type: mock\n", "    type: openai\n    api_key: sk-secret-value-123\n    base_url: sk-secret-url\n"
    )
    issues = issues_of(text)
    assert issues  # base_url has the wrong format
    assert all("sk-secret-value-123" not in i.format() for i in issues)


def test_five_mistakes_five_lines_with_positions():
    text = """\
version: 1
provders: {}
providers:
  openai:
    type: opneai
    timeout: {connect: 5 sec}
models:
  default:
    targets:
      - {provider: openai, model: gpt-4o-mini, weight: 0}
retry: {max_attempts: -1}
"""
    issues = issues_of(text)
    got = [(i.line, i.column, i.path) for i in issues]
    assert got == [
        (2, 1, "provders"),
        (5, 11, "providers.openai.type"),
        (6, 24, "providers.openai.timeout.connect"),
        (10, 56, "models.default.targets[0].weight"),
        (11, 23, "retry.max_attempts"),
    ]
