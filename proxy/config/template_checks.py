"""Load-time checks of prompt templates, and the one place template files are resolved, read and compiled: the
file is inside the template directory and readable, the Jinja2 compiles (to Python too: nesting too deep for
Python, unknown filters and tests are caught here, with a did-you-mean), it reads no other file (`{% include %}`,
`{% import %}`, `{% from %}`, `{% extends %}`), every variable it uses is declared in `arguments`, and every
required argument is used.

Uses the same sandboxed, strict environment settings as rendering, so what passes here renders there; the runtime
builds its templates from the `CompiledText` made here (during a load, `proxy.config.template_load` keeps each
file's text and each compiled text, so neither is read or compiled twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import jinja2
from jinja2 import meta, nodes

from proxy.config import template_load
from proxy.config.suggest import did_you_mean
from proxy.config.template_sandbox import BoundedSandbox

MAX_TEMPLATE_BYTES = 256 * 1024
TOO_DEEP = "the template is nested too deeply (blocks, loops, parentheses or operators inside one another); flatten it"
# Tags that read another template: the environment has no loader, so they would fail when the runtime builds the
# template; the load-time checks refuse them first.
FORBIDDEN_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
}


def template_environment() -> BoundedSandbox:
    """The Jinja2 environment templates are checked and rendered in: sandboxed with size limits (see
    `template_sandbox`), undefined variables are errors."""
    return BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _shown_name(name: object) -> str:
    """A file name for a message: long ones keep their start and end."""
    text = str(name)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def resolve_path(path: Path, shown: str) -> Path:
    """`path.resolve()`; ValueError naming `shown` when it cannot be a path (a NUL, too long, a symlink loop)."""
    name = "`" + _shown_name(shown.replace("\0", "\\0")) + "`"
    if "\0" in str(path):
        raise ValueError(f"{name} cannot be used: the name contains a NUL character")
    try:
        return path.resolve()
    except OSError as exc:  # a name too long
        raise ValueError(f"{name} cannot be used: {exc.strerror or exc}") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        raise ValueError(f"{name} cannot be used: its symbolic links form a loop") from None


def resolve_template_file(template_dir: Path, relative: str) -> Path:
    """The absolute path of `relative` under `template_dir`; ValueError if it leaves that directory or cannot
    be a file name."""
    base = resolve_path(template_dir, str(template_dir))
    candidate = resolve_path(base / relative, relative)
    if candidate != base and base not in candidate.parents:
        raise ValueError(f"`{_shown_name(relative)}` is outside the template directory `{base}`")
    return candidate


def read_template_file(path: Path) -> str:
    """The template text; ValueError with a clear message when it cannot be used. Read once per load."""
    return template_load.once("texts", path, _read)


def _read(path: Path) -> str:
    try:
        if path.is_dir():
            raise ValueError(f"template file `{_shown_name(path)}` is a directory")
        if not path.is_file():
            raise ValueError(f"template file `{_shown_name(path)}` does not exist")
        size = path.stat().st_size
        if size > MAX_TEMPLATE_BYTES:
            raise ValueError(
                f"template file `{_shown_name(path)}` is {size:,} bytes; the limit is {MAX_TEMPLATE_BYTES:,}"
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"template file `{_shown_name(path)}` is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"template file `{_shown_name(path)}` cannot be read: {exc.strerror or exc}") from None


class TemplateSyntax(ValueError):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line


def _tree_problem(env: jinja2.Environment, tree: nodes.Template) -> tuple[int, str] | None:
    """The first thing in a parsed template that keeps it from being built: a tag that reads another file, an
    unknown filter or test (with a did-you-mean). Returns (line, message)."""
    found: list[tuple[int, str]] = [
        (
            node.lineno,
            f"`{tag}` is not allowed at line {node.lineno}: templates cannot read other files; "
            "put the text in this template",
        )
        for node_type, tag in FORBIDDEN_TAGS.items()
        for node in tree.find_all(node_type)
    ]
    for kind, node_types, known in (
        ("filter", (nodes.Filter, nodes.FilterBlock), env.filters),
        ("test", (nodes.Test,), env.tests),
    ):
        for node in tree.find_all(node_types):
            name = node.filter.name if isinstance(node, nodes.FilterBlock) else node.name
            if name not in known:
                found.append((node.lineno, f"unknown {kind} `{name}` at line {node.lineno}{did_you_mean(name, known)}"))
    return min(found) if found else None


@dataclass(frozen=True, slots=True)
class CompiledText:
    """A checked template text compiled to Python (build a template with `Template.from_code`), and the
    variables it reads."""

    code: CodeType
    variables: frozenset[str]


def compile_text(source: str) -> CompiledText:
    """`source` parsed, checked and compiled (once per load); TemplateSyntax (with the template line) if it does
    not compile or uses a tag that reads another file or an unknown filter or test."""
    return template_load.once("compiled", source, _compile)


def template_variables(source: str) -> set[str]:
    """The variables a template reads; raises TemplateSyntax like `compile_text`."""
    return set(compile_text(source).variables)


def _compile(source: str) -> CompiledText:
    env = template_environment()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntax(exc.lineno, f"Jinja2 syntax error at line {exc.lineno}: {exc.message}") from None
    except (RecursionError, MemoryError):
        raise TemplateSyntax(None, TOO_DEEP) from None
    try:
        problem = _tree_problem(env, tree)
        if problem is not None:
            raise TemplateSyntax(problem[0], problem[1])
        code = env.compile(tree)  # no name: the runtime says which template a render error is in
        return CompiledText(code=code, variables=frozenset(meta.find_undeclared_variables(tree)))
    except jinja2.TemplateSyntaxError as exc:  # TemplateAssertionError: something the parser let through
        raise TemplateSyntax(exc.lineno, f"Jinja2 error at line {exc.lineno}: {exc.message}") from None
    except (SyntaxError, RecursionError, MemoryError):  # Python's nesting limits (100 levels, 20 loops), `1+1+...`
        raise TemplateSyntax(None, TOO_DEEP) from None
