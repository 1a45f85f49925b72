"""LLM providers: wire-protocol codecs, the upstream transport, and the providers the engine calls.

Public names (imported lazily, so `import proxy.providers.base` stays cheap and pulls in no HTTP client):

- `build_provider(cfg)`: the `Provider` a `ProviderConfig` describes (`registry.py`); `PROVIDER_TYPES`;
- `Provider`, `BoundModel`, `Codec`, `StreamDecoder`, `HttpCall`: the interfaces (`base.py`);
- `HttpProvider(codec, transport, type=...)` and `error_for_status(status)` (`http_provider.py`);
- `Transport(provider, timeout, max_connections)`, `RawReply`, `UpstreamStream` (`transport.py`, the only
  module that imports aiohttp);
- `MockProvider(cfg)` (`mock.py`); `load_custom_provider(cfg)` for `type: python` (`custom.py`).

Codecs live in `openai.py`, `openai_compatible.py` and `anthropic.py`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.providers.base import BoundModel, Codec, HttpCall, Provider, StreamDecoder
    from proxy.providers.custom import load_custom_provider
    from proxy.providers.http_provider import HttpProvider, error_for_status
    from proxy.providers.mock import MockProvider
    from proxy.providers.registry import PROVIDER_TYPES, build_provider
    from proxy.providers.transport import RawReply, Transport, UpstreamStream

_EXPORTS = {
    "BoundModel": "base",
    "Codec": "base",
    "HttpCall": "base",
    "Provider": "base",
    "StreamDecoder": "base",
    "load_custom_provider": "custom",
    "HttpProvider": "http_provider",
    "error_for_status": "http_provider",
    "MockProvider": "mock",
    "PROVIDER_TYPES": "registry",
    "build_provider": "registry",
    "RawReply": "transport",
    "Transport": "transport",
    "UpstreamStream": "transport",
}

__all__ = [
    "PROVIDER_TYPES",
    "BoundModel",
    "Codec",
    "HttpCall",
    "HttpProvider",
    "MockProvider",
    "Provider",
    "RawReply",
    "StreamDecoder",
    "Transport",
    "UpstreamStream",
    "build_provider",
    "error_for_status",
    "load_custom_provider",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module `proxy.providers` has no attribute `{name}`")
    value = getattr(importlib.import_module(f"proxy.providers.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
