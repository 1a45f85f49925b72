"""The benchmark's own HTTP/1.1 client: keep-alive connections on raw asyncio streams, timing each exchange.

    async with Connection("127.0.0.1", 9300) as conn:
        result = await conn.request("/v1/chat/completions", body, headers, marker=b"data:")
        result.status, result.first_event, result.total        # seconds from sending the request

`first_event` is when `marker` first showed up in the body (a stream's first event), else when the first body
byte did. `closed_loop(...)` is a wrk stand-in (used by `--client python` and the smoke test): `concurrency`
connections each sending the next request as soon as the last one is answered, for `duration` seconds.
`streams(...)` runs `count` requests over `concurrency` keep-alive connections.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from types import TracebackType


@dataclass(slots=True)
class Result:
    status: int
    first_event: float
    total: float
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection; answers with `content-length` or chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, *, marker: bytes | None = None
    ) -> Result:
        assert self.reader is not None and self.writer is not None
        lines = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        start = time.perf_counter()
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        first_event = 0.0
        parts: list[bytes] = []

        def seen(data: bytes) -> None:
            nonlocal first_event
            parts.append(data)
            if not first_event and (marker is None or marker in data or marker in b"".join(parts[-2:])):
                first_event = time.perf_counter() - start

        if fields.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                seen(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
        else:
            length = int(fields.get(b"content-length", b"0"))
            if length:
                seen(await self.reader.readexactly(length))
        total = time.perf_counter() - start
        return Result(status, first_event or total, total, b"".join(parts))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


async def closed_loop(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str], *, concurrency: int, duration: float
) -> dict[str, float]:
    """wrk's measurement in Python: requests, seconds, errors and latency percentiles in microseconds."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        async with Connection(host, port) as conn:
            while time.perf_counter() < stop_at:
                result = await conn.request(path, body, headers)
                if result.status >= 300:
                    errors += 1
                latencies.append(result.total)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    us = [v * 1e6 for v in latencies]
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "errors": 0,
        "status_errors": errors,
        **{f"p{q}": percentile(us, q) for q in (50, 90, 99)},
    }


async def streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    count: int,
    concurrency: int,
    marker: bytes,
) -> list[Result]:
    """`count` streamed requests over `concurrency` keep-alive connections, each sending its next request when its
    last stream has ended."""
    results: list[Result] = []
    left = count

    async def worker() -> None:
        nonlocal left
        async with Connection(host, port) as conn:
            while left > 0:
                left -= 1
                results.append(await conn.request(path, body, headers, marker=marker))

    await asyncio.gather(*(worker() for _ in range(min(count, concurrency))))
    return results
