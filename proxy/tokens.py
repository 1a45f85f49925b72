"""Offline token estimates for rate limiting and context checks, plus default context windows per model.

Why no tokenizer: `tiktoken` downloads its BPE files on first use (PROTOCOLS.md §5), which fails offline and
would block the event loop when it works; an exact count is also impossible for Anthropic models without a network
call. The estimate only sizes a tokens/min charge that is corrected with the real `usage` after the call, so a
cheap estimate with a ~10% error is the right trade. It runs on every request, so it does no per-character Python
work: the text is encoded to UTF-8 and mapped to one class byte per character with `bytes.translate` (C speed,
about 1 ms per 100,000 characters), then a handful of `bytes.count` calls give the features below.

`estimate_text_tokens` is a linear model over character classes, fitted against o200k_base (GPT-4o and later)
on English prose, Markdown, Python, JSON and 25 other languages; mean error ~9%:
- ASCII: 0.5 per word (letter run) + 0.14 per letter, 1.3 per number + 0.34 per digit (numbers split in threes),
  0.65 per punctuation run, 0.75 per newline, 0.15 per double space (indentation).
- Non-ASCII, by UTF-8 length: 2-byte characters (Cyrillic, Greek, accented Latin) 0.25 each and part of words;
  3-byte characters (CJK, kana, Hangul) 0.7 each; 4-byte characters (emoji) 1.8 each.
Older tokenizers (cl100k_base, GPT-4/3.5) need about 1.5x more for CJK and Cyrillic; English is the same.
Known misses: Polish, Hungarian, Turkish, Finnish text runs ~20% under; Russian ~15% over.

`estimate_prompt_tokens` adds the chat framing of the OpenAI cookbook (3 per message, 1 for a `name`, 3 to prime
the reply), tool definitions and `response_format` counted as their JSON text, and images at a fixed cost by
`detail` (OpenAI: 85 for `low`, 765 otherwise, i.e. a 1024x1024 image in 512-pixel tiles; the size is unknown here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from proxy.types import ChatRequest, ImagePart, Message

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
TOKENS_PER_TOOL = 8  # framing of one tool definition around its JSON
TOKENS_PER_TOOL_CALL = 3
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765


def _class_table() -> bytes:
    """Byte -> class: a letter, 0 digit, space, newline, . punctuation, b/c/e lead byte of a 2/3/4-byte character."""
    table = bytearray(b"." * 256)
    for byte in range(128):
        char = chr(byte)
        if char.isalpha():
            table[byte] = ord("a")
        elif char.isdigit():
            table[byte] = ord("0")
        elif char == "\n":
            table[byte] = ord("\n")
        elif char.isspace():
            table[byte] = ord(" ")
    table[0xC0:0xE0] = b"b" * 0x20
    table[0xE0:0xF0] = b"c" * 0x10
    table[0xF0:0x100] = b"e" * 0x10
    return bytes(table)


def _mask(keep: bytes, as_byte: bytes) -> bytes:
    """A second-pass table: class bytes in `keep` become `as_byte`, every other byte a space."""
    table = bytearray(b" " * 256)
    for byte in keep:
        table[byte] = as_byte[0]
    return bytes(table)


_CLASSES = _class_table()
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))  # deleted, so each character leaves exactly one class byte
_WORD_MASK = _mask(b"ab", b"a")
_NUMBER_MASK = _mask(b"0", b"0")
_PUNCTUATION_MASK = _mask(b".", b".")


def _runs(masked: bytes, mark: bytes) -> int:
    """How many runs of `mark` a masked class string has (each run starts at the start or after a space)."""
    return masked.count(b" " + mark) + (masked[:1] == mark)


def estimate_text_tokens(text: str) -> int:
    """Tokens in `text`, estimated offline (see the module docstring). 0 for "", at least 1 otherwise."""
    if not text:
        return 0
    classes = text.encode("utf-8", "surrogatepass").translate(_CLASSES, _CONTINUATION_BYTES)
    estimate = (
        0.5 * _runs(classes.translate(_WORD_MASK), b"a")
        + 0.14 * classes.count(b"a")
        + 1.3 * _runs(classes.translate(_NUMBER_MASK), b"0")
        + 0.34 * classes.count(b"0")
        + 0.65 * _runs(classes.translate(_PUNCTUATION_MASK), b".")
        + 0.75 * classes.count(b"\n")
        + 0.15 * classes.count(b"  ")
        + 0.25 * classes.count(b"b")
        + 0.7 * classes.count(b"c")
        + 1.8 * classes.count(b"e")
    )
    return max(1, int(estimate + 0.5))


def _plain(value: object) -> object:
    """`json.dumps` fallback: read-only mappings (as in frozen request types) as dicts, anything else as text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def _json_tokens(value: object) -> int:
    return estimate_text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_plain))


def _message_tokens(message: Message) -> int:
    tokens = TOKENS_PER_MESSAGE
    content = message.content
    if isinstance(content, str):
        tokens += estimate_text_tokens(content)
    elif content:
        for part in content:
            if isinstance(part, ImagePart):
                tokens += IMAGE_TOKENS_LOW if part.detail == "low" else IMAGE_TOKENS_DEFAULT
            else:
                tokens += estimate_text_tokens(part.text)
    if message.name:
        tokens += TOKENS_PER_NAME + estimate_text_tokens(message.name)
    for call in message.tool_calls:
        tokens += TOKENS_PER_TOOL_CALL + estimate_text_tokens(call.name) + estimate_text_tokens(call.arguments)
    if message.tool_call_id:
        tokens += estimate_text_tokens(message.tool_call_id)
    return tokens


def estimate_prompt_tokens(request: ChatRequest, model: str | None = None) -> int:
    """Input tokens of `request`: messages with chat framing, tool definitions, response format.

    `model` (the upstream model id) is accepted for an exact tokenizer later; the estimate does not depend on it.
    """
    tokens = REPLY_PRIMING_TOKENS + sum(_message_tokens(message) for message in request.messages)
    for tool in request.tools:
        spec: dict[str, Any] = {"name": tool.name}
        if tool.description:
            spec["description"] = tool.description
        if tool.parameters is not None:
            spec["parameters"] = tool.parameters
        tokens += TOKENS_PER_TOOL + _json_tokens(spec)
    if request.response_format is not None:
        tokens += _json_tokens(request.response_format)
    return tokens


def estimate_request_tokens(request: ChatRequest, model: str | None = None, *, default_output_tokens: int = 0) -> int:
    """The tokens/min charge before a call: the prompt plus `max_tokens` (or `default_output_tokens` if unset).

    The charge is corrected with the real usage when the call ends (`Lease.release`).
    """
    output = request.max_tokens if request.max_tokens is not None else default_output_tokens
    return estimate_prompt_tokens(request, model) + max(0, output)


# Default context windows (PROTOCOLS.md §5), always overridable by `context_window` in the config. Matched by
# prefix on the lower-cased model id without any `vendor/` path; the longest matching prefix wins.
_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,  # also gpt-4o-mini
    "gpt-4.1": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude-": 200_000,
    "claude-opus-5": 1_000_000,
    "llama3": 131_072,  # Llama 3.x (Ollama tags such as llama3.1:8b)
    "llama-3": 131_072,
    "meta-llama-3": 131_072,
}
_PREFIXES_LONGEST_FIRST = tuple(sorted(_CONTEXT_WINDOWS.items(), key=lambda item: -len(item[0])))


@lru_cache(maxsize=512)
def context_window_for(model: str) -> int | None:
    """The default context window of an upstream model id (`gpt-4o-2024-08-06`, `meta-llama/Llama-3.1-8B`), or None."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    for prefix, window in _PREFIXES_LONGEST_FIRST:
        if name.startswith(prefix):
            return window
    return None
