"""Checks the JSON Schema cannot express: references between sections, cycles, per-type provider settings,
template files and their variables. Runs on schema-valid data; returns every problem found.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any

from proxy.config.suggest import clip, did_you_mean, quote_list
from proxy.config.template_checks import (
    TemplateSyntax,
    read_template_file,
    resolve_template_file,
    template_variables,
)
from proxy.config.wire_checks import wire_problems
from proxy.config.yaml_source import Path

Problem = tuple[Path, str, bool]  # (path, message, points at the key)

_TYPE_ONLY_FIELDS = {
    "mock": ("mock",),
    "class": ("python",),
    "options": ("python",),
    "organization": ("openai", "openai_compatible"),
    "project": ("openai", "openai_compatible"),
    "api_version": ("anthropic",),
}


def _unknown(what: str, name: object, known: dict[str, Any]) -> str:
    hint = did_you_mean(str(name), known)
    return f"unknown {what} `{clip(name)}`" + (hint or f"; declared {what}s: {quote_list(known) or '(none)'}")


def _provider_problems(providers: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name, provider in providers.items():
        kind = provider.get("type")
        for field, kinds in _TYPE_ONLY_FIELDS.items():
            if field in provider and kind not in kinds:
                problems.append(
                    (
                        (("providers", name, field)),
                        f"`{field}` only applies to type {quote_list(kinds)}, not `{kind}`",
                        True,
                    )
                )
        if kind == "openai_compatible" and "base_url" not in provider:
            problems.append(
                (
                    ("providers", name),
                    "type `openai_compatible` needs a `base_url` (e.g. http://localhost:11434/v1)",
                    True,
                )
            )
        if kind == "python" and "class" not in provider:
            problems.append((("providers", name), "type `python` needs a `class` (`package.module:ClassName`)", True))
    return problems


def _fallback_cycles(models: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    reported: set[frozenset[str]] = set()
    for start in models:
        chain = [start]
        current = models[start].get("fallback")
        while isinstance(current, str) and current in models:
            if current in chain:
                cycle = [*chain[chain.index(current) :], current]
                key = frozenset(cycle)
                if len(cycle) > 2 and key not in reported:  # a model naming itself is reported on its own
                    reported.add(key)
                    problems.append(
                        (
                            ("models", cycle[0], "fallback"),
                            "fallback chain loops: " + " -> ".join(f"`{m}`" for m in cycle),
                            False,
                        )
                    )
                break
            chain.append(current)
            current = models[current].get("fallback")
    return problems


def _model_problems(data: dict[str, Any]) -> list[Problem]:
    providers = data.get("providers", {})
    models = data.get("models", {})
    problems: list[Problem] = []
    for name, model in models.items():
        seen: dict[tuple[str, str], int] = {}
        for i, target in enumerate(model.get("targets", [])):
            provider = target.get("provider")
            if provider not in providers:
                problems.append(
                    (("models", name, "targets", i, "provider"), _unknown("provider", provider, providers), False)
                )
            key = (provider, target.get("model"))
            if key in seen:
                problems.append(
                    (
                        ("models", name, "targets", i),
                        f"duplicate target `{provider}/{key[1]}` (same as targets[{seen[key]}])",
                        False,
                    )
                )
            seen.setdefault(key, i)
        fallback = model.get("fallback")
        if fallback is not None:
            if fallback == name:
                problems.append((("models", name, "fallback"), f"model `{name}` cannot fall back to itself", False))
            elif fallback not in models:
                problems.append((("models", name, "fallback"), _unknown("model", fallback, models), False))
    problems += _fallback_cycles(models)
    default = data.get("defaults", {}).get("model", "default")
    if models and default not in models:
        where = ("defaults", "model") if "model" in data.get("defaults", {}) else ("models",)
        problems.append(
            (
                where,
                f"the default model `{clip(default)}` is not declared{did_you_mean(default, models)}; declare a "
                f"model named `{clip(default)}` or set `defaults.model` to one of {quote_list(models)}",
                False,
            )
        )
    return problems


def _state_problems(data: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    state = data.get("state", {})
    users = [section for section in ("state", "cache") if data.get(section, {}).get("backend") == "redis"]
    if users and not state.get("url"):
        problems.append(
            (
                (users[0], "backend"),
                f"`{users[0]}.backend` is `redis` but `state.url` is not set; set it, e.g. to "
                "`redis://127.0.0.1:6379/0` or `${REDIS_URL}`",
                False,
            )
        )
    return problems


def _template_problems(data: dict[str, Any], template_dir: FsPath | None, check_files: bool) -> list[Problem]:
    problems: list[Problem] = []
    models = data.get("models", {})
    for name, template in data.get("templates", {}).items():
        base: Path = ("templates", name)
        has_file, has_text = "file" in template, "text" in template
        if has_file == has_text:
            problems.append((base, "give exactly one of `file` and `text`", True))
            continue
        model = template.get("model")
        if model is not None and model not in models:
            problems.append(((*base, "model"), _unknown("model", model, models), False))
        if has_file:
            if not check_files:
                continue  # `template_dir` is unusable, and reported
            if template_dir is None:
                problems.append(((*base, "file"), "template files need the config to be read from a file", False))
                continue
            try:
                path = resolve_template_file(template_dir, template["file"])
                source = read_template_file(path)
            except ValueError as exc:
                problems.append(((*base, "file"), str(exc), False))
                continue
            where = f"template file `{template['file']}`"
        else:
            source = template["text"]
            where = "the template text"
        if not source.strip():
            problems.append(
                ((*base, "file" if has_file else "text"), f"{where} is empty: every request would be refused", False)
            )
            continue
        arguments = template.get("arguments", {})
        declared = list(arguments)
        used: set[str] = set()
        for field, text, label in (
            ("file" if has_file else "text", source, where),
            ("system", template.get("system"), "the system text"),
        ):
            if text is None:
                continue
            try:
                variables = template_variables(text)
            except TemplateSyntax as exc:
                problems.append(((*base, field), f"{label}: {exc}", False))
                continue
            used |= variables
            for var in sorted(variables - set(declared)):
                problems.append(
                    (
                        (*base, field),
                        f"{label} uses `{var}`, which is not declared in `arguments`{did_you_mean(var, declared)}",
                        False,
                    )
                )
        for arg, spec in arguments.items():
            if spec.get("required") and arg not in used and not any(p[0][:2] == base for p in problems):
                problems.append(((*base, "arguments", arg), f"required argument `{arg}` is never used", True))
    return problems


def semantic_problems(data: dict[str, Any], *, template_dir: FsPath | None, check_files: bool = True) -> list[Problem]:
    """Every cross-reference problem in schema-valid `data`. `check_files=False` skips template files (when
    `template_dir` itself is unusable)."""
    return (
        _provider_problems(data.get("providers", {}))
        + _model_problems(data)
        + _state_problems(data)
        + _template_problems(data, template_dir, check_files)
        + wire_problems(data)
    )
