"""Pytest fixtures for the fake upstreams: one fresh server per test, started in the test's event loop.

Registered through `tests/conftest.py` (`pytest_plugins = ["tests.fakes.fixtures"]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.openai_fake import OpenAIFake
from tests.fakes.server import FakeServer

FakeT = TypeVar("FakeT", bound=FakeServer)


@pytest.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    """A started OpenAI fake (persona `openai`); `base_url` ends in `/v1`."""
    async with OpenAIFake() as fake:
        yield fake


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[AnthropicFake]:
    """A started Anthropic fake; `base_url` is the bare origin (the SDK adds `/v1/messages`)."""
    async with AnthropicFake() as fake:
        yield fake


@pytest.fixture
async def start_fake() -> AsyncIterator[Callable[[FakeT], Awaitable[FakeT]]]:
    """Start any configured fake, stopped at teardown: `vllm = await start_fake(OpenAIFake("vllm"))`."""
    started: list[FakeServer] = []

    async def start(fake: FakeT) -> FakeT:
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in reversed(started):
        await fake.stop()
