"""Fake LLM upstream servers for tests: real aiohttp servers on 127.0.0.1 speaking OpenAI Chat Completions (with
ollama / vllm / llamacpp personas) and Anthropic Messages, scriptable per test and recording every request.

    async def test_something(openai_fake):
        openai_fake.script(openai_text("Hi", " there"), openai_error(429, retry_after_ms=1))
        ...  # point a client at openai_fake.base_url
        assert openai_fake.requests[0].json["model"] == "gpt-4o"

See replies.py for what a scripted reply can do, fixtures.py for the pytest fixtures.
"""

from tests.fakes.anthropic_fake import (
    DEFAULT_ANTHROPIC_TEXT,
    AnthropicFake,
    anthropic_error,
    anthropic_text,
    anthropic_tool_use,
)
from tests.fakes.openai_fake import DEFAULT_OPENAI_TEXT, OpenAIFake, openai_error, openai_text, openai_tool_call
from tests.fakes.replies import ErrorReply, ModelReply, Reply, ToolCall, html_error, text_reply, tool_reply
from tests.fakes.server import FakeServer, FakeServerThread, RecordedRequest

__all__ = [
    "DEFAULT_ANTHROPIC_TEXT",
    "DEFAULT_OPENAI_TEXT",
    "AnthropicFake",
    "ErrorReply",
    "FakeServer",
    "FakeServerThread",
    "ModelReply",
    "OpenAIFake",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "anthropic_error",
    "anthropic_text",
    "anthropic_tool_use",
    "html_error",
    "openai_error",
    "openai_text",
    "openai_tool_call",
    "text_reply",
    "tool_reply",
]
