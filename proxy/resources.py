"""Where the files that ship with the proxy live: the JSON Schema, the default config and its templates.

In a source checkout (or an editable install) they are the top-level `schemas/`, `config/` and `templates/`
directories; in an installed wheel they are copies under `proxy/_data/` with the same relative layout.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def data_root() -> Path:
    """The directory holding `schemas/`, `config/` and `templates/`."""
    checkout = _PACKAGE_DIR.parent
    if (checkout / "schemas" / "config.schema.json").is_file():
        return checkout
    return _PACKAGE_DIR / "_data"


def schema_path() -> Path:
    return data_root() / "schemas" / "config.schema.json"


def default_config_path() -> Path:
    return data_root() / "config" / "proxy.yaml"


def schema_text() -> str:
    return schema_path().read_text(encoding="utf-8")


@functools.cache
def config_schema() -> dict[str, Any]:
    """The config JSON Schema, parsed once."""
    return json.loads(schema_text())
