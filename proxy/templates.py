"""Prompt templates: compiled once from the config, rendered per request in the Jinja2 sandbox.

`PromptTemplates.from_config(config)` builds every template once (at config load, never per request) from what the
config load read and compiled (`proxy.config.template_load`); a config made without the loader (changed by hand)
has its files read and texts compiled here, by the same functions with the same messages. A template that cannot
be built makes the whole set fail with a `ConfigError`.
`render(name, arguments)` checks the arguments (unknown ones, missing required ones, defaults for omitted optional
ones), renders the system text and the body, and returns a `RenderedPrompt` (the messages, the template's model
settings and a `version` hash for the response-cache key). Every failure is a `TemplateError` in the user's words.

Sandbox rules: templates render in `template_environment()` (Jinja's `ImmutableSandboxedEnvironment` with strict
undefined and the size limits of `proxy.config.template_sandbox`, the same settings the load-time checks use), so
they cannot reach attributes starting with `_`, Python internals or mutate their arguments, and an expression that
would build a huge value (`'x' * 10**9`, `10 ** (10**10)`, `'x'.ljust(10**9)`) fails before doing the work; one
render runs at most `MAX_RENDER_STEPS` loop iterations and calls. The environment has no loader, and
`{% include %}`, `{% import %}`, `{% from %}` and `{% extends %}` are refused when the template is compiled
(`template_checks.compile_text`, for the load-time checks and for a config changed by hand alike): a template can
read no file at all, not even one under the template directory. The rendered output is capped too
(`MAX_RENDERED_BYTES`).

Imports config, errors and types only (DESIGN.md: runtime -> templates -> config.model -> types/errors).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from proxy.config.model import Config, TemplateConfig
from proxy.config.suggest import clip, did_you_mean, quote_list
from proxy.config.template_checks import (
    CompiledText,
    compile_text,
    read_template_file,
    resolve_template_file,
    template_environment,
)
from proxy.config.template_load import CheckedTemplate, checked_template
from proxy.config.template_sandbox import TemplateLimitError, render_budget
from proxy.errors import ConfigError, ConfigIssue, TemplateError
from proxy.types import ChatRequest, Message

MAX_RENDERED_BYTES = 1024 * 1024  # the system text and the body together, UTF-8
RENDERER_VERSION = "2"  # part of every template version: bump when rendering semantics change
MAX_LISTED = 10  # unknown arguments named in one error
# What a template can raise while rendering: Jinja's errors (undefined, sandbox) and the Python errors of the
# expressions it evaluates ('a' + 1, 1 / 0, a recursive macro).
_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)


@dataclass(frozen=True, slots=True)
class PromptArgument:
    """One argument of a template as an MCP prompt lists it."""

    name: str
    description: str | None
    required: bool


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """A template as an MCP prompt: its name, description and arguments."""

    name: str
    description: str | None
    arguments: tuple[PromptArgument, ...]


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A rendered template: the messages (system first when there is one) and the template's model settings."""

    name: str
    messages: tuple[Message, ...]
    version: str  # short hash of the template's sources; part of the response-cache key
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    def to_request(
        self,
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = False,
        **fields: Any,
    ) -> ChatRequest:
        """The chat request; a given (not None) override wins over the template's setting. `fields` are passed
        to `ChatRequest` as they are (e.g. `seed`, `user`)."""
        return ChatRequest(
            messages=self.messages,
            model=model if model is not None else self.model,
            max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
            temperature=temperature if temperature is not None else self.temperature,
            stream=stream,
            **fields,
        )


@dataclass(frozen=True, slots=True)
class _Source:
    label: str  # for render errors: `summarize.j2`, `its inline text`, `its system text`
    template: jinja2.Template


@dataclass(frozen=True, slots=True)
class _Compiled:
    config: TemplateConfig
    body: _Source
    system: _Source | None
    version: str


class _BuildProblem(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PromptTemplates:
    """The compiled templates of one config. Immutable; render from any task."""

    def __init__(self, compiled: Mapping[str, _Compiled], *, max_output_bytes: int = MAX_RENDERED_BYTES) -> None:
        self._compiled = dict(compiled)
        self._max_output_bytes = max_output_bytes

    @classmethod
    def from_config(cls, config: Config, *, max_output_bytes: int = MAX_RENDERED_BYTES) -> PromptTemplates:
        """Read and compile every template of `config`; ConfigError listing every template that cannot be built."""
        env = template_environment()
        compiled: dict[str, _Compiled] = {}
        issues: list[ConfigIssue] = []
        for name, template in config.templates.items():
            try:
                checked = checked_template(config.templates, name, config.template_dir)
                compiled[name] = _compile(env, template, config.template_dir, checked)
            except _BuildProblem as exc:
                file = str(config.path) if config.path else "<config>"
                issues.append(ConfigIssue(file, None, None, f"templates.{name}.{exc.field}", str(exc), "semantic"))
        if issues:
            raise ConfigError(issues)
        return cls(compiled, max_output_bytes=max_output_bytes)

    def __len__(self) -> int:
        return len(self._compiled)

    def __contains__(self, name: object) -> bool:
        return name in self._compiled

    def names(self) -> tuple[str, ...]:
        """Template names in config order."""
        return tuple(self._compiled)

    def get(self, name: str) -> TemplateConfig:
        """The template's config; TemplateError (with did-you-mean and the known names) if there is none."""
        return self._lookup(name).config

    def version(self, name: str) -> str:
        return self._lookup(name).version

    def prompts(self) -> tuple[PromptInfo, ...]:
        """Every template as an MCP prompt (name, description, arguments with description and required)."""
        return tuple(
            PromptInfo(
                name=name,
                description=c.config.description,
                arguments=tuple(PromptArgument(a.name, a.description, a.required) for a in c.config.arguments),
            )
            for name, c in self._compiled.items()
        )

    def render(self, name: str, arguments: Mapping[str, Any] | None = None) -> RenderedPrompt:
        """Render template `name` with `arguments` (any JSON values; None counts as not given)."""
        compiled = self._lookup(name)
        values = _bind(compiled.config, arguments if arguments is not None else {})
        budget = self._max_output_bytes
        messages: list[Message] = []
        with render_budget():  # the system text and the body share one budget of loop iterations and calls
            if compiled.system is not None:
                system = _render(name, compiled.system, values, budget, self._max_output_bytes)
                budget -= len(system.encode("utf-8"))
                if system.strip():
                    messages.append(Message("system", system))
            body = _render(name, compiled.body, values, budget, self._max_output_bytes)
        if not body.strip():
            raise TemplateError(
                f"template `{name}` rendered an empty prompt ({compiled.body.label}); check its arguments",
                template=name,
            )
        messages.append(Message("user", body))
        config = compiled.config
        return RenderedPrompt(
            name=name,
            messages=tuple(messages),
            version=compiled.version,
            model=config.model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )

    def _lookup(self, name: str) -> _Compiled:
        compiled = self._compiled.get(name) if isinstance(name, str) else None
        if compiled is None:
            known = quote_list(self._compiled) or "(none)"
            raise TemplateError(
                f"unknown template `{name}`{_hint(str(name), self._compiled)}; known templates: {known}",
                template=str(name),
            )
        return compiled


# --- building -------------------------------------------------------------------------------------------


def _compile(
    env: jinja2.Environment, config: TemplateConfig, template_dir: Path | None, checked: CheckedTemplate | None
) -> _Compiled:
    """The template built from what the load checked, or (a config changed by hand) read and compiled now."""
    if config.file is not None:
        field, path = "file", config.file
        try:
            if template_dir is not None and checked is None:  # a config changed by hand may name any file
                path = resolve_template_file(template_dir, str(config.file))
            source = checked.source if checked else read_template_file(config.file)
        except ValueError as exc:
            raise _BuildProblem(field, str(exc)) from None
        base = template_dir if checked is not None or template_dir is None else template_dir.resolve()
        label = path.relative_to(base).as_posix() if base and path.is_relative_to(base) else path.name
        where = f"template file `{label}`"
    elif config.text is not None:
        field, label, where, source = "text", "its inline text", "the template text", config.text
    else:
        raise _BuildProblem("file", "give exactly one of `file` and `text`")
    body = _source(env, checked.body if checked else source, field, where, label)
    system = None
    if config.system is not None:
        text = checked.system if checked and checked.system else config.system
        system = _source(env, text, "system", "the system text", "its system text")
    return _Compiled(config=config, body=body, system=system, version=_version(config, source))


def _source(env: jinja2.Environment, text: str | CompiledText, field: str, where: str, label: str) -> _Source:
    """A renderable template from compiled code (compiling `text` first); messages as the load-time checks'."""
    if isinstance(text, str):
        try:
            text = compile_text(text)
        except ValueError as exc:  # TemplateSyntax
            raise _BuildProblem(field, f"{where}: {exc}") from None
    template = env.template_class.from_code(env, text.code, env.make_globals(None), None)
    return _Source(label=label, template=template)


def _version(config: TemplateConfig, body: str) -> str:
    """Changes when anything that shapes the rendered text changes: the body, the system text, the arguments."""
    sources = {
        "renderer": RENDERER_VERSION,
        "body": body,
        "system": config.system,
        "arguments": [[a.name, a.required, a.default] for a in config.arguments],
    }
    canonical = json.dumps(sources, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


# --- rendering ------------------------------------------------------------------------------------------


def _hint(word: str, choices: Iterable[str]) -> str:
    """` (did you mean `x`?)` when a choice is close to `word`, else an empty string."""
    hint = did_you_mean(word, choices)
    return f" ({hint.removeprefix('; ')})" if hint else ""


def _argument_error(name: str, message: str) -> TemplateError:
    error = TemplateError(message, template=name)
    error.param = "arguments"
    return error


def _describe_arguments(config: TemplateConfig) -> str:
    if not config.arguments:
        return "it takes no arguments"
    described = []
    for arg in config.arguments:
        if arg.required:
            described.append(f"`{arg.name}` (required)")
        elif arg.default is not None:
            described.append(f"`{arg.name}` (default: {json.dumps(arg.default, default=str)})")
        else:
            described.append(f"`{arg.name}` (optional)")
    return "its arguments: " + ", ".join(described)


def _bind(config: TemplateConfig, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The template's variables: the given arguments plus defaults; TemplateError naming every problem."""
    name = config.name
    if not isinstance(arguments, Mapping):
        raise _argument_error(name, f"template `{name}`: `arguments` must be an object of name: value")
    declared = [arg.name for arg in config.arguments]
    unknown = [key for key in arguments if key not in declared]
    problems = [f"unknown argument `{clip(key)}`{_hint(str(key), declared)}" for key in unknown[:MAX_LISTED]]
    if len(unknown) > MAX_LISTED:
        problems.append(f"{len(unknown) - MAX_LISTED} more unknown arguments")
    missing = [arg.name for arg in config.arguments if arg.required and arguments.get(arg.name) is None]
    if missing:
        problems.append(f"missing required argument{'s' if len(missing) > 1 else ''} {quote_list(missing)}")
    if problems:
        raise _argument_error(name, f"template `{name}`: {'; '.join(problems)}; {_describe_arguments(config)}")
    return {
        arg.name: arguments[arg.name] if arguments.get(arg.name) is not None else arg.default
        for arg in config.arguments
    }


def _render(name: str, source: _Source, values: dict[str, Any], budget: int, limit: int) -> str:
    """The rendered text; TemplateError when it fails or its UTF-8 size passes `budget` (what is left of `limit`)."""
    parts: list[str] = []
    size = 0
    chunks = source.template.generate(values)
    try:
        for chunk in chunks:
            size += len(chunk.encode("utf-8"))
            if size > budget:
                break
            parts.append(chunk)
    except _RENDER_ERRORS as exc:
        raise TemplateError(_failure(name, source, exc), template=name) from None
    finally:
        chunks.close()
    if size > budget:
        raise TemplateError(
            f"the rendered prompt of template `{name}` is larger than the limit of {_limit_text(limit)}; "
            "shorten the arguments or the template",
            template=name,
        )
    return "".join(parts)


def _limit_text(budget: int) -> str:
    return f"{budget / (1024 * 1024):g} MiB" if budget >= 1024 * 1024 else f"{budget:,} bytes"


def _failure(name: str, source: _Source, exc: BaseException) -> str:
    line = None
    # Jinja rewrites the traceback so template frames carry the template's filename and line; walk_tb reads no
    # source lines (extract_tb would open the file through linecache).
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == source.template.filename:
            line = lineno  # the innermost template frame wins
    where = source.label + (f", line {line}" if line else "")
    if isinstance(exc, TemplateLimitError):
        what = "hit a sandbox limit"
    elif isinstance(exc, SecurityError):
        what = "was stopped by the sandbox"
    elif isinstance(exc, jinja2.UndefinedError):
        what = "uses something undefined"
    else:
        what = "failed to render"
    text = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    if len(text) > 300:
        text = text[:300] + "..."
    return f"template `{name}` {what} ({where}): {text}"
