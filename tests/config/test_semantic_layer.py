"""Layer 4: references, cycles, per-type settings, templates."""

from __future__ import annotations

from pathlib import Path

from tests.config.helpers import MINIMAL, config_of, issues_of, only


def test_target_naming_a_missing_provider():
    issue = only(issues_of(MINIMAL.replace("provider: mock1", "provider: mokc1")))
    assert issue.path == "models.default.targets[0].provider" and issue.layer == "semantic"
    assert "did you mean `mock1`?" in issue.message
    assert (issue.line, issue.column) == (8, 20)


def test_fallback_to_a_missing_model():
    issue = only(issues_of(MINIMAL + "    fallback: defualt_two\n"))
    assert "unknown model `defualt_two`" in issue.message


def test_fallback_cycle_is_reported_once_with_the_loop():
    text = (
        MINIMAL
        + """\
    fallback: b
  b:
    targets: [{provider: mock1, model: m}]
    fallback: c
  c:
    targets: [{provider: mock1, model: m}]
    fallback: default
"""
    )
    issue = only(issues_of(text))
    assert "loops" in issue.message and "`default` -> `b` -> `c` -> `default`" in issue.message


def test_self_fallback():
    assert "itself" in only(issues_of(MINIMAL + "    fallback: default\n")).message


def test_default_model_must_exist():
    issue = only(issues_of(MINIMAL.replace("  default:\n", "  main:\n")))
    assert "default model `default` is not declared" in issue.message
    config = config_of(MINIMAL.replace("  default:\n", "  main:\n") + "defaults: {model: main}\n")
    assert config.defaults.model == "main"


def test_duplicate_target():
    text = MINIMAL + "      - {provider: mock1, model: m}\n"
    assert "duplicate target" in only(issues_of(text)).message


def test_per_type_fields():
    text = MINIMAL.replace("    type: mock\n", "    type: mock\n    api_version: '2023-06-01'\n")
    issue = only(issues_of(text))
    assert issue.path == "providers.mock1.api_version" and "only applies to type `anthropic`" in issue.message


def test_openai_compatible_needs_base_url_and_python_needs_class():
    text = MINIMAL.replace("providers:\n", "providers:\n  local: {type: openai_compatible}\n  custom: {type: python}\n")
    messages = " | ".join(i.message for i in issues_of(text))
    assert "needs a `base_url`" in messages and "needs a `class`" in messages


def test_redis_needs_a_url():
    assert "`state.url` is not set" in only(issues_of(MINIMAL + "state: {backend: redis}\n")).message


def test_zero_targets():
    issue = only(issues_of(MINIMAL.replace("    targets:\n      - {provider: mock1, model: m}\n", "    targets: []\n")))
    assert "needs at least 1 item" in issue.message


TEMPLATED = (
    MINIMAL
    + """\
templates:
  t:
    file: t.j2
    arguments:
      name: {required: true}
"""
)


def _with_template(tmp_path: Path, body: str, text: str = TEMPLATED):
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "t.j2").write_text(body)
    return issues_of(text, base_dir=tmp_path)


def test_template_file_ok(tmp_path):
    assert _with_template(tmp_path, "Hello {{ name }}") == []
    config = config_of(TEMPLATED, base_dir=tmp_path)
    assert config.templates["t"].file == (tmp_path / "templates" / "t.j2").resolve()


def test_template_file_missing(tmp_path):
    issue = only(issues_of(TEMPLATED, base_dir=tmp_path))
    assert issue.path == "templates.t.file" and "does not exist" in issue.message


def test_template_syntax_error_names_the_template_line(tmp_path):
    issue = only(_with_template(tmp_path, "Hello\n{{ name }\n"))
    assert "Jinja2 syntax error at line 2" in issue.message


def test_template_undeclared_variable_did_you_mean(tmp_path):
    issue = only(_with_template(tmp_path, "Hello {{ nmae }} {{ name }}"))
    assert "uses `nmae`, which is not declared" in issue.message and "did you mean `name`?" in issue.message


def test_required_argument_never_used(tmp_path):
    issue = only(_with_template(tmp_path, "Hello"))
    assert "required argument `name` is never used" in issue.message


def test_template_path_cannot_leave_the_template_dir(tmp_path):
    issue = only(issues_of(TEMPLATED.replace("file: t.j2", "file: ../../etc/passwd"), base_dir=tmp_path))
    assert "outside the template directory" in issue.message


def test_template_needs_exactly_one_of_file_and_text(tmp_path):
    issue = only(issues_of(TEMPLATED.replace("file: t.j2", "text: hi {{ name }}\n    file: t.j2"), base_dir=tmp_path))
    assert "exactly one of `file` and `text`" in issue.message


def test_template_model_must_exist():
    text = MINIMAL + "templates:\n  t: {text: hi, model: nope}\n"
    assert "unknown model `nope`" in only(issues_of(text)).message
