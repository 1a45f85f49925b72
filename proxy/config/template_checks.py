"""Load-time checks of prompt templates: the file is inside the template directory and readable, the Jinja2
compiles, it reads no other file (`{% include %}`, `{% import %}`, `{% from %}`, `{% extends %}`), every variable
it uses is declared in `arguments`, and every required argument is used.

Uses the same sandboxed, strict environment settings as rendering, so what passes here renders there.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2 import meta, nodes

from proxy.config.template_sandbox import BoundedSandbox

MAX_TEMPLATE_BYTES = 256 * 1024
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


def resolve_template_file(template_dir: Path, relative: str) -> Path:
    """The absolute path of `relative` under `template_dir`; ValueError if it leaves that directory."""
    base = template_dir.resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise ValueError(f"`{relative}` is outside the template directory `{base}`")
    return candidate


def read_template_file(path: Path) -> str:
    """The template text; ValueError with a clear message when it cannot be used."""
    if not path.is_file():
        raise ValueError(f"template file `{path}` does not exist")
    size = path.stat().st_size
    if size > MAX_TEMPLATE_BYTES:
        raise ValueError(f"template file `{path}` is {size:,} bytes; the limit is {MAX_TEMPLATE_BYTES:,}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"template file `{path}` is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"template file `{path}` cannot be read: {exc.strerror}") from None


class TemplateSyntax(ValueError):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line


def forbidden_tag_message(tag: str, line: int | None = None) -> str:
    where = f" at line {line}" if line is not None else ""
    return f"`{tag}` is not allowed{where}: templates cannot read other files; put the text in this template"


def template_variables(source: str) -> set[str]:
    """The variables a template reads; raises TemplateSyntax (with the template line) if it does not compile or
    uses a tag that reads another file."""
    env = template_environment()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntax(exc.lineno, f"Jinja2 syntax error at line {exc.lineno}: {exc.message}") from None
    forbidden = [(node.lineno, tag) for node_type, tag in FORBIDDEN_TAGS.items() for node in tree.find_all(node_type)]
    if forbidden:
        line, tag = min(forbidden)
        raise TemplateSyntax(line, forbidden_tag_message(tag, line))
    return set(meta.find_undeclared_variables(tree))
