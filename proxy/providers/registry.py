"""Build a `Provider` from its `ProviderConfig`: the one place that maps a config `type` to an implementation.

| `type`              | provider                                                            |
|---------------------|---------------------------------------------------------------------|
| `openai`            | `HttpProvider(OpenAICodec.from_config(cfg), Transport(...))`           |
| `openai_compatible` | `HttpProvider(OpenAICompatibleCodec.from_config(cfg), Transport(...))` |
| `anthropic`         | `HttpProvider(AnthropicCodec.from_config(cfg), Transport(...))`        |
| `mock`              | `MockProvider(cfg)`                                                 |
| `python`            | your class, loaded by `proxy.providers.custom.load_custom_provider`  |

Building does no I/O: a transport opens its connection pool on first use, inside the running event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.config.model import ProviderConfig
from proxy.providers.anthropic import AnthropicCodec
from proxy.providers.base import Codec, Provider
from proxy.providers.custom import load_custom_provider
from proxy.providers.http_provider import HttpProvider
from proxy.providers.mock import MockProvider
from proxy.providers.openai import OpenAICodec
from proxy.providers.openai_compatible import OpenAICompatibleCodec
from proxy.providers.transport import Transport

__all__ = ["PROVIDER_TYPES", "build_provider"]

_CODECS: dict[str, Callable[[ProviderConfig], Codec]] = {
    "openai": OpenAICodec.from_config,
    "openai_compatible": OpenAICompatibleCodec.from_config,
    "anthropic": AnthropicCodec.from_config,
}

PROVIDER_TYPES: tuple[str, ...] = (*_CODECS, "mock", "python")


def build_provider(cfg: ProviderConfig, *, default_max_tokens: int | None = None) -> Provider:
    """The provider `cfg` describes. Raises `ValueError` for an unknown type or a custom class that cannot load.

    `default_max_tokens` (the config's `defaults.max_tokens`) is what Anthropic gets when a request sets none,
    since its API requires `max_tokens`.
    """
    if cfg.type in _CODECS:
        if cfg.type == "anthropic" and default_max_tokens is not None:
            codec: Codec = AnthropicCodec.from_config(cfg, default_max_tokens=default_max_tokens)
        else:
            codec = _CODECS[cfg.type](cfg)
        transport = Transport(cfg.name, cfg.timeout, max_connections=cfg.max_connections)
        return HttpProvider(codec, transport, type=cfg.type)
    if cfg.type == "mock":
        return MockProvider(cfg)
    if cfg.type == "python":
        return load_custom_provider(cfg)
    known = ", ".join(f"`{name}`" for name in PROVIDER_TYPES)
    raise ValueError(f"provider `{cfg.name}`: unknown type `{cfg.type}`; known types: {known}")
