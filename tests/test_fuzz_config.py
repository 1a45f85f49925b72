"""Adversarial config files: each input that once crashed the loader, slipped through to fail later (at runtime
build or on every request), or gave a misleading message, now gives one clear issue with its position and key path.

Every case loads through `check_config_text` (what `validate`, startup and reload run); the ones that pass are
built into a `Runtime` too, so "valid" means "serves".
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config.load import check_config_file, check_config_text
from proxy.errors import ConfigIssue
from proxy.runtime import Runtime
from tests.config.helpers import MINIMAL

PROVIDER_LINE = "    type: mock\n"
WHOLE = "expected an integer, got"


def provider(extra: str, kind: str = "mock") -> str:
    """MINIMAL with `extra` (one YAML line) added to provider `mock1`."""
    return MINIMAL.replace(PROVIDER_LINE, f"    type: {kind}\n    {extra}\n")


def target(extra: str) -> str:
    return MINIMAL.replace("model: m}", f"model: m, {extra}}}")


def short(value: object) -> str | None:
    """Test ids: long inputs clipped (the default id would be the whole 5,000-character input)."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-12:]}"


def issues(text: str, *, env: dict[str, str] | None = None, base_dir: Path | None = None) -> list[ConfigIssue]:
    result = check_config_text(text, file="fuzz.yaml", base_dir=base_dir, env=env or {})
    if result.config is not None:
        Runtime.build(result.config)  # a valid config must also build (nothing left to fail later)
    return list(result.issues)


def one(text: str, **kwargs) -> ConfigIssue:
    found = issues(text, **kwargs)
    assert len(found) == 1, [i.format() for i in found]
    return found[0]


# --- YAML: numbers that are not what they look like, tags, merge keys ------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "column", "words"),
    [
        # whole numbers too long for Python to read (4,300 digits) or beyond 64 bits
        (MINIMAL.replace("version: 1", "version: " + "9" * 5000), "version", 10, ["too large a number"]),
        (provider("max_connections: " + "1" * 30), "providers.mock1.max_connections", 22, ["too large", "at most"]),
        (provider("timeout: {connect: 1%s}" % ("0" * 400)), "providers.mock1.timeout.connect", 24, ["too large"]),
        # explicit tags that do not fit their text
        (MINIMAL.replace("version: 1", "version: !!int abc"), "version", 10, ["`abc` cannot be read as `!!int`"]),
        (MINIMAL.replace("version: 1", "version: !!float x"), "version", 10, ["cannot be read as `!!float`"]),
        (MINIMAL.replace("version: 1", "version: !!bool maybe"), "version", 10, ["cannot be read as `!!bool`"]),
        # YAML 1.1 octal, hexadecimal and base 60
        (MINIMAL + "server: {http: {port: 0100}}\n", "server.http.port", 23, ["octal number 64", "leading zero"]),
        (target("context_window: 0x10"), "models.default.targets[0].context_window", 53, ["hexadecimal number 16"]),
        (MINIMAL + "cache: {ttl: 1:30}\n", "cache.ttl", 14, ["base-60 number 90", "`1m30s`"]),
        (target("model: 0123").replace("model: m, ", ""), "models.default.targets[0].model", 34, ["octal", "quotes"]),
    ],
    ids=short,
)
def test_numbers_yaml_reads_differently_or_cannot_read_are_explained(text, path, column, words):
    issue = one(text)
    assert (issue.path, issue.column, issue.layer) == (path, column, "yaml"), issue.format()
    for word in words:
        assert word in issue.message, issue.message


def test_decimal_spellings_stay_numbers():
    config = check_config_text(
        provider("limits: {tokens_per_minute: 1_000_000, requests_per_minute: 1e3}")
        + "defaults: {max_tokens: 0000}\n".replace("0000", "10"),
        env={},
    ).config
    assert config is not None
    limits = config.providers["mock1"].limits
    assert (limits.tokens_per_minute, limits.requests_per_minute) == (1_000_000, 1000.0)


@pytest.mark.parametrize("spelling", ["1e6", "1E6", "1.5e6", "15e5", "1.0e+6"])
def test_exponent_numbers_are_numbers_where_a_number_belongs(spelling):
    # YAML 1.1 reads `1e6` as text; unquoted, it is the number it looks like. Quoted, it stays text.
    config = check_config_text(provider(f"limits: {{tokens_per_minute: {spelling}}}"), env={}).config
    assert config is not None and config.providers["mock1"].limits.tokens_per_minute == float(spelling)
    issue = one(provider(f"limits: {{tokens_per_minute: '{spelling}'}}"))
    assert issue.message == f"expected a number, got a string `{spelling}`"


def test_a_bad_merge_key_keeps_the_rest_of_the_mapping():
    text = MINIMAL.replace("  mock1:\n", "  mock1:\n    <<: 5\n")
    issue = one(text)  # not also "missing required key `type`": the mapping's own keys are kept
    assert (issue.line, issue.column, issue.path) == (4, 9, "providers.mock1")
    assert "invalid merge key `<<`" in issue.message and "`<<: *name`" in issue.message


def test_a_value_the_yaml_layer_explained_is_not_reported_again():
    issue = one(target("weight: .inf"))
    assert issue.message == "`.inf` is not a finite number"


# --- schema: whole numbers, messages that show the value ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (MINIMAL + "server: {http: {port: 80.0}}\n", "server.http.port", f"{WHOLE} a number 80.0 (write `80`)"),
        (MINIMAL + "defaults: {max_tokens: 5.0}\n", "defaults.max_tokens", f"{WHOLE} a number 5.0 (write `5`)"),
        (MINIMAL + "retry: {max_attempts: 2.0}\n", "retry.max_attempts", f"{WHOLE} a number 2.0 (write `2`)"),
        (
            target("model: 4").replace("model: m, ", ""),
            "models.default.targets[0].model",
            'expected a string, got an integer 4 (put it in quotes to make it a string: `"4"`)',
        ),
        (MINIMAL + "server: {http: {port: '8080'}}\n", "server.http.port", f"{WHOLE} a string `8080`"),
    ],
    ids=short,
)
def test_type_errors_show_the_value_and_the_fix(text, path, message):
    issue = one(text)
    assert (issue.path, issue.message) == (path, message)


def test_a_secret_of_the_wrong_type_is_not_shown():
    issue = one(provider("headers: {X-Token: 123456789}", kind="openai"))
    assert issue.path == "providers.mock1.headers.X-Token" and "123456789" not in issue.format()


# --- environment variables --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "expected an integer, got a string `" + "9" * 56 + "..."),
        ("9" * 300, "too large a number"),
        ("9000.0", "expected an integer, got a number 9000.0 (write `9000`)"),
        ("", "expected an integer, got an empty string"),
        ("1e400", "expected an integer, got a string `1e400`"),
    ],
    ids=short,
)
def test_numbers_from_the_environment(value, message):
    issue = one(MINIMAL + "server: {http: {port: '${PORT}'}}\n", env={"PORT": value})
    assert issue.path == "server.http.port" and (issue.line, issue.column) == (9, 23)
    assert message in issue.message


def test_an_exponent_number_from_the_environment_is_a_number():
    config = check_config_text(provider("limits: {tokens_per_minute: '${TPM}'}"), env={"TPM": "2e6"}).config
    assert config is not None and config.providers["mock1"].limits.tokens_per_minute == 2_000_000


def test_a_nested_default_is_reported_not_half_expanded():
    issue = one(MINIMAL + "defaults: {model: '${M:-${N:-default}}'}\n")
    assert issue.path == "defaults.model" and issue.layer == "env"
    assert "contains another `${...}` reference" in issue.message


def test_an_unset_variable_is_reported_once():
    issue = one(MINIMAL + "defaults: {model: '${NOPE}'}\n")  # not also "the default model `` is not declared"
    assert issue.message.startswith("environment variable `NOPE` is not set")


def test_an_unset_base_url_disables_the_provider_without_a_url_error():
    result = check_config_text(provider("base_url: ${OLLAMA_URL}", kind="openai_compatible"), env={})
    assert result.config is not None
    assert result.config.providers["mock1"].disabled_reason == "environment variable `OLLAMA_URL` is not set"


def test_huge_values_are_clipped_in_messages():
    issue = one(MINIMAL + "defaults: {model: '${M}'}\n", env={"M": "x" * 1_000_000})
    assert len(issue.format()) < 400 and "xxx..." in issue.message


# --- values that go on the wire -----------------------------------------------------------------------------------

KEYED = provider("api_key: ${KEY}", "openai")


@pytest.mark.parametrize(
    ("text", "env", "path", "words"),
    [
        (KEYED, {"KEY": "sk-abc\n"}, "providers.mock1.api_key", ["ends with a line break", "trailing newline"]),
        (KEYED, {"KEY": "sk\r\nX-Evil: 1"}, "providers.mock1.api_key", ["contains a line break"]),
        (provider('headers: {X-A: "a\\nb"}'), {}, "providers.mock1.headers.X-A", ["line break"]),
        (provider("headers: {'bad header': v}"), {}, "providers.mock1.headers['bad header']", ["not a valid HTTP"]),
        (provider("headers: {'X:A': v}"), {}, "providers.mock1.headers['X:A']", ["not a valid HTTP header name"]),
        (provider("base_url: 'http://'", "openai"), {}, "providers.mock1.base_url", ["no host name"]),
        (provider("base_url: 'http://h:99999/v1'", "openai"), {}, "providers.mock1.base_url", ["port"]),
        (provider("base_url: 'http://a b/v1'", "openai"), {}, "providers.mock1.base_url", ["space"]),
        (MINIMAL + "state: {backend: redis, url: 'redis://:::'}\n", {}, "state.url", ["port"]),
        (MINIMAL + "state: {backend: redis, url: '${R}'}\n", {"R": "redis://h:99999/0"}, "state.url", ["port"]),
        (MINIMAL + "telemetry: {traces: {endpoint: 'http://:4318'}}\n", {}, "telemetry.traces.endpoint", ["no host"]),
    ],
    ids=short,
)
def test_values_sent_over_http_are_checked_when_the_config_loads(text, env, path, words):
    issue = one(text, env=env)
    assert (issue.path, issue.layer) == (path, "semantic"), issue.format()
    for word in words:
        assert word in issue.message
    for secret in ("sk-abc", "X-Evil", "99999"):
        assert secret not in issue.message


@pytest.mark.parametrize("section", ["state", "cache"])
def test_redis_without_a_url_points_at_the_backend(section):
    issue = one(MINIMAL + f"{section}: {{backend: redis}}\n")
    assert (issue.path, issue.line) == (f"{section}.backend", 9)


# --- templates ----------------------------------------------------------------------------------------------------


TEXT = "templates.t.text"


def template(spec: str) -> str:
    return MINIMAL + "templates:\n  t:\n" + textwrap.indent(textwrap.dedent(spec).strip() + "\n", "    ")


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ("text: '{{ a | uper }}'\narguments: {a: {}}", TEXT, ["unknown filter `uper` at line 1", "mean `upper`?"]),
        ("text: '{% if a is nmber %}x{% endif %}'\narguments: {a: {}}", TEXT, ["unknown test `nmber`", "`number`"]),
        ("text: '{% filter uper %}x{% endfilter %}'", TEXT, ["unknown filter `uper`"]),
        ("text: '" + "{% if 1 %}" * 120 + "x" + "{% endif %}" * 120 + "'", TEXT, ["nested too deeply"]),
        ("text: '" + "{% for i in [1] %}" * 25 + "x" + "{% endfor %}" * 25 + "'", TEXT, ["nested too deeply"]),
        ("text: '{{ " + "(" * 600 + "1" + ")" * 600 + " }}'", TEXT, ["nested too deeply"]),
        ("text: '{{ " + "1+" * 5000 + "1 }}'", TEXT, ["nested too deeply"]),
        ("text: '  '", "templates.t.text", ["is empty"]),
        ("file: " + "a" * 5000, "templates.t.file", ["cannot be", "...aaaa"]),
        ('file: "t\\0.j2"', "templates.t.file", ["NUL character"]),
        ("file: sub", "templates.t.file", ["is a directory"]),
    ],
    ids=short,
)
def test_templates_that_cannot_be_built_are_reported_at_load(tmp_path, spec, path, words):
    (tmp_path / "templates" / "sub").mkdir(parents=True)
    issue = one(template(spec), base_dir=tmp_path)
    assert (issue.path, issue.layer) == (path, "semantic"), issue.format()
    assert len(issue.message) < 400
    for word in words:
        assert word in issue.message, issue.message


@pytest.mark.parametrize("value", ['"a\\0b"', "5", "[a]"])
def test_a_bad_template_dir_is_one_issue(tmp_path, value):
    issue = one(MINIMAL + f"template_dir: {value}\ntemplates:\n  t: {{file: t.j2}}\n", base_dir=tmp_path)
    assert issue.path == "template_dir"


# --- the file itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbf" + MINIMAL.encode(),  # a byte-order mark
        MINIMAL.replace("\n", "\r\n").encode(),  # Windows line ends
        MINIMAL.encode() + b"...\n",  # an explicit document end
        b"%YAML 1.1\n---\n" + MINIMAL.encode(),
    ],
)
def test_harmless_file_variants_load(tmp_path, content):
    path = tmp_path / "proxy.yaml"
    path.write_bytes(content)
    result = check_config_file(path, env={})
    assert result.config is not None, [i.format() for i in result.issues]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "the file is empty"),
        (b"# only\n# comments\n", "has no content"),
        (b"- a\n- b\n", "not a list"),
        (MINIMAL.encode() + b"---\n" + MINIMAL.encode(), "found another document"),
        (b"version: 1\nx: \xff\n", "not UTF-8"),
        (MINIMAL.encode("utf-16"), "saved as UTF-16"),
        (MINIMAL.replace("type: mock", "type:\tmock").encode(), "tab character is used for indentation or after a `:`"),
        (MINIMAL.encode() + b"x: a\x00b\n", "character YAML does not allow"),
    ],
    ids=short,
)
def test_unusable_files_are_one_clear_issue(tmp_path, content, words):
    path = tmp_path / "proxy.yaml"
    path.write_bytes(content)
    result = check_config_file(path, env={})
    assert result.config is None and len(result.issues) == 1 and words in result.issues[0].message


def test_symbolic_link_loops_are_reported(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.j2").symlink_to("b.j2")
    (templates / "b.j2").symlink_to("a.j2")
    (tmp_path / "loop").symlink_to("loop")
    issue = one(MINIMAL + "templates:\n  t: {file: a.j2}\n", base_dir=tmp_path)
    assert (issue.path, issue.line) == ("templates.t.file", 10) and "form a loop" in issue.message
    issue = one(MINIMAL + "template_dir: loop\ntemplates:\n  t: {file: a.j2}\n", base_dir=tmp_path)
    assert (issue.path, issue.line) == ("template_dir", 9) and "form a loop" in issue.message


def test_thousands_of_problems_are_listed_up_to_a_hundred():
    found = issues(MINIMAL + "".join(f"k{i}: 1\n" for i in range(500)))
    assert len(found) == 101
    assert [i.line for i in found[:100]] == list(range(9, 109))
    assert found[-1].message == "... and 400 more problems not shown (500 in all); fix these first"
