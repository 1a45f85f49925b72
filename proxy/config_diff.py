"""A semantic diff of two configs, with warnings for risky changes: what a pull request changes in the routing.

    diff = diff_configs(Snapshot(old_config, ...), Snapshot(new_config, ...))
    diff.changed, diff.changes, diff.warnings          # `Change` and `Risk` records, JSON via `as_dict()`

Compared by meaning, not text: comments, key order and formatting do not count. Per provider, model and template:
added, removed, and every changed setting by its config path (durations as `30s`, secrets never shown: only that
they changed). Weights are shown as traffic shares ("primary/gpt-4o 75% -> 50%") for the strategies that share
traffic out (`weighted`, `round_robin`); a changed order is shown for the others. Template bodies are compared when
the caller gives them (`Snapshot.templates`, read by the CLI), with a unified diff.

Warnings (`Risk`): a model left with no enabled target; a removed model (clients asking for it get an error); a
provider that needs an environment variable the old config did not; bearer-token auth removed, or the listener
opened beyond loopback without it; settings that hot reload does not apply (they need a restart).
`dangling_model_references()` explains the other removal risk: a removed model that a template, a fallback or
`defaults.model` still names makes the new config invalid, and this names who still refers to it.

Pure: no I/O. Imports only `proxy.config`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from proxy.config.durations import format_duration
from proxy.config.interpolate import interpolate
from proxy.config.model import Config, ModelConfig, Secret, TemplateConfig
from proxy.config.yaml_source import parse_yaml

Kind = Literal["added", "removed", "changed"]
SECTIONS = ("providers", "models", "templates", "defaults", "retry", "cache", "state", "server", "telemetry")
DURATIONS = frozenset(
    {"connect", "first_token", "total", "max_wait", "window", "cooldown", "initial_backoff", "max_backoff"}
    | {"deadline", "ttl", "latency", "chunk_delay", "retry_after", "grace_period", "timeout"}
)
RESTART_ONLY = ("server.http", "cache.backend", "cache.max_entries")  # read once when the server starts
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class Change:
    """One semantic change. `name` is the provider, model or template (empty for the top-level sections)."""

    section: str
    name: str
    kind: Kind
    path: str
    detail: str
    diff: str | None = None  # a template body's unified diff

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("section", "name", "kind", "path", "detail", "diff")}


@dataclass(frozen=True, slots=True)
class Risk:
    path: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One side of a diff: the config, what each provider reads from the environment (`provider_variables`), and
    each template's body text (file content or inline text), when known."""

    config: Config
    variables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    old_version: str
    new_version: str
    changes: tuple[Change, ...]
    warnings: tuple[Risk, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "changed": self.changed,
            "changes": [c.as_dict() for c in self.changes],
            "warnings": [w.as_dict() for w in self.warnings],
        }


# --- values ----------------------------------------------------------------------------------------------


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def show(path: str, value: Any) -> str:
    """`value` as the diff shows it: durations as `30s`, None as `unset`, secrets hidden."""
    if value is None:
        return "unset"
    if isinstance(value, Secret):
        return "*** (secret)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return format_duration(float(value)) if _leaf(path) in DURATIONS else f"{value:g}"
    if is_dataclass(value):
        shown = [
            f"{f.name}: {show(f.name, getattr(value, f.name))}"
            for f in fields(value)
            if getattr(value, f.name) not in (None, (), {}, f.default)
        ]
        return "{" + ", ".join(shown) + "}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(str(k), v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(path, v) for v in value) + "]"
    return str(value)


def _walk(path: str, old: Any, new: Any, out: list[tuple[str, str]]) -> None:
    """Append `(path, "old -> new")` for every leaf that differs."""
    if old == new:
        return
    if is_dataclass(old) and type(old) is type(new):
        for f in fields(old):
            _walk(f"{path}.{f.name}", getattr(old, f.name), getattr(new, f.name), out)
    elif isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in dict.fromkeys([*old, *new]):
            sub = f"{path}.{key}"
            if key not in new:
                out.append((sub, "removed"))
            elif key not in old:
                out.append((sub, f"added: {show(sub, new[key])}"))
            else:
                _walk(sub, old[key], new[key], out)
    elif isinstance(old, Secret) or isinstance(new, Secret):
        out.append((path, "changed (a secret: not shown)" if old and new else f"{'set' if new else 'removed'}"))
    elif path.endswith("bearer_tokens"):
        out.append((path, f"{len(old)} -> {len(new)} token(s) (values not shown)"))
    else:
        out.append((path, f"{show(path, old)} -> {show(path, new)}"))


def _field_changes(section: str, name: str, prefix: str, old: Any, new: Any, skip: tuple[str, ...] = ()) -> list:
    found: list[tuple[str, str]] = []
    for f in fields(old):
        if f.name not in skip:
            _walk(f"{prefix}.{f.name}", getattr(old, f.name), getattr(new, f.name), found)
    return [Change(section, name, "changed", path, f"{path[len(prefix) + 1 :]}: {text}") for path, text in found]


# --- providers ---------------------------------------------------------------------------------------------


def provider_variables(text: str) -> dict[str, tuple[str, ...]]:
    """Per provider, the environment variables its settings need (`${VAR}` without a default), from YAML text."""
    doc, _ = parse_yaml(text, "<config>")
    if doc is None or not isinstance(doc.data, dict):
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for path, names in interpolate(doc.data, {}).unset.items():
        if len(path) >= 2 and path[0] == "providers":
            found[str(path[1])] = tuple(dict.fromkeys([*found.get(str(path[1]), ()), *names]))
    return found


def _provider_summary(snapshot: Snapshot, name: str) -> str:
    provider = snapshot.config.providers[name]
    summary = provider.type
    if provider.base_url:
        summary += f" at {provider.base_url}"
    variables = snapshot.variables.get(name)
    if variables:
        summary += ", reads " + ", ".join(variables)
    if not provider.enabled:
        summary += f" (disabled here: {provider.disabled_reason})"
    return summary


def _provider_changes(old: Snapshot, new: Snapshot) -> list[Change]:
    changes: list[Change] = []
    before, after = old.config.providers, new.config.providers
    for name in after:
        if name not in before:
            changes.append(Change("providers", name, "added", f"providers.{name}", _provider_summary(new, name)))
    for name in before:
        if name not in after:
            changes.append(Change("providers", name, "removed", f"providers.{name}", before[name].type))
            continue
        o, n = before[name], after[name]
        prefix = f"providers.{name}"
        if o.enabled != n.enabled:
            text = "enabled" if n.enabled else f"disabled ({n.disabled_reason})"
            changes.append(Change("providers", name, "changed", f"{prefix}.enabled", text))
        changes += _field_changes("providers", name, prefix, o, n, skip=("name", "enabled", "disabled_reason"))
    return changes


# --- models ------------------------------------------------------------------------------------------------


def traffic_shares(model: ModelConfig, enabled: list[bool] | None = None) -> list[float | None]:
    """Each target's share of the traffic its strategy gives it (None where the strategy does not share traffic
    out: `fallback`, `least_latency`). With `enabled`, only those targets share (disabled ones get None)."""
    weights = [t.weight if model.strategy == "weighted" else 1.0 for t in model.targets]
    if model.strategy not in ("weighted", "round_robin"):
        return [None] * len(weights)
    mask = enabled if enabled is not None else [True] * len(weights)
    total = sum(w for w, on in zip(weights, mask, strict=True) if on)
    return [round(w / total, 4) if on and total else None for w, on in zip(weights, mask, strict=True)]


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.3g}%"


def _label(target: Any) -> str:
    return f"{target.provider}/{target.model}"


def _model_summary(model: ModelConfig) -> str:
    shares = traffic_shares(model)
    targets = ", ".join(
        _label(t) + (f" {_percent(s)}" if s is not None else "") for t, s in zip(model.targets, shares, strict=True)
    )
    fallback = f", then model {model.fallback}" if model.fallback else ""
    return f"{targets} ({model.strategy}{fallback})"


def _target_changes(name: str, old: ModelConfig, new: ModelConfig) -> list[Change]:
    prefix = f"models.{name}"
    changes: list[Change] = []
    before = {_label(t): t for t in old.targets}
    after = {_label(t): t for t in new.targets}
    for label in after:
        if label not in before:
            changes.append(Change("models", name, "changed", f"{prefix}.targets", f"target {label} added"))
    for label, target in before.items():
        if label not in after:
            changes.append(Change("models", name, "changed", f"{prefix}.targets", f"target {label} removed"))
            continue
        weighted = old.strategy == new.strategy == "weighted"
        skip = ("provider", "model", "weight") if weighted else ("provider", "model")
        for change in _field_changes("models", name, f"{prefix}.targets[{label}]", target, after[label], skip):
            note = ""
            if change.path.endswith(".weight") and new.strategy != "weighted":
                note = f" (no effect under `{new.strategy}`)"
            changes.append(Change("models", name, "changed", change.path, f"{label} {change.detail}{note}"))
    common_old = [label for label in before if label in after]
    common_new = [label for label in after if label in before]
    if common_old != common_new:
        changes.append(
            Change(
                "models",
                name,
                "changed",
                f"{prefix}.targets",
                f"order {', '.join(common_old)} -> {', '.join(common_new)}",
            )
        )
    old_shares = dict(zip(before, traffic_shares(old), strict=True))
    new_shares = dict(zip(after, traffic_shares(new), strict=True))
    labels = list(dict.fromkeys([*after, *before]))
    if any(old_shares.get(label) != new_shares.get(label) for label in labels) and (
        any(s is not None for s in old_shares.values()) or any(s is not None for s in new_shares.values())
    ):
        moves = ", ".join(
            f"{label} {_percent(old_shares.get(label))} -> {_percent(new_shares.get(label))}" for label in labels
        )
        changes.append(Change("models", name, "changed", f"{prefix}.targets", f"traffic {moves}"))
    return changes


def _model_changes(old: Config, new: Config) -> list[Change]:
    changes: list[Change] = []
    for name, model in new.models.items():
        if name not in old.models:
            changes.append(Change("models", name, "added", f"models.{name}", _model_summary(model)))
    for name, model in old.models.items():
        if name not in new.models:
            changes.append(Change("models", name, "removed", f"models.{name}", _model_summary(model)))
            continue
        other = new.models[name]
        changes += _field_changes("models", name, f"models.{name}", model, other, skip=("name", "targets"))
        changes += _target_changes(name, model, other)
    return changes


# --- templates ---------------------------------------------------------------------------------------------


def _template_file(config: Config, template: TemplateConfig) -> str | None:
    if template.file is None:
        return None
    if config.template_dir is not None and template.file.is_relative_to(config.template_dir):
        return template.file.relative_to(config.template_dir).as_posix()
    return template.file.name


def _template_changes(old: Snapshot, new: Snapshot) -> list[Change]:
    changes: list[Change] = []
    before, after = old.config.templates, new.config.templates
    for name in after:
        if name not in before:
            changes.append(Change("templates", name, "added", f"templates.{name}", after[name].description or ""))
    for name, template in before.items():
        if name not in after:
            changes.append(Change("templates", name, "removed", f"templates.{name}", template.description or ""))
            continue
        other = after[name]
        prefix = f"templates.{name}"
        changes += _field_changes("templates", name, prefix, template, other, skip=("name", "file", "text"))
        old_file, new_file = _template_file(old.config, template), _template_file(new.config, other)
        if old_file != new_file:
            changes.append(Change("templates", name, "changed", f"{prefix}.file", f"file: {old_file} -> {new_file}"))
        old_body = old.templates.get(name, template.text)
        new_body = new.templates.get(name, other.text)
        if old_body is not None and new_body is not None and old_body != new_body:
            lines = list(
                difflib.unified_diff(
                    old_body.splitlines(), new_body.splitlines(), f"{name} (old)", f"{name} (new)", lineterm=""
                )
            )
            added = sum(1 for line in lines[2:] if line.startswith("+"))
            removed = sum(1 for line in lines[2:] if line.startswith("-"))
            changes.append(
                Change("templates", name, "changed", prefix, f"body: +{added} -{removed} lines", diff="\n".join(lines))
            )
    return changes


# --- the rest, and warnings ----------------------------------------------------------------------------------


def _section_changes(old: Config, new: Config) -> list[Change]:
    changes: list[Change] = []
    for section in SECTIONS[3:]:
        changes += _field_changes(section, "", section, getattr(old, section), getattr(new, section))
    return changes


def _risks(old: Snapshot, new: Snapshot, changes: list[Change], env: Mapping[str, str] | None) -> list[Risk]:
    risks: list[Risk] = []
    o, n = old.config, new.config
    for name, model in n.models.items():
        providers = [n.providers[t.provider] for t in model.targets]
        if any(p.enabled for p in providers):
            continue
        previous = o.models.get(name)
        if previous is not None and not any(o.providers[t.provider].enabled for t in previous.targets):
            continue  # already so before: not this change's doing
        reasons = "; ".join(dict.fromkeys(f"{p.name}: {p.disabled_reason}" for p in providers))
        then = f"requests for it go to its fallback `{model.fallback}`" if model.fallback else "requests for it fail"
        risks.append(Risk(f"models.{name}", f"model `{name}` has no enabled target ({reasons}): {then}"))
    for name in o.models:
        if name not in n.models:
            risks.append(
                Risk(f"models.{name}", f"model `{name}` is removed: clients asking for it get `unknown model`")
            )
    if o.defaults.model != n.defaults.model and o.defaults.model in n.models:
        risks.append(
            Risk(
                "defaults.model",
                f"requests that name no model move from `{o.defaults.model}` to `{n.defaults.model}`",
            )
        )
    for name in n.providers:
        fresh = [v for v in new.variables.get(name, ()) if v not in old.variables.get(name, ())]
        if fresh:
            here = ""
            if env is not None:
                unset = [v for v in fresh if not env.get(v)]
                here = f" ({', '.join(unset)} not set here)" if unset else " (set here)"
            risks.append(
                Risk(
                    f"providers.{name}",
                    f"provider `{name}` needs {', '.join(f'`{v}`' for v in fresh)}, which the old config did not "
                    f"read: set it where the proxy runs before deploying, or `{name}` is disabled{here}",
                )
            )
    if o.server.bearer_tokens and not n.server.bearer_tokens:
        risks.append(Risk("server.auth", "bearer-token auth is removed: every endpoint is open without a token"))
    host = n.server.http.host
    if (
        not n.server.bearer_tokens
        and host not in _LOOPBACK
        and (o.server.http.host in _LOOPBACK or o.server.bearer_tokens)
    ):
        risks.append(Risk("server.http.host", f"the proxy listens on `{host}` without bearer-token auth"))
    restart = list(dict.fromkeys(c.path for c in changes if c.path.startswith(RESTART_ONLY)))
    if restart:
        risks.append(
            Risk(restart[0], f"hot reload does not apply {', '.join(f'`{p}`' for p in restart)}: restart the proxy")
        )
    return risks


def diff_configs(old: Snapshot, new: Snapshot, *, env: Mapping[str, str] | None = None) -> ConfigDiff:
    """Every semantic change from `old` to `new`, and the warnings. `env` (the environment the diff runs in) lets
    the new-variable warning say whether the variable is set here."""
    changes = [
        *_provider_changes(old, new),
        *_model_changes(old.config, new.config),
        *_template_changes(old, new),
        *_section_changes(old.config, new.config),
    ]
    return ConfigDiff(
        old.config.version_hash,
        new.config.version_hash,
        tuple(changes),
        tuple(_risks(old, new, changes, env)),
    )


def dangling_model_references(old: Config, new_text: str) -> list[Risk]:
    """For a new config that does not load: models it removed that a fallback, a template or `defaults.model` still
    names (each makes the new config invalid), read from its YAML text."""
    doc, _ = parse_yaml(new_text, "<config>")
    if doc is None or not isinstance(doc.data, dict):
        return []
    data = doc.data
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    removed = set(old.models) - set(models)
    references: list[tuple[str, object]] = []
    for name, model in models.items():
        if isinstance(model, dict):
            references.append((f"models.{name}.fallback", model.get("fallback")))
    templates = data.get("templates") if isinstance(data.get("templates"), dict) else {}
    for name, template in templates.items():
        if isinstance(template, dict):
            references.append((f"templates.{name}.model", template.get("model")))
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    references.append(("defaults.model", defaults.get("model", "default" if "default" in old.models else None)))
    return [
        Risk(path, f"model `{value}` is removed, but `{path}` still names it")
        for path, value in references
        if isinstance(value, str) and value in removed
    ]
