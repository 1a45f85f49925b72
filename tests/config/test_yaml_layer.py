"""Layer 1: YAML syntax, positions, duplicate keys, tabs, bombs, garbage."""

from __future__ import annotations

import time

from proxy.config.yaml_source import MAX_NODES, parse_yaml
from tests.config.helpers import MINIMAL, issues_of, only


def test_positions_of_keys_and_values_are_one_based():
    doc, issues = parse_yaml("a: 1\nb:\n  c: [x, y]\n", "f.yaml")
    assert not issues
    assert doc.positions[("b", "c", 1)] == (3, 10)
    assert doc.key_positions[("b", "c")] == (3, 3)


def test_duplicate_keys_are_rejected_naming_both_lines():
    issues = issues_of(MINIMAL + "providers:\n  other: {type: mock}\n")
    issue = next(i for i in issues if i.layer == "yaml")
    assert issue.line == 9 and issue.column == 1
    assert "duplicate key `providers`" in issue.message and "line 2" in issue.message
    assert issue.layer == "yaml"


def test_nested_duplicate_keys_are_rejected():
    text = MINIMAL.replace("    type: mock\n", "    type: mock\n    type: openai\n")
    issue = only(issues_of(text))
    assert (issue.line, issue.path) == (5, "providers.mock1.type")
    assert "line 4" in issue.message


def test_merge_keys_work_and_local_keys_win():
    doc, issues = parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "m.yaml")
    assert not issues
    assert doc.data["d"] == {"x": 1, "y": 3}


def test_tabs_are_explained():
    issue = only(issues_of("version: 1\nproviders:\n\tmock1: {type: mock}\n"))
    assert issue.line == 3 and "tab character" in issue.message


def test_truncated_yaml_names_the_line():
    issue = only(issues_of("version: 1\nproviders: {mock1: {type: mock}\n"))
    assert issue.line == 3 and "YAML syntax error" in issue.message


def test_unterminated_quote_points_to_where_it_starts():
    issue = only(issues_of("version: 1\nname: 'oops\nother: 1\n"))
    assert "starts at line 2" in issue.message


def test_empty_file():
    issue = only(issues_of(""))
    assert "empty" in issue.message
    issue = only(issues_of("# only a comment\n"))
    assert "empty" in issue.message or "no content" in issue.message


def test_top_level_list_is_rejected():
    issue = only(issues_of("- a\n- b\n"))
    assert "top level must be a mapping" in issue.message and "a list" in issue.message


def test_yaml_bomb_is_rejected_fast_and_bounded():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 10**10 nodes if expanded
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    started = time.perf_counter()
    issue = only(issues_of("\n".join(lines) + "\n"))
    assert f"{MAX_NODES:,} nodes" in issue.message
    assert time.perf_counter() - started < 5  # generous: it stops after MAX_NODES nodes, not 10**10


def test_recursive_alias_is_rejected():
    issue = only(issues_of("a: &a [*a]\n"))
    assert "nested" in issue.message


def test_very_deep_nesting_is_rejected_without_crashing():
    issue = only(issues_of("a: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert "nested" in issue.message


def test_binary_garbage():
    issue = only(issues_of("\x00\x01\x02garbage\x7f"))
    assert "character" in issue.message


def test_python_tags_are_refused():
    issues = issues_of(MINIMAL + "x: !!python/object/apply:os.system [echo hi]\n")
    assert any("not allowed" in i.message for i in issues)
    issues = issues_of(MINIMAL + "x: !!python/name:os.system\n")
    assert any("cannot read this value" in i.message for i in issues)


def test_nan_is_rejected():
    issues = issues_of(MINIMAL + "retry: {max_attempts: .nan}\n")
    assert any("not a finite number" in i.message for i in issues)


def test_non_scalar_key_is_rejected():
    issues = issues_of(MINIMAL + "? [a, b]\n: 1\n")
    assert any("plain name" in i.message for i in issues)
