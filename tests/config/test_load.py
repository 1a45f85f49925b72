"""Reading files: unreadable paths, huge and binary files, the typed result, secrets."""

from __future__ import annotations

import dataclasses
import os

import pytest

from proxy.config import load_config
from proxy.config.load import MAX_CONFIG_BYTES, check_config_file
from proxy.errors import ConfigError
from tests.config.helpers import MINIMAL, config_of


def test_missing_file():
    result = check_config_file("/nonexistent/proxy.yaml")
    assert result.config is None and result.issues[0].message == "no such file"


def test_directory(tmp_path):
    assert "directory" in check_config_file(tmp_path).issues[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):  # pragma: no cover - CI runs as root
    path = tmp_path / "x.yaml"
    path.write_text(MINIMAL)
    path.chmod(0)
    assert "permission denied" in check_config_file(path).issues[0].message


def test_ten_megabyte_file_is_refused_without_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: " + b"x" * (10 * 1024 * 1024) + b"\n")
    issue = check_config_file(path).issues[0]
    assert "10.5 MB" in issue.message and f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB" in issue.message


def test_binary_file_names_the_line(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"version: 1\nproviders: \xff\xfe\n")
    issue = check_config_file(path).issues[0]
    assert (issue.line, issue.column) == (2, 12) and "not UTF-8" in issue.message


def test_load_config_raises_with_every_issue(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 2\nextra: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.issues) == 4  # version, extra, providers, models
    assert str(path) in str(caught.value)


def test_typed_config_is_frozen_and_durations_are_seconds():
    config = config_of(MINIMAL + "retry: {initial_backoff: 250ms, deadline: 2m}\n")
    assert config.retry.initial_backoff == 0.25 and config.retry.deadline == 120.0
    assert config.models["default"].targets[0].provider == "mock1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry = None  # type: ignore[misc]


def test_secrets_are_redacted_in_repr():
    text = MINIMAL.replace(
        "providers:\n", "providers:\n  openai: {type: openai, api_key: sk-live-abc, headers: {X-K: hdr-secret}}\n"
    )
    config = config_of(text)
    provider = config.providers["openai"]
    assert provider.api_key.reveal() == "sk-live-abc"
    for text in (repr(config), str(provider), repr(provider.headers)):
        assert "sk-live-abc" not in text and "hdr-secret" not in text


def test_version_hash_changes_with_content():
    a = config_of(MINIMAL)
    b = config_of(MINIMAL + "retry: {max_attempts: 2}\n")
    assert a.version_hash != b.version_hash and len(a.version_hash) == 12


def test_embedded_default_loads_with_no_keys():
    config = load_config(None, env={})
    assert config.providers["demo"].enabled and config.providers["local"].enabled
    assert not config.providers["openai"].enabled
    assert "OPENAI_API_KEY" in config.providers["openai"].disabled_reason
    assert config.templates["summarize"].file.is_file()


def test_mock_settings_are_typed():
    config = load_config("examples/offline.yaml", env={})
    mock = config.providers["primary"].mock
    assert mock.first_token == 0.05 and mock.fault.status == 503 and mock.fault.rate == 0.5
