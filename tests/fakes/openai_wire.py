"""Byte shapes of OpenAI Chat Completions and of the OpenAI-compatible local servers (PROTOCOLS.md §1.2-1.5, §2).

A persona describes one server flavour (`openai`, `ollama`, `vllm`, `llamacpp`); the functions here render a
`ModelReply` as a `chat.completion` body or as `chat.completion.chunk` SSE events, and an `ErrorReply` as that
server's error body. Pure functions, no I/O.
"""

from __future__ import annotations

import http
import random
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tests.fakes.replies import ErrorReply, ModelReply, ToolCall
from tests.fakes.server import arrange_frames, sse_frame

DONE_FRAME = b"data: [DONE]\n\n"
MALFORMED_FRAME = b"data: {not json\n\n"


@dataclass(frozen=True)
class OpenAIPersona:
    name: str
    system_fingerprint: str
    openai_headers: bool  # x-request-id, x-ratelimit-*, openai-* on every response
    requires_api_key: bool  # 401 when the Authorization header is missing
    separate_role_chunk: bool  # a first chunk with only the role (tool-only answers merge it into the first call)
    role_chunk_content: str | None  # `content` in that role chunk
    role_on_every_delta: bool
    whole_tool_calls: bool  # one chunk carries every call complete (id, name, full arguments)
    timings: bool  # llama.cpp's non-standard `timings` (last chunk, and non-streaming body)
    detailed_usage: bool  # prompt_tokens_details / completion_tokens_details
    owned_by: str


_COMPAT = {"openai_headers": False, "requires_api_key": False, "detailed_usage": False}
PERSONAS: dict[str, OpenAIPersona] = {
    "openai": OpenAIPersona(
        name="openai",
        system_fingerprint="fp_fake0a1b2c",
        openai_headers=True,
        requires_api_key=True,
        separate_role_chunk=True,
        role_chunk_content="",
        role_on_every_delta=False,
        whole_tool_calls=False,
        timings=False,
        detailed_usage=True,
        owned_by="openai",
    ),
    "ollama": OpenAIPersona(
        name="ollama",
        system_fingerprint="fp_ollama",
        separate_role_chunk=False,
        role_chunk_content="",
        role_on_every_delta=True,
        whole_tool_calls=True,
        timings=False,
        owned_by="library",
        **_COMPAT,
    ),
    "vllm": OpenAIPersona(
        name="vllm",
        system_fingerprint="",
        separate_role_chunk=True,
        role_chunk_content="",
        role_on_every_delta=False,
        whole_tool_calls=False,
        timings=False,
        owned_by="vllm",
        **_COMPAT,
    ),
    "llamacpp": OpenAIPersona(
        name="llamacpp",
        system_fingerprint="b6000-fake",
        separate_role_chunk=True,
        role_chunk_content=None,
        role_on_every_delta=False,
        whole_tool_calls=False,
        timings=True,
        owned_by="llamacpp",
        **_COMPAT,
    ),
}

# status -> (type, code, message) for the `openai` persona
_OPENAI_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1ms."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}
_LLAMACPP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_LLAMACPP_TYPES |= {501: "not_supported_error", 503: "unavailable_error"}


def _default_error(persona: OpenAIPersona, status: int) -> tuple[str, str | int | None, str]:
    phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Error"
    if persona.name == "openai":
        fallback = ("server_error" if status >= 500 else "invalid_request_error", None, phrase)
        return _OPENAI_ERROR_DEFAULTS.get(status, fallback)
    if persona.name == "ollama":
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return kind, None, phrase
    if persona.name == "vllm":
        kind = phrase.replace(" ", "").replace("-", "")
        return (kind if kind.endswith("Error") else kind + "Error"), status, phrase
    kind = _LLAMACPP_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return kind, status, phrase


def error_body(persona: OpenAIPersona, error: ErrorReply) -> dict[str, Any]:
    """The persona's JSON error body; ErrorReply fields left None get the persona's defaults for the status."""
    kind, code, message = _default_error(persona, error.status)
    kind = error.type or kind
    message = error.message or message
    code = error.code if error.code is not None else code
    if persona.name == "llamacpp":
        return {"error": {"code": code, "message": message, "type": kind}}
    return {"error": {"message": message, "type": kind, "param": error.param, "code": code}}


def completion_id(persona: OpenAIPersona) -> str:
    if persona.name == "ollama":
        return f"chatcmpl-{random.randrange(999)}"
    if persona.name == "openai":
        return "chatcmpl-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(29))
    return f"chatcmpl-{uuid.uuid4().hex}"


def tool_call_id(call: ToolCall, index: int) -> str:
    return call.id or f"call_fake_{index}"


def finish_reason(reply: ModelReply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def usage(persona: OpenAIPersona, reply: ModelReply) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    if persona.detailed_usage:
        body["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens, "audio_tokens": 0}
        body["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    elif reply.cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
    return body


def timings(reply: ModelReply) -> dict[str, Any]:
    return {
        "prompt_n": reply.input_tokens,
        "prompt_ms": 12.5,
        "prompt_per_token_ms": 12.5 / max(reply.input_tokens, 1),
        "prompt_per_second": 1000 * reply.input_tokens / 12.5,
        "predicted_n": reply.output_tokens,
        "predicted_ms": 40.0,
        "predicted_per_token_ms": 40.0 / max(reply.output_tokens, 1),
        "predicted_per_second": 1000 * reply.output_tokens / 40.0,
    }


def _envelope(persona: OpenAIPersona, ident: str, created: int, model: str, obj: str) -> dict[str, Any]:
    envelope: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": model}
    if persona.name == "openai":
        envelope["service_tier"] = "default"
    if persona.system_fingerprint:
        envelope["system_fingerprint"] = persona.system_fingerprint
    return envelope


def completion_body(persona: OpenAIPersona, reply: ModelReply, request_json: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming `chat.completion`."""
    model = reply.model or str(request_json.get("model", "gpt-4o-mini"))
    message: dict[str, Any] = {"role": "assistant", "content": reply.full_text if reply.text else None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": tool_call_id(call, i),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    elif message["content"] is None:
        message["content"] = ""
    if persona.name == "openai":
        message |= {"refusal": None, "annotations": []}
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(reply)}
    if persona.name == "vllm":
        choice["stop_reason"] = None
    body = _envelope(persona, completion_id(persona), int(time.time()), model, "chat.completion")
    body["choices"] = [choice]
    body["usage"] = usage(persona, reply)
    if persona.timings:
        body["timings"] = timings(reply)
    return body


def _tool_deltas(persona: OpenAIPersona, reply: ModelReply) -> list[dict[str, Any]]:
    if persona.whole_tool_calls:
        calls = [
            {
                "id": tool_call_id(call, i),
                "index": i,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for i, call in enumerate(reply.tool_calls)
        ]
        return [{"content": "", "tool_calls": calls}]
    deltas: list[dict[str, Any]] = []
    for i, call in enumerate(reply.tool_calls):
        head = {"index": i, "id": tool_call_id(call, i), "type": "function"}
        deltas.append({"tool_calls": [head | {"function": {"name": call.name, "arguments": ""}}]})
        deltas.extend(
            {"tool_calls": [{"index": i, "function": {"arguments": piece}}]} for piece in call.argument_fragments()
        )
    return deltas


def stream_events(persona: OpenAIPersona, reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
    """The `chat.completion.chunk` events of a streamed answer, without faults and without `[DONE]`."""
    model = reply.model or str(request_json.get("model", "gpt-4o-mini"))
    options = request_json.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    envelope = _envelope(persona, completion_id(persona), int(time.time()), model, "chat.completion.chunk")

    deltas: list[dict[str, Any]] = []
    if persona.separate_role_chunk:
        role: dict[str, Any] = {"role": "assistant", "content": persona.role_chunk_content}
        if persona.name == "openai":
            role["refusal"] = None
        deltas.append(role)
    deltas.extend({"content": piece} for piece in reply.text)
    tool_deltas = _tool_deltas(persona, reply)
    if persona.separate_role_chunk and not reply.text and tool_deltas:
        deltas[0] = {"role": "assistant", "content": None} | tool_deltas.pop(0)
        if persona.name == "openai":
            deltas[0]["refusal"] = None
    deltas.extend(tool_deltas)
    deltas.append({})
    if persona.role_on_every_delta:
        deltas = [{"role": "assistant", "content": ""} | delta for delta in deltas]

    chunks: list[dict[str, Any]] = []
    for position, delta in enumerate(deltas):
        last = position == len(deltas) - 1
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason(reply) if last else None}
        chunk = envelope | {"choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        chunks.append(chunk)
    if include_usage:
        chunks.append(envelope | {"choices": [], "usage": usage(persona, reply)})
    if persona.timings:
        chunks[-1]["timings"] = timings(reply)
    return [sse_frame(chunk) for chunk in chunks]


def stream_frames(persona: OpenAIPersona, reply: ModelReply, request_json: dict[str, Any]) -> list[bytes]:
    """The full SSE body of a streamed answer, with the reply's faults applied."""
    if reply.unknown_event_at is not None:
        raise ValueError("unknown_event_at is Anthropic-only: OpenAI streams have no named events")
    error = error_body(persona, ErrorReply(status=500, type=reply.error_type, message=reply.error_message))
    return arrange_frames(
        stream_events(persona, reply, request_json),
        [DONE_FRAME],
        reply,
        error_frame=sse_frame(error),
        malformed_frame=MALFORMED_FRAME,
    )
