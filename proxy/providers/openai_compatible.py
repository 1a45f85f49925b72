"""The codec for OpenAI-compatible local servers (Ollama, vLLM, llama.cpp `llama-server`, LM Studio).

Same wire format as `OpenAICodec`, with the differences of PROTOCOLS.md section 2:
- `base_url` is required (there is no default server); the API key is optional (no `Authorization` without one).
- Always `max_tokens`: Ollama ignores `max_completion_tokens`, whatever the model is called.
- Usage that is absent or all zero (servers that do not count) is None, meaning "unknown", not "free".
- `finish_reason: stop` on a reply with tool calls (older Ollama) is reported as `tool_calls`.
- Error bodies in every shape they use (integer `code`, flat old-vLLM bodies, `{"error": "text"}`,
  FastAPI `{"detail": ...}`), tool calls arriving whole in one chunk without an `index`, `timings` and the
  missing `x-request-id` are handled by the shared decoding in `proxy.providers.openai`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from proxy.providers.openai import OpenAICodec
from proxy.types import FinishReason, Usage

if TYPE_CHECKING:
    from proxy.config.model import ProviderConfig


class OpenAICompatibleCodec(OpenAICodec):
    """Codec for a self-hosted `/v1/chat/completions` server at `base_url` (e.g. `http://localhost:11434/v1`)."""

    def __init__(
        self,
        provider: str,
        *,
        base_url: str,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url:
            raise ValueError(f"provider `{provider}` (openai_compatible) needs a base_url")
        super().__init__(
            provider, base_url=base_url, api_key=api_key, organization=organization, project=project, headers=headers
        )

    @classmethod
    def from_config(cls, cfg: ProviderConfig) -> OpenAICompatibleCodec:
        if not cfg.base_url:
            raise ValueError(
                f"provider `{cfg.name}` (type openai_compatible) needs a base_url, "
                "e.g. http://localhost:11434/v1 (Ollama) or http://localhost:8000/v1 (vLLM)"
            )
        codec = super().from_config(cfg)
        assert isinstance(codec, OpenAICompatibleCodec)
        return codec

    def max_tokens_field(self, model: str) -> str:
        return "max_tokens"

    def normalize_finish_reason(self, raw: object, *, has_tool_calls: bool) -> FinishReason | None:
        reason = super().normalize_finish_reason(raw, has_tool_calls=has_tool_calls)
        return "tool_calls" if reason == "stop" and has_tool_calls else reason

    def decode_usage(self, raw: object) -> Usage | None:
        usage = super().decode_usage(raw)
        if usage is None or usage == Usage():
            return None
        return usage
