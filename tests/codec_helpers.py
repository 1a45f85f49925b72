"""Fixture loaders and comparers for the codec tests (tests/test_codec_*.py), over tests/fixtures/<provider>/.

    check_golden(FIXTURES_DIR / "openai" / "encode" / "text.body.json", body)   # UPDATE_GOLDEN=1 rewrites it
    outcome = run_stream(codec, one_byte_at_a_time(transcript))

The JSON forms (`request_from_json`, `load_response`, `error_as_json`, `as_json`) are the ones the fixture files
use; see the docstring of tests/test_codec_openai.py for the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from proxy.errors import StreamInterrupted, UpstreamError
from proxy.providers.base import Codec
from proxy.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDef,
)

FIXTURES_DIR = Path(__file__).parent / "fixtures"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


def fixture_bytes(provider: str, name: str) -> bytes:
    """The raw bytes of tests/fixtures/<provider>/<name> (an SSE transcript, a reply body)."""
    return (FIXTURES_DIR / provider / name).read_bytes()


def fixture_json(provider: str, name: str) -> Any:
    """The parsed JSON of tests/fixtures/<provider>/<name>."""
    return json.loads((FIXTURES_DIR / provider / name).read_text("utf-8"))


def request_from_json(data: dict[str, Any]) -> ChatRequest:
    """Build a normalized `ChatRequest` from the JSON form used by the encode fixtures."""

    def content(raw: Any) -> Any:
        if not isinstance(raw, list):
            return raw
        return tuple(TextPart(p["text"]) if p["type"] == "text" else ImagePart(p["url"], p.get("detail")) for p in raw)

    messages = tuple(
        Message(
            m["role"],
            content(m.get("content")),
            tool_calls=tuple(ToolCall(**c) for c in m.get("tool_calls", ())),
            tool_call_id=m.get("tool_call_id"),
            name=m.get("name"),
        )
        for m in data["messages"]
    )
    fields = {k: v for k, v in data.items() if k not in {"messages", "tools", "tool_choice", "stop", "extra"}}
    return ChatRequest(
        messages=messages,
        tools=tuple(ToolDef(**t) for t in data.get("tools", ())),
        tool_choice=ToolChoice(**data["tool_choice"]) if "tool_choice" in data else None,
        stop=tuple(data.get("stop", ())),
        extra=MappingProxyType(data.get("extra", {})),  # read-only: encoding must not need to mutate it
        **fields,
    )


def load_response(path: Path) -> tuple[int, dict[str, str], bytes]:
    raw = json.loads(path.read_text())
    body = raw["body_text"].encode() if "body_text" in raw else json.dumps(raw["body"]).encode()
    return raw["status"], raw["headers"], body


def error_as_json(error: UpstreamError) -> dict[str, Any]:
    described = {
        "class": type(error).__name__,
        "kind": error.kind.value,
        "message": error.message,
        "status": error.status,
        "error_type": error.error_type,
        "code": error.code,
        "request_id": error.request_id,
        "retry_after": error.retry_after,
    }
    if isinstance(error, StreamInterrupted):
        described["partial_text"] = error.partial_text
    return described


def as_json(value: ChatResponse | StreamChunk) -> dict[str, Any]:
    """A dataclass as plain JSON data (tuples become lists), to compare with golden files."""
    return json.loads(json.dumps(dataclasses.asdict(value)))


def run_stream(codec: Codec, pieces: Iterable[bytes]) -> dict[str, Any]:
    """Feed `pieces` to a fresh decoder, then close it; the chunks, `done` and the error raised (if any)."""
    decoder = codec.stream_decoder()
    chunks: list[StreamChunk] = []
    error = None
    try:
        for piece in pieces:
            chunks += decoder.feed(piece)
        chunks += decoder.close()
    except UpstreamError as exc:
        error = error_as_json(exc)
    return {"chunks": [as_json(c) for c in chunks], "done": decoder.done, "error": error}


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def check_golden(path: Path, actual: Any) -> None:
    """`actual` equals the JSON golden file at `path` (rewritten from `actual` first when UPDATE_GOLDEN=1)."""
    if UPDATE_GOLDEN:
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", "utf-8")
    assert path.exists(), f"missing golden file {path} (run with UPDATE_GOLDEN=1 and review it)"
    assert actual == json.loads(path.read_text("utf-8"))


def case_names(directory: Path, suffix: str) -> list[str]:
    return sorted(p.name.removesuffix(suffix) for p in directory.glob(f"*{suffix}"))


def decode_outcome(codec: Codec, status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    try:
        return {"response": as_json(codec.decode(status, headers, body))}
    except UpstreamError as exc:
        return {"error": error_as_json(exc)}


def sse_data_lines(transcript: bytes) -> list[str]:
    lines = transcript.decode().replace("\r\n", "\n").split("\n")
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def reassemble(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The tool calls of `run_stream`'s chunks, by index: ids, names and arguments joined."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk["tool_calls"]:
            call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += delta["id"] or ""
            call["name"] += delta["name"] or ""
            call["arguments"] += delta["arguments"]
    return calls
