"""The normalized request, response and stream-chunk types every layer speaks.

Fronts translate their wire format (MCP tool arguments, OpenAI or Anthropic HTTP bodies) into a `ChatRequest`;
provider codecs translate a `ChatRequest` into their wire format and their replies back into `ChatResponse` /
`StreamChunk`. All are frozen dataclasses with slots: cheap to build, safe to share across tasks.

Conventions:
- `finish_reason` uses OpenAI's vocabulary: `stop`, `length`, `tool_calls`, `content_filter`.
- `Usage.input_tokens` includes cached input tokens (the OTel GenAI rule); `cached_input_tokens` and
  `cache_creation_input_tokens` are subsets of it. `reasoning_tokens` is a subset of `output_tokens`.
- `ToolCall.arguments` is the JSON text of the arguments, as OpenAI sends it.

Imports nothing from `proxy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image by URL: `https://...` or a `data:<media type>;base64,<data>` URI."""

    url: str
    detail: str | None = None  # auto | low | high (OpenAI); ignored by providers without it
    type: Literal["image"] = "image"


ContentPart = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role == "tool": the call this answers
    name: str | None = None

    def text(self) -> str:
        """The message's text parts joined (images and tool calls left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


@dataclass(frozen=True, slots=True)
class ToolDef:
    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None  # JSON Schema of the arguments
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None  # mode == "tool"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """One chat completion request, normalized. `model` is the name the client asked for (a config model)."""

    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: Mapping[str, Any] | None = None  # OpenAI's shape: {"type": "json_object" | "json_schema", ...}
    tools: tuple[ToolDef, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    user: str | None = None
    # Provider-specific parameters passed through untouched into the upstream body (e.g. `top_k`, `reasoning_effort`).
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kwargs: Any) -> ChatRequest:
        """A one-message chat (what `complete_text` sends)."""
        messages = (Message("system", system),) if system else ()
        return cls(messages=(*messages, Message("user", prompt)), **kwargs)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt of a request, for the response's history. `error_kind` is None for the one that answered.

    `target` is `provider/model` (config names); `delay` the backoff slept before the next attempt."""

    target: str
    attempt: int
    error_kind: str | None = None
    status: int | None = None
    message: str | None = None
    delay: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "attempt": self.attempt,
            "error_kind": self.error_kind,
            "status": self.status,
            "message": self.message,
            "delay": self.delay,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatResponse:
    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    provider: str = ""  # the provider's name in the config
    model: str = ""  # the model id that answered, as the upstream reported it
    id: str | None = None  # the upstream's response id
    request_id: str | None = None  # the upstream's request id header
    latency_ms: float = 0.0
    stop_sequence: str | None = None  # which stop string matched, where the provider says (Anthropic)
    # Set by the engine:
    route: str = ""  # the configured model name the request resolved to (e.g. `default`)
    cached: bool = False  # served from the response cache (no upstream call was made)
    cost: float = 0.0  # USD, from the answering provider's `pricing` (0 when unpriced or cached)
    attempts: tuple[Attempt, ...] = ()  # every upstream attempt in order, the answering one last
    config_version: str = ""  # the version (content hash) of the config the request was served on


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; `index` orders calls, `id`/`name` come with the first fragment."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One decoded piece of a stream. A chunk with `text` or `tool_calls` is content (the commit point)."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    id: str | None = None
    model: str | None = None

    @property
    def is_content(self) -> bool:
        return bool(self.text or self.tool_calls)
