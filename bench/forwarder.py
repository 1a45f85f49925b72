"""The Python floor: a minimal raw-ASGI forwarder (uvicorn + httptools + uvloop, one pooled aiohttp session).

    python bench/forwarder.py --upstream http://127.0.0.1:9100 --port 9200

Every request is sent to the same path on the upstream, and the answer's status, content type and body come back
as they arrive (streams are relayed chunk by chunk). No routing, parsing or validation: what is left is the cost
of an ASGI server plus an HTTP client, the least a Python proxy can spend per request.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn

KEEP = {b"content-type"}


class Forwarder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        url = self.upstream + scope["path"]
        async with self.session.request(scope["method"], url, data=body, headers=headers) as up:
            out = [(b"content-type", up.headers.get("content-type", "application/json").encode())]
            streaming = up.headers.get("content-type", "").startswith("text/event-stream")
            if not streaming:
                payload = await up.read()
                out.append((b"content-length", str(len(payload)).encode()))
                await send({"type": "http.response.start", "status": up.status, "headers": out})
                await send({"type": "http.response.body", "body": payload})
                return
            await send({"type": "http.response.start", "status": up.status, "headers": out})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    options = parser.parse_args()
    uvicorn.run(
        Forwarder(options.upstream),
        host=options.host,
        port=options.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
