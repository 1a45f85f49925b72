"""Load `type: python` providers: your own `Provider` class, named by import path in the YAML.

```yaml
providers:
  reverser:
    type: python
    class: custom_provider:ReverseProvider   # `package.module:ClassName`, importable from the proxy's sys.path
    options: {uppercase: true}               # any keys; handed to the class as a plain dict
```

The contract a class must meet:
- it subclasses `proxy.providers.base.Provider` and implements `complete(request, model)` and
  `stream(request, model)` (an async generator), raising `proxy.errors.UpstreamError` subclasses on failure;
- it is constructed as `Class(name=<the provider's config name>, options=<dict of the YAML `options`>)` and keeps
  `name` as `self.name` (set for you if the constructor does not);
- it may override `validate_request` (reject what it cannot do) and `aclose` (release resources on reload).

Every mistake becomes a `ValueError` that names the provider and says what is wrong: a malformed path, a module
that cannot be imported, a missing attribute, a class that is not a `Provider`, or a constructor that raised.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any

from proxy.config.model import ProviderConfig
from proxy.providers.base import Provider

__all__ = ["load_custom_provider", "resolve_provider_class"]

_CLASS_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def resolve_provider_class(class_path: str | None, *, provider: str) -> type[Provider]:
    """Import `package.module:ClassName` and check it is a concrete `Provider` subclass."""
    where = f"provider `{provider}`"
    if not class_path or not _CLASS_PATH.match(class_path):
        raise ValueError(f"{where}: `class` must look like `package.module:ClassName`, got {class_path!r}")
    module_name, attribute = class_path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: cannot import module `{module_name}`: {exc}") from exc
    except SyntaxError as exc:
        raise ValueError(f"{where}: module `{module_name}` has a syntax error: {exc}") from exc
    except Exception as exc:  # the module's own code raised while importing
        raise ValueError(f"{where}: importing module `{module_name}` raised {type(exc).__name__}: {exc}") from exc
    try:
        cls = getattr(module, attribute)
    except AttributeError:
        names = [name for name in vars(module) if not name.startswith("_")]
        close = difflib.get_close_matches(attribute, names, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ValueError(f"{where}: module `{module_name}` has no attribute `{attribute}`{hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ValueError(f"{where}: `{class_path}` is not a subclass of `proxy.providers.base.Provider`")
    if inspect.isabstract(cls):
        missing = ", ".join(f"`{name}`" for name in sorted(cls.__abstractmethods__))
        raise ValueError(f"{where}: `{class_path}` does not implement {missing}")
    return cls


def load_custom_provider(cfg: ProviderConfig) -> Provider:
    """Build a `type: python` provider: `Class(name=cfg.name, options=dict(cfg.options))`."""
    cls = resolve_provider_class(cfg.class_path, provider=cfg.name)
    options: dict[str, Any] = dict(cfg.options)
    try:
        instance = cls(name=cfg.name, options=options)
    except Exception as exc:  # user code may raise anything: report it as this provider's config problem
        raise ValueError(f"provider `{cfg.name}`: `{cfg.class_path}` raised {type(exc).__name__}: {exc}") from exc
    if not getattr(instance, "name", None):
        instance.name = cfg.name
    if not getattr(instance, "type", None):
        instance.type = "python"
    return instance
