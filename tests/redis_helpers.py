"""Helpers for the tests against a real Redis (tests/test_redis_*.py).

- `needs_redis`: skips a test, saying why, when no Redis answers at `REDIS_URL` (default 127.0.0.1:6379, or
  `$LLM_PROXY_TEST_REDIS_URL`);
- `redis_prefix` (a fixture): a key prefix unique to the test; every key under it is deleted afterwards;
- `state_section(prefix, ...)`: the config's `state:` mapping for Redis with that prefix;
- `TcpProxy`: a TCP forwarder in front of Redis that a test can cut (`stop()`: listener and every connection
  closed, so Redis looks killed), make unresponsive (`blackhole()`: connections accepted, nothing answered) and
  bring back (`start()`), on the same port;
- `PidProvider` (`type: python`, `class: tests.redis_helpers:PidProvider`): answers with the id of the process
  that served the call, so a multi-process test can tell its workers apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from proxy.providers.base import Provider
from proxy.types import ChatRequest, ChatResponse, StreamChunk, Usage

REDIS_URL = os.environ.get("LLM_PROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable() -> bool:
    address = urlparse(REDIS_URL)
    try:
        with socket.create_connection((address.hostname or "127.0.0.1", address.port or 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not _reachable(), reason=f"no Redis answers at {REDIS_URL} (start one, or set LLM_PROXY_TEST_REDIS_URL)"
)


async def delete_keys(prefix: str) -> int:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if names:
            await client.delete(*names)
        return len(names)
    finally:
        await client.aclose()


async def keys_under(prefix: str) -> list[str]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return sorted([name async for name in client.scan_iter(match=f"{prefix}:*", count=1000)])
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"llm-proxy-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_keys(prefix)


def state_section(prefix: str, url: str = REDIS_URL, **settings: Any) -> dict[str, Any]:
    return {"backend": "redis", "url": url, "key_prefix": prefix, **settings}


class TcpProxy:
    """A TCP forwarder to Redis on a port of its own; see the module docstring."""

    def __init__(self, target: str = REDIS_URL) -> None:
        address = urlparse(target)
        self.target = (address.hostname or "127.0.0.1", address.port or 6379)
        self.database = address.path or "/0"
        self.port = 0
        self.connections = 0
        self.held_bytes = 0  # what clients sent while blackholed (a command that is waiting for its answer)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._silent = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.database}"

    async def start(self) -> None:
        """Listen (again, on the same port once it had one) and forward."""
        self._silent = False
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def blackhole(self) -> None:
        """Keep accepting, forward nothing: every Redis call times out."""
        await self._close_connections()
        self._silent = True

    async def stop(self) -> None:
        """Refuse connections and cut the open ones: Redis looks dead."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_writer = None
        try:
            if self._silent:  # hold the connection, answer nothing
                while data := await reader.read(65536):
                    self.held_bytes += len(data)
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_writer)
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            for end in (writer, upstream_writer):
                if end is not None:
                    end.close()
                    self._writers.discard(end)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


class PidProvider(Provider):
    """Answers `pid <process id>`; see the module docstring."""

    type = "python"

    def __init__(self, *, name: str, options: Mapping[str, Any]) -> None:
        self.name = name

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        text = f"pid {os.getpid()}"
        return ChatResponse(text=text, finish_reason="stop", usage=Usage(1, 2), provider=self.name, model=model)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text=f"pid {os.getpid()}")
        yield StreamChunk(finish_reason="stop", usage=Usage(1, 2))
