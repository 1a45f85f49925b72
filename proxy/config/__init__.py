"""Config loading and the typed config model: `load_config(path)` returns a frozen `Config` or raises
`proxy.errors.ConfigError` listing every problem."""

from proxy.config.load import (
    LoadResult,
    check_config_file,
    check_config_text,
    load_config,
    load_config_text,
)
from proxy.config.model import Config, Secret

__all__ = [
    "Config",
    "LoadResult",
    "Secret",
    "check_config_file",
    "check_config_text",
    "load_config",
    "load_config_text",
]
