"""Layer 2: `${VAR}` interpolation, and providers disabled by unset keys."""

from __future__ import annotations

from tests.config.helpers import MINIMAL, config_of, issues_of, only

OPENAI = (
    MINIMAL
    + """\
  gpt:
    targets: [{provider: openai, model: gpt-4o-mini}]
"""
)
OPENAI = OPENAI.replace("providers:\n", "providers:\n  openai:\n    type: openai\n    api_key: ${OPENAI_API_KEY}\n")


def test_value_and_default():
    config = config_of(MINIMAL + "server: {http: {host: '${HOST:-0.0.0.0}', port: '${PORT}'}}\n", env={"PORT": "9000"})
    assert config.server.http.host == "0.0.0.0"
    assert config.server.http.port == 9000  # a whole reference becomes a number where the schema wants one


def test_empty_variable_uses_the_default():
    config = config_of(MINIMAL + "server: {http: {host: '${HOST:-h}'}}\n", env={"HOST": ""})
    assert config.server.http.host == "h"


def test_all_digit_api_key_stays_text():
    config = config_of(OPENAI, env={"OPENAI_API_KEY": "123456"})
    assert config.providers["openai"].api_key.reveal() == "123456"


def test_unset_key_disables_the_provider_with_the_reason():
    config = config_of(OPENAI, env={})
    provider = config.providers["openai"]
    assert not provider.enabled
    assert provider.disabled_reason == "environment variable `OPENAI_API_KEY` is not set"
    assert config.providers["mock1"].enabled


def test_set_key_enables_the_provider():
    config = config_of(OPENAI, env={"OPENAI_API_KEY": "sk-test"})
    assert config.providers["openai"].enabled
    assert "sk-test" not in repr(config)


def test_unset_variable_outside_providers_is_an_error():
    issue = only(issues_of(MINIMAL + "server: {auth: {bearer_tokens: ['${PROXY_TOKEN}']}}\n"))
    assert issue.layer == "env" and "`PROXY_TOKEN` is not set" in issue.message
    assert issue.path == "server.auth.bearer_tokens[0]" and issue.line == 9


def test_malformed_reference():
    issue = only(issues_of(MINIMAL + "server: {http: {host: '${not a name}'}}\n"))
    assert "not a variable reference" in issue.message


def test_unclosed_reference():
    issue = only(issues_of(MINIMAL + "server: {http: {host: 'x${HOST'}}\n"))
    assert "never closed" in issue.message


def test_escaped_dollar():
    config = config_of(MINIMAL.replace("type: mock", "type: mock\n    description: 'costs $${HOME}'"))
    assert config.providers["mock1"].description == "costs ${HOME}"
