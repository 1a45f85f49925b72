"""One config load's template files and compiled templates, so each is read and compiled once per load.

`check_config_text` runs inside `one_load()`: while it is open, `template_checks.read_template_file` keeps each
file's text (by path) and `template_checks.compile_text` each compiled text (by its source), so the load-time
checks read and compile every template once. The load then attaches what they made to the `Config` it returns
(`TemplateLoad.attach`: `Config.templates` becomes a `LoadedTemplates`, a read-only mapping of the same
`TemplateConfig`s), and `PromptTemplates.from_config` builds from that instead of reading and compiling again.

Nothing outlives the load: the next load (a hot reload) opens a new `one_load()` and reads every file afresh. A
config changed by hand (`dataclasses.replace(config, templates={...})`) holds a plain mapping, so its templates
are read and compiled when built, with the same functions and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from proxy.config.model import TemplateConfig

if TYPE_CHECKING:
    from proxy.config.template_checks import CompiledText


@dataclass(frozen=True, slots=True)
class CheckedTemplate:
    """A template as the load checked it: the body's source text (the file's, as read) and both parts compiled."""

    source: str
    body: CompiledText
    system: CompiledText | None


@dataclass
class TemplateLoad:
    """What one load has read (file text by resolved path) and compiled (by source text)."""

    texts: dict[Path, str] = field(default_factory=dict)
    compiled: dict[str, CompiledText] = field(default_factory=dict)

    def attach(self, templates: Mapping[str, TemplateConfig], template_dir: Path | None) -> LoadedTemplates:
        """`templates` (files under `template_dir`) with what this load made for each (templates it did not check
        are built later)."""
        checked: dict[str, CheckedTemplate] = {}
        for name, template in templates.items():
            source = template.text if template.file is None else self.texts.get(template.file)
            body = self.compiled.get(source) if source is not None else None
            system = self.compiled.get(template.system) if template.system is not None else None
            if source is not None and body is not None and (system is not None or template.system is None):
                checked[name] = CheckedTemplate(source=source, body=body, system=system)
        return LoadedTemplates(templates, checked, template_dir)


class LoadedTemplates(Mapping[str, TemplateConfig]):
    """`Config.templates` as a load made it: the templates, plus what the load-time checks read and compiled."""

    __slots__ = ("_checked", "_templates", "template_dir")

    def __init__(
        self,
        templates: Mapping[str, TemplateConfig],
        checked: Mapping[str, CheckedTemplate],
        template_dir: Path | None,
    ) -> None:
        self._templates = dict(templates)
        self._checked = dict(checked)
        self.template_dir = template_dir

    def __getitem__(self, name: str) -> TemplateConfig:
        return self._templates[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._templates)

    def __len__(self) -> int:
        return len(self._templates)

    def __repr__(self) -> str:
        return f"LoadedTemplates({self._templates!r})"

    def checked(self, name: str) -> CheckedTemplate | None:
        return self._checked.get(name)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the plain templates: compiled code does not pickle, and is made again when built."""
        return (dict, (self._templates,))


_CURRENT: ContextVar[TemplateLoad | None] = ContextVar("template_load", default=None)


@contextmanager
def one_load() -> Iterator[TemplateLoad]:
    """Within it, each template file is read and each template text compiled once."""
    load = TemplateLoad()
    token = _CURRENT.set(load)
    try:
        yield load
    finally:
        _CURRENT.reset(token)


def once(store: Literal["texts", "compiled"], key: Any, make: Callable[[Any], Any]) -> Any:
    """`make(key)`, kept in the load in progress's `store` (`texts` or `compiled`) and reused for the same key;
    outside a load, made each time."""
    load = _CURRENT.get()
    if load is None:
        return make(key)
    kept = getattr(load, store)
    if key not in kept:
        kept[key] = make(key)
    return kept[key]


def checked_template(
    templates: Mapping[str, TemplateConfig], name: str, template_dir: Path | None
) -> CheckedTemplate | None:
    """What the load made for template `name`, or None when it must be read and compiled now (a config changed by
    hand: other templates, or another `template_dir`)."""
    if isinstance(templates, LoadedTemplates) and templates.template_dir == template_dir:
        return templates.checked(name)
    return None
