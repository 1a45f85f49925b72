"""A fast fake OpenAI-style upstream for the benchmark: raw asyncio (uvloop when installed), HTTP/1.1 keep-alive.

    python bench/upstream.py --port 9100 [--ttft-ms 10] [--chunk-delay-ms 2] [--chunks 8]

Any `POST` answers a chat completion; a body with `"stream": true` gets a `text/event-stream` answer instead: the
headers and the first event after `--ttft-ms`, then one content event every `--chunk-delay-ms` (`--chunks` in all),
the finish event, a usage event and `data: [DONE]`, chunked. Any `GET` answers a one-model list (`/v1/models`).
It is also an OTLP/HTTP receiver: `POST /v1/traces` (and `/v1/metrics`) get a 200 and are counted, and
`GET /stats` answers the count as `{"otlp_posts": N}`.
It parses just enough HTTP (request line, `content-length`) to stay far cheaper than anything measured through it,
so the direct measurement is the floor. Prints `listening <port>` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re

STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')
WORDS = ["Hello", " from", " the", " fake", " upstream", ",", " one", " token", " at", " a", " time", "."]

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream. It answers at once."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23},
    },
    separators=(",", ":"),
).encode()
STATS = {"otlp_posts": 0}
MODELS = b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"bench"}]}'


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\nx-request-id: bench\r\n\r\n" + body
    )  # fmt: skip


def _chunk(payload: dict) -> bytes:
    event = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def stream_events(chunks: int) -> list[bytes]:
    """The chunked-encoding frames of one streamed answer: `chunks` content events, finish, usage, [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini"}
    frames = []
    for i in range(chunks):
        delta = {"content": WORDS[i % len(WORDS)]}
        if i == 0:
            delta = {"role": "assistant", **delta}
        frames.append(_chunk({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
    tail = _chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    tail += _chunk({**base, "choices": [], "usage": usage})
    done = b"data: [DONE]\n\n"
    tail += f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n"
    frames.append(tail)
    return frames


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\n\r\n"
)


class Upstream(asyncio.Protocol):
    """One connection: requests are parsed from the buffer and answered in order."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written: later pipelined requests wait
        self.writing: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get /stats"):
                self.transport.write(_response(json.dumps(STATS).encode()))
            elif head.startswith(b"get"):
                self.transport.write(_response(MODELS))
            elif head.startswith(b"post /v1/traces") or head.startswith(b"post /v1/metrics"):
                STATS["otlp_posts"] += 1  # an OTLP/HTTP export: any 200 will do
                self.transport.write(_response(b"{}"))
            elif STREAM_FLAG.search(body):
                self.busy = True
                self.writing = asyncio.ensure_future(self._stream())
                return
            else:
                self.transport.write(_response(COMPLETION))

    async def _stream(self) -> None:
        options = self.options
        frames = stream_events(options.chunks)
        assert self.transport is not None
        try:
            await asyncio.sleep(options.ttft_ms / 1000)
            self.transport.write(STREAM_HEAD + frames[0])
            for frame in frames[1:-1]:
                await asyncio.sleep(options.chunk_delay_ms / 1000)
                if self.transport.is_closing():
                    return
                self.transport.write(frame)
            await asyncio.sleep(options.chunk_delay_ms / 1000)
            if not self.transport.is_closing():
                self.transport.write(frames[-1])
        finally:
            self.busy = False
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def main(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(options), options.host, options.port, backlog=4096)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttft-ms", type=float, default=10.0, help="time to the first streamed event")
    parser.add_argument("--chunk-delay-ms", type=float, default=2.0, help="delay between streamed events")
    parser.add_argument("--chunks", type=int, default=8, help="content events per streamed answer")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(main(parse_args()))
