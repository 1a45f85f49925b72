"""An OpenAI Chat Completions request body -> a validated `ChatRequest` (the inbound half of the OpenAI front).

`parse_chat_request(body)` checks every field it uses and raises `BodyError(400, message, param=path)` naming the
field path (`messages[2].content[0].type`) for the first problem; it never raises anything else. Decisions:
- `model` and `messages` are required (as in the API); optional fields may be `null` (= not given).
- roles: `system`, `developer` (becomes `system`), `user`, `assistant`, `tool`; content parts: `text` and
  `image_url` (http(s) or `data:` URLs) for users, `text` (and `refusal`, read as text) for the assistant, `text`
  only for system and tool messages.
- `max_completion_tokens` wins over `max_tokens` when both are given.
- refused with a 400 naming the field, because the answer could not be what the client asked for: `n` other than 1,
  `logprobs: true`, `top_logprobs`, `audio`, `modalities` other than `["text"]`, the deprecated `functions` /
  `function_call`, non-function tools, `allowed_tools` tool choices.
- passed through to the upstream body (`ChatRequest.extra`), type-checked: `PASSTHROUGH`. They reach whichever
  provider answers, so an OpenAI-only parameter sent to a model that falls back to Anthropic is refused there.
- any other field (`store`, `metadata`, `stream_options.include_obfuscation`, ...) is accepted and ignored, so newer
  SDKs keep working.
- no string anywhere may hold a lone UTF-16 surrogate (`"\\ud800"`): it is not text and could not be sent on; no
  number anywhere may be `NaN` or infinite (`Infinity`, `1e999`): JSON has neither, and upstreams refuse them.
- free-form JSON sent on as it is (`tools[].function.parameters`, `response_format`) nests at most
  `fields.MAX_JSON_DEPTH` levels; `messages` holds at most `fields.MAX_MESSAGES`; `model` is at most
  `fields.MAX_MODEL_NAME` characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.fronts.fields import MAX_MESSAGES, MAX_TOKENS, Fields
from proxy.fronts.http_common import BodyError
from proxy.types import ChatRequest, ContentPart, ImagePart, Message, TextPart, ToolCall, ToolChoice, ToolDef

MAX_STOP_SEQUENCES = 4
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IMAGE_DETAILS = ("auto", "low", "high")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
FIELDS = Fields(error=lambda path, problem: BodyError(400, f"`{path}`: {problem}", param=path))
_REFUSED = {
    "functions": "the deprecated `functions` are not supported; use `tools`",
    "function_call": "the deprecated `function_call` is not supported; use `tool_choice`",
    "audio": "audio output is not supported by this proxy",
    "top_logprobs": "log probabilities are not supported by this proxy",
}


@dataclass(frozen=True, slots=True)
class InboundChat:
    """A validated request: the normalized `ChatRequest` and the streaming options the response needs."""

    request: ChatRequest
    include_usage: bool = False


# --- messages -------------------------------------------------------------------------------------------------


def _content(raw: object, path: str, allowed: tuple[str, ...]) -> str | tuple[ContentPart, ...]:
    if isinstance(raw, str):
        return raw
    parts: list[ContentPart] = []
    for index, item in enumerate(FIELDS.array(raw, path, non_empty=True)):
        where = f"{path}[{index}]"
        part = FIELDS.object(item, where)
        kind = FIELDS.one_of(part.get("type"), f"{where}.type", allowed)
        if kind == "text":
            parts.append(TextPart(FIELDS.string(part.get("text"), f"{where}.text")))
        elif kind == "refusal":
            parts.append(TextPart(FIELDS.string(part.get("refusal"), f"{where}.refusal")))
        else:
            parts.append(_image(part.get("image_url"), f"{where}.image_url"))
    return tuple(parts)


def _image(raw: object, path: str) -> ImagePart:
    image = FIELDS.object(raw, path)
    url = FIELDS.string(image.get("url"), f"{path}.url", non_empty=True)
    if not url.startswith(("http://", "https://", "data:")):
        FIELDS.fail(f"{path}.url", "must be an http(s) URL or a `data:` URI")
    detail = image.get("detail")
    return ImagePart(url, FIELDS.one_of(detail, f"{path}.detail", _IMAGE_DETAILS) if detail is not None else None)


def _tool_calls(raw: object, path: str) -> tuple[ToolCall, ...]:
    calls = []
    for index, item in enumerate(FIELDS.array(raw, path)):
        where = f"{path}[{index}]"
        call = FIELDS.object(item, where)
        FIELDS.one_of(call.get("type", "function"), f"{where}.type", ("function",))
        function = FIELDS.object(call.get("function"), f"{where}.function")
        calls.append(
            ToolCall(
                id=FIELDS.string(call.get("id"), f"{where}.id", non_empty=True),
                name=FIELDS.string(function.get("name"), f"{where}.function.name", non_empty=True),
                arguments=FIELDS.string(function.get("arguments"), f"{where}.function.arguments"),
            )
        )
    return tuple(calls)


def _message(raw: object, path: str) -> Message:
    message = FIELDS.object(raw, path)
    role = FIELDS.one_of(message.get("role"), f"{path}.role", ("system", "developer", "user", "assistant", "tool"))
    name = message.get("name")
    name = FIELDS.string(name, f"{path}.name") if name is not None else None
    content = message.get("content")
    if role == "assistant":
        if message.get("function_call") is not None:
            FIELDS.fail(f"{path}.function_call", _REFUSED["function_call"])
        raw_calls = message.get("tool_calls")
        calls = _tool_calls(raw_calls, f"{path}.tool_calls") if raw_calls is not None else ()
        if content is None and not calls:
            FIELDS.fail(f"{path}.content", "is required unless the message has `tool_calls`")
        text = _content(content, f"{path}.content", ("text", "refusal")) if content is not None else None
        return Message("assistant", text, tool_calls=calls, name=name)
    if content is None:
        FIELDS.fail(f"{path}.content", "is required")
    if role == "user":
        return Message("user", _content(content, f"{path}.content", ("text", "image_url")), name=name)
    text = _content(content, f"{path}.content", ("text",))
    if role == "tool":
        tool_call_id = FIELDS.string(message.get("tool_call_id"), f"{path}.tool_call_id", non_empty=True)
        return Message("tool", text, tool_call_id=tool_call_id)
    return Message("system", text, name=name)


# --- tools ----------------------------------------------------------------------------------------------------


def _tools(raw: object) -> tuple[ToolDef, ...]:
    tools = []
    for index, item in enumerate(FIELDS.array(raw, "tools")):
        where = f"tools[{index}]"
        tool = FIELDS.object(item, where)
        FIELDS.one_of(tool.get("type"), f"{where}.type", ("function",))
        function = FIELDS.object(tool.get("function"), f"{where}.function")
        name = FIELDS.string(function.get("name"), f"{where}.function.name")
        if not _TOOL_NAME.fullmatch(name):
            FIELDS.fail(f"{where}.function.name", "must be 1-64 letters, digits, `_` or `-`")
        tools.append(
            ToolDef(
                name=name,
                description=_optional(function, "description", FIELDS.string, f"{where}.function."),
                parameters=_optional(function, "parameters", _json_object, f"{where}.function."),
                strict=_optional(function, "strict", FIELDS.boolean, f"{where}.function."),
            )
        )
    return tuple(tools)


def _tool_choice(raw: object, tools: tuple[ToolDef, ...]) -> ToolChoice:
    if isinstance(raw, str):
        return ToolChoice(FIELDS.one_of(raw, "tool_choice", ("none", "auto", "required")))  # type: ignore[arg-type]
    choice = FIELDS.object(raw, "tool_choice")
    FIELDS.one_of(choice.get("type"), "tool_choice.type", ("function",))
    name = FIELDS.string(
        FIELDS.object(choice.get("function"), "tool_choice.function").get("name"), "tool_choice.function.name"
    )
    if name not in {tool.name for tool in tools}:
        FIELDS.fail("tool_choice.function.name", f"names `{name[:100]}`, which is not one of the `tools`")
    return ToolChoice("tool", name)


def _response_format(raw: object) -> Mapping[str, Any] | None:
    value = _json_object(raw, "response_format")  # sent on as it is
    kind = FIELDS.one_of(value.get("type"), "response_format.type", _RESPONSE_FORMATS)
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = FIELDS.object(value.get("json_schema"), "response_format.json_schema")
        FIELDS.string(schema.get("name"), "response_format.json_schema.name", non_empty=True)
        _optional(schema, "schema", FIELDS.object, "response_format.json_schema.")
    return value


def _stop(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        return (raw,)
    items = FIELDS.array(raw, "stop")
    if len(items) > MAX_STOP_SEQUENCES:
        FIELDS.fail("stop", f"may hold at most {MAX_STOP_SEQUENCES} sequences, not {len(items)}")
    return tuple(FIELDS.string(item, f"stop[{index}]") for index, item in enumerate(items))


def _logit_bias(value: object, path: str) -> dict[str, float]:
    return {key: FIELDS.number(bias, f"{path}.{key}", -100, 100) for key, bias in FIELDS.object(value, path).items()}


# Provider parameters passed through into the upstream body: name -> check (returns the value to send).
PASSTHROUGH: Mapping[str, Callable[[object, str], object]] = {
    "frequency_penalty": lambda v, p: FIELDS.number(v, p, -2, 2),
    "presence_penalty": lambda v, p: FIELDS.number(v, p, -2, 2),
    "logit_bias": _logit_bias,
    "reasoning_effort": lambda v, p: FIELDS.string(v, p, non_empty=True),
    "verbosity": lambda v, p: FIELDS.string(v, p, non_empty=True),
    "service_tier": lambda v, p: FIELDS.string(v, p, non_empty=True),
    "prompt_cache_key": lambda v, p: FIELDS.string(v, p),
    "safety_identifier": lambda v, p: FIELDS.string(v, p),
    # sampling extras of OpenAI-compatible servers (vLLM, Ollama, llama.cpp) and Anthropic (`top_k`)
    "top_k": lambda v, p: FIELDS.integer(v, p, 0, MAX_TOKENS),
    "min_p": lambda v, p: FIELDS.number(v, p, 0, 1),
    "repetition_penalty": lambda v, p: FIELDS.number(v, p, 0, 10),
}


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and FIELDS.integer(n, "n") != 1:
        FIELDS.fail("n", "only `n: 1` is supported (one choice per request)")
    for key, problem in _REFUSED.items():
        if body.get(key) is not None:
            FIELDS.fail(key, problem)
    logprobs = body.get("logprobs")
    if logprobs is not None and FIELDS.boolean(logprobs, "logprobs"):
        FIELDS.fail("logprobs", _REFUSED["top_logprobs"])
    modalities = body.get("modalities")
    if modalities is not None and [FIELDS.string(m, "modalities") for m in FIELDS.array(modalities, "modalities")] != [
        "text"
    ]:
        FIELDS.fail("modalities", 'only `["text"]` is supported')


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """`max_completion_tokens`, else `max_tokens`; both are checked when both are given."""
    limits = [
        FIELDS.integer(body[key], key, 1, MAX_TOKENS)
        for key in ("max_completion_tokens", "max_tokens")
        if body.get(key) is not None
    ]
    return limits[0] if limits else None


def _json_object(value: object, path: str) -> dict[str, Any]:
    """Free-form JSON in a body `parse_chat_request` has run `check_values` over: only its nesting is left to check."""
    return FIELDS.json_object(value, path, values_checked=True)


def _optional(body: Mapping[str, Any], key: str, check: Callable[[object, str], Any], prefix: str = "") -> Any:
    """`check(body[key])`, or None when the key is missing or null; `prefix` completes the field path."""
    value = body.get(key)
    return None if value is None else check(value, prefix + key)


def parse_chat_request(body: Mapping[str, Any]) -> InboundChat:
    """Validate an OpenAI Chat Completions body; raises `BodyError` (400) naming the first bad field."""
    FIELDS.check_values(body)
    if body.get("model") is None:
        FIELDS.fail("model", "is required: a model name from the proxy's config (see `GET /v1/models`)")
    model = FIELDS.model_name(body["model"])
    if body.get("messages") is None:
        FIELDS.fail("messages", "is required")
    items = FIELDS.array(body["messages"], "messages", non_empty=True)
    if len(items) > MAX_MESSAGES:
        FIELDS.fail("messages", f"holds {len(items)} messages; the limit is {MAX_MESSAGES}")
    messages = tuple(_message(item, f"messages[{index}]") for index, item in enumerate(items))
    _refuse_unsupported(body)
    stream = bool(_optional(body, "stream", FIELDS.boolean))
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            FIELDS.fail("stream_options", "is only allowed when `stream` is true")
        usage = FIELDS.object(options, "stream_options").get("include_usage")
        include_usage = usage is not None and FIELDS.boolean(usage, "stream_options.include_usage")
    tools = _tools(body["tools"]) if body.get("tools") is not None else ()
    tool_choice = body.get("tool_choice")
    extra = {key: check(body[key], key) for key, check in PASSTHROUGH.items() if body.get(key) is not None}
    request = ChatRequest(
        messages=messages,
        model=model,
        max_tokens=_max_tokens(body),
        temperature=_optional(body, "temperature", lambda v, p: FIELDS.number(v, p, 0, 2)),
        top_p=_optional(body, "top_p", lambda v, p: FIELDS.number(v, p, 0, 1)),
        stop=_stop(body["stop"]) if body.get("stop") is not None else (),
        seed=_optional(body, "seed", lambda v, p: FIELDS.integer(v, p, -(2**63), 2**63 - 1)),
        response_format=_response_format(body["response_format"]) if body.get("response_format") is not None else None,
        tools=tools,
        tool_choice=_tool_choice(tool_choice, tools) if tool_choice is not None else None,
        parallel_tool_calls=_optional(body, "parallel_tool_calls", FIELDS.boolean),
        stream=stream,
        user=_optional(body, "user", FIELDS.string),
        extra=extra,
    )
    return InboundChat(request, include_usage)
