"""`proxy.config_diff`: semantic changes by config path, traffic shares, hidden secrets, and the risk warnings."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.config import load_config_text
from proxy.config_diff import (
    Snapshot,
    dangling_model_references,
    diff_configs,
    provider_variables,
    traffic_shares,
)

BASE = """
version: 1
providers:
  primary:
    type: mock
    timeout: {total: 2m}
    limits: {requests_per_minute: 100}
  backup: {type: mock}
models:
  default:
    targets: [{provider: primary, model: big}, {provider: backup, model: small}]
  balanced:
    strategy: weighted
    targets:
      - {provider: primary, model: big, weight: 3}
      - {provider: backup, model: small, weight: 1}
    fallback: default
  extra:
    targets: [{provider: backup, model: small}]
    cache: {ttl: 5m}
templates:
  greet:
    text: "Hello {{ name }}"
    arguments: {name: {required: true}}
    model: extra
"""


def snap(text: str, env: dict[str, str] | None = None, **templates: str) -> Snapshot:
    return Snapshot(load_config_text(text, env=env or {}), provider_variables(text), templates)


def details(diff) -> list[str]:
    return [f"{c.kind} {c.path}: {c.detail}" for c in diff.changes]


def messages(diff) -> list[str]:
    return [risk.message for risk in diff.warnings]


def test_formatting_comments_and_key_order_are_not_changes():
    reordered = BASE.replace("version: 1\n", "# a comment\nversion: 1\n").replace(
        "{provider: primary, model: big, weight: 3}", "{weight: 3, model: big, provider: primary}"
    )
    diff = diff_configs(snap(BASE), snap(reordered))
    assert not diff.changed and diff.changes == () and diff.warnings == ()
    assert diff.old_version != diff.new_version  # the text differs; the meaning does not


def test_a_weight_change_is_shown_as_traffic_shares():
    new = BASE.replace("model: big, weight: 3", "model: big, weight: 1")
    diff = diff_configs(snap(BASE), snap(new))
    assert details(diff) == ["changed models.balanced.targets: traffic primary/big 75% -> 50%, backup/small 25% -> 50%"]
    assert diff.warnings == ()


def test_targets_added_removed_and_reordered():
    new = BASE.replace(
        "targets: [{provider: primary, model: big}, {provider: backup, model: small}]",
        "targets: [{provider: backup, model: small}, {provider: primary, model: big}, {provider: backup, model: tiny}]",
    )
    assert details(diff_configs(snap(BASE), snap(new))) == [
        "changed models.default.targets: target backup/tiny added",
        "changed models.default.targets: order primary/big, backup/small -> backup/small, primary/big",
    ]
    weighted = BASE.replace("      - {provider: backup, model: small, weight: 1}\n", "")
    assert details(diff_configs(snap(BASE), snap(weighted))) == [
        "changed models.balanced.targets: target backup/small removed",
        "changed models.balanced.targets: traffic primary/big 75% -> 100%, backup/small 25% -> -",
    ]


def test_limits_timeouts_and_cache_ttls_by_path_with_durations():
    new = (
        BASE.replace("timeout: {total: 2m}", "timeout: {total: 90s}")
        .replace("limits: {requests_per_minute: 100}", "limits: {requests_per_minute: 50, max_wait: 500ms}")
        .replace("cache: {ttl: 5m}", "cache: {ttl: 1h}")
        + "retry: {max_attempts: 5}\n"
    )
    assert details(diff_configs(snap(BASE), snap(new))) == [
        "changed providers.primary.timeout.total: timeout.total: 2m -> 90s",
        "changed providers.primary.limits.requests_per_minute: limits.requests_per_minute: 100 -> 50",
        "changed providers.primary.limits.max_wait: limits.max_wait: 2s -> 500ms",
        "changed models.extra.cache.ttl: cache.ttl: 5m -> 1h",
        "changed retry.max_attempts: max_attempts: 3 -> 5",
    ]


def test_a_removed_model_is_a_change_and_a_warning():
    new = BASE.replace("  extra:\n    targets: [{provider: backup, model: small}]\n    cache: {ttl: 5m}\n", "")
    new = new.replace("    model: extra\n", "")
    diff = diff_configs(snap(BASE), snap(new))
    assert "removed models.extra: backup/small (fallback)" in details(diff)
    assert "changed templates.greet.model: model: extra -> unset" in details(diff)
    assert messages(diff) == ["model `extra` is removed: clients asking for it get `unknown model`"]


def test_a_removed_model_that_is_still_named_is_explained():
    new = BASE.replace("  default:\n    targets", "  main:\n    targets").replace(
        "  extra:\n    targets: [{provider: backup, model: small}]\n    cache: {ttl: 5m}\n", ""
    )
    # `new` does not load (a fallback, a template and defaults.model name removed models): this says who does.
    risks = dangling_model_references(load_config_text(BASE, env={}), new)
    assert [(r.path, r.message) for r in risks] == [
        ("models.balanced.fallback", "model `default` is removed, but `models.balanced.fallback` still names it"),
        ("templates.greet.model", "model `extra` is removed, but `templates.greet.model` still names it"),
        ("defaults.model", "model `default` is removed, but `defaults.model` still names it"),
    ]


def test_a_new_provider_with_a_key_variable():
    new = BASE.replace(
        "  backup: {type: mock}\n",
        "  backup: {type: mock}\n  groq:\n    type: openai_compatible\n    base_url: ${GROQ_URL:-https://api.groq.com/openai/v1}\n"
        "    api_key: ${GROQ_API_KEY}\n",
    ).replace(
        "  extra:\n    targets: [{provider: backup, model: small}]",
        "  extra:\n    targets: [{provider: groq, model: llama}]",
    )
    assert provider_variables(new) == {"groq": ("GROQ_API_KEY",)}  # GROQ_URL has a default: not needed
    unset = diff_configs(snap(BASE), snap(new), env={})
    assert "added providers.groq: openai_compatible at https://api.groq.com/openai/v1, reads GROQ_API_KEY" in " ".join(
        details(unset)
    )
    assert messages(unset) == [
        "model `extra` has no enabled target (groq: environment variable `GROQ_API_KEY` is not set): requests for it "
        "fail",
        "provider `groq` needs `GROQ_API_KEY`, which the old config did not read: set it where the proxy runs before "
        "deploying, or `groq` is disabled (GROQ_API_KEY not set here)",
    ]
    env = {"GROQ_API_KEY": "test-groq-key"}
    present = diff_configs(snap(BASE, env), snap(new, env), env=env)
    assert messages(present) == [
        "provider `groq` needs `GROQ_API_KEY`, which the old config did not read: set it where the proxy runs before "
        "deploying, or `groq` is disabled (set here)"
    ]


def test_a_model_left_without_an_enabled_target_only_warns_when_this_change_did_it():
    off = BASE.replace("  backup: {type: mock}", "  backup: {type: mock, enabled: false}")
    diff = diff_configs(snap(BASE), snap(off))
    assert "changed providers.backup.enabled: disabled (disabled in the config (`enabled: false`))" in details(diff)
    assert messages(diff) == [
        "model `extra` has no enabled target (backup: disabled in the config (`enabled: false`)): requests for it fail"
    ]
    still = off + "retry: {max_attempts: 2}\n"  # the model was already without a target: no new warning
    assert messages(diff_configs(snap(off), snap(still))) == []


def test_template_changes_with_the_body_diff(tmp_path: Path):
    new = BASE.replace('text: "Hello {{ name }}"', 'text: "Hi there, {{ name }}"').replace(
        "arguments: {name: {required: true}}", "arguments: {name: {required: true, description: Who}}"
    )
    diff = diff_configs(snap(BASE), snap(new))
    changes = {c.path: c for c in diff.changes}
    assert changes["templates.greet.arguments"].detail.startswith("arguments: [{name: name, required: true}] -> ")
    body = changes["templates.greet"]
    assert body.detail == "body: +1 -1 lines"
    assert "-Hello {{ name }}\n+Hi there, {{ name }}" in body.diff
    # File templates: the body comes from the caller (the CLI reads the files, here or at a git revision).
    files = BASE.replace('text: "Hello {{ name }}"', "file: greet.j2")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "greet.j2").write_text("Hello {{ name }}")
    base_dir = tmp_path

    def loaded(body_text: str) -> Snapshot:
        config = load_config_text(files, env={}, base_dir=base_dir, file=str(tmp_path / "c.yaml"))
        return Snapshot(config, {}, {"greet": body_text})

    assert details(diff_configs(loaded("Hello {{ name }}"), loaded("Hello {{ name }}"))) == []
    assert details(diff_configs(loaded("Hello {{ name }}"), loaded("Bye {{ name }}"))) == [
        "changed templates.greet: body: +1 -1 lines"
    ]


def test_secrets_are_never_shown():
    keyed = BASE.replace(
        "  backup: {type: mock}", "  backup: {type: mock}\n  paid: {type: openai, api_key: test-old-secret}"
    )
    rotated = keyed.replace("test-old-secret", "test-new-secret") + "server: {auth: {bearer_tokens: [tok-123456]}}\n"
    diff = diff_configs(snap(keyed), snap(rotated))
    assert details(diff) == [
        "changed providers.paid.api_key: api_key: changed (a secret: not shown)",
        "changed server.bearer_tokens: bearer_tokens: 0 -> 1 token(s) (values not shown)",
    ]
    dumped = json.dumps(diff.as_dict())
    assert "secret" not in dumped.replace("a secret: not shown", "") and "tok-123456" not in dumped
    opened = diff_configs(snap(rotated), snap(keyed))
    assert "bearer-token auth is removed: every endpoint is open without a token" in messages(opened)


def test_settings_hot_reload_does_not_apply_say_so():
    new = BASE + "server: {http: {port: 9000}}\ncache: {max_entries: 10}\n"
    diff = diff_configs(snap(BASE), snap(new))
    assert messages(diff) == ["hot reload does not apply `cache.max_entries`, `server.http.port`: restart the proxy"]
    public = BASE + "server: {http: {host: 0.0.0.0}}\n"
    assert "the proxy listens on `0.0.0.0` without bearer-token auth" in messages(
        diff_configs(snap(BASE), snap(public))
    )


def test_traffic_shares():
    config = load_config_text(BASE, env={})
    assert traffic_shares(config.models["balanced"]) == [0.75, 0.25]
    assert traffic_shares(config.models["balanced"], [False, True]) == [None, 1.0]
    assert traffic_shares(config.models["default"]) == [None, None]
