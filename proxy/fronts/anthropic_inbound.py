"""Anthropic Messages request bodies -> `ChatRequest`, validated strictly (no I/O).

`parse_messages_body(body)` reads a `POST /v1/messages` body; `parse_messages_body(body, count_only=True)` reads
a `POST /v1/messages/count_tokens` body (no `max_tokens`, no sampling). Every problem raises `RequestError`
whose message starts with the field path (`messages[2].content[0].type: ...`) and whose `param` is that path.

Mapping (the reverse of `proxy.providers.anthropic`):
- `system` (string or text blocks, joined with "\\n") and `role: "system"` messages -> system messages;
- user `text`/`image` blocks -> text/image parts (base64 sources become `data:` URIs, url sources stay URLs);
  user `tool_result` blocks -> `tool` messages, in block order; `is_error: true` prefixes the result's text with
  `Error: ` (the normalized types have no error flag, and OpenAI upstreams have none either);
- assistant `text`/`tool_use` blocks -> text and tool calls (`input` as JSON text); `thinking` and
  `redacted_thinking` blocks are dropped (this proxy never returns them);
- `stop_sequences` -> `stop`, `metadata.user_id` -> `user`, `tool_choice` auto/any/none/tool -> auto/required/
  none/tool with `disable_parallel_tool_use` -> `parallel_tool_calls=False`; `top_k` passes through in `extra`.

Refused (400): `thinking` other than `{"type": "disabled"}` (thinking blocks cannot travel through the proxy),
`output_config.format` (structured output is not enforced on every upstream), `mcp_servers`, `container`,
`context_management`, server tools (a `type` other than `custom`), and content blocks other than the above
(`document`, `search_result`, `server_tool_use`, ...). Accepted and ignored: `cache_control` anywhere,
`service_tier`, `output_config.effort`, other `metadata` keys, `citations`, and top-level fields this proxy
does not know (so newer SDKs keep working). Tool schemas and tool inputs are free-form JSON sent on as they are
(`Fields.json_object`): at most 64 levels deep, no lone surrogates, no `NaN`/`Infinity`; `model` is at most 256
characters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.errors import RequestError
from proxy.fronts.fields import MAX_MESSAGES, MAX_TOKENS, Fields, between_got, brief, json_kind
from proxy.types import ChatRequest, ContentPart, ImagePart, Message, TextPart, ToolCall, ToolChoice, ToolDef

FIELDS = Fields(
    error=lambda path, problem: RequestError(f"{path}: {problem}", param=path),
    out_of_range=between_got,
    integral_floats=False,
    surrogate="holds a lone UTF-16 surrogate (an unpaired `\\ud800`-`\\udfff` escape), which is not text",
)
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_ERROR_PREFIX = "Error: "
_TOOL_CHOICE_MODES = {"auto": "auto", "any": "required", "none": "none", "tool": "tool"}
_REFUSED_FIELDS = {
    "mcp_servers": "MCP connector servers are not supported by this proxy",
    "container": "containers (code execution) are not supported by this proxy",
    "context_management": "context management is not supported by this proxy",
}
_DROPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _block_type(block: dict[str, Any], path: str) -> str:
    return FIELDS.string(block.get("type"), f"{path}.type", non_empty=True)


# --- content blocks ------------------------------------------------------------------------------------------


def _text_block(block: dict[str, Any], path: str) -> TextPart:
    return TextPart(FIELDS.string(block.get("text"), f"{path}.text"))


def _image_block(block: dict[str, Any], path: str) -> ImagePart:
    source = FIELDS.object(block.get("source"), f"{path}.source")
    kind = FIELDS.string(source.get("type"), f"{path}.source.type", non_empty=True)
    if kind == "base64":
        media_type = FIELDS.string(source.get("media_type"), f"{path}.source.media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            FIELDS.fail(
                f"{path}.source.media_type", f"must be one of {', '.join(IMAGE_MEDIA_TYPES)}, got `{brief(media_type)}`"
            )
        data = FIELDS.string(source.get("data"), f"{path}.source.data", non_empty=True)
        return ImagePart(f"data:{media_type};base64,{data}")
    if kind == "url":
        url = FIELDS.string(source.get("url"), f"{path}.source.url", non_empty=True)
        if not url.startswith(("https://", "http://")):
            FIELDS.fail(f"{path}.source.url", "must be an http(s) URL")
        return ImagePart(url)
    FIELDS.fail(
        f"{path}.source.type", f"must be `base64` or `url`, got `{brief(kind)}` (file sources are not supported)"
    )


def _tool_result(block: dict[str, Any], path: str) -> Message:
    call_id = FIELDS.string(block.get("tool_use_id"), f"{path}.tool_use_id", non_empty=True)
    is_error = FIELDS.optional_bool(block.get("is_error"), f"{path}.is_error")
    content = block.get("content")
    parts: list[ContentPart] = []
    if isinstance(content, str):
        parts.append(TextPart(FIELDS.text(content, f"{path}.content")))
    elif content is not None:
        for index, item in enumerate(FIELDS.array(content, f"{path}.content")):
            item_path = f"{path}.content[{index}]"
            item = FIELDS.object(item, item_path)
            kind = _block_type(item, item_path)
            if kind == "text":
                parts.append(_text_block(item, item_path))
            elif kind == "image":
                parts.append(_image_block(item, item_path))
            else:
                FIELDS.fail(
                    f"{item_path}.type", f"a tool result can hold `text` and `image` blocks, not `{brief(kind)}`"
                )
    if is_error:
        parts.insert(0, TextPart(TOOL_ERROR_PREFIX if parts else TOOL_ERROR_PREFIX.rstrip(": ")))
    if all(isinstance(part, TextPart) for part in parts):
        text = "".join(part.text for part in parts if isinstance(part, TextPart))
        return Message("tool", text, tool_call_id=call_id)
    return Message("tool", tuple(parts), tool_call_id=call_id)


def _tool_use(block: dict[str, Any], path: str) -> ToolCall:
    call_id = FIELDS.string(block.get("id"), f"{path}.id", non_empty=True)
    name = FIELDS.string(block.get("name"), f"{path}.name", non_empty=True)
    arguments = FIELDS.json_object(block.get("input"), f"{path}.input")
    return ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))


def _user_messages(content: list[Any], path: str) -> list[Message]:
    """User blocks in order: runs of text/image parts become user messages, each tool_result a tool message."""
    messages: list[Message] = []
    parts: list[ContentPart] = []
    for index, block in enumerate(content):
        block_path = f"{path}[{index}]"
        block = FIELDS.object(block, block_path)
        kind = _block_type(block, block_path)
        if kind == "text":
            parts.append(_text_block(block, block_path))
        elif kind == "image":
            parts.append(_image_block(block, block_path))
        elif kind == "tool_result":
            if parts:
                messages.append(Message("user", tuple(parts)))
                parts = []
            messages.append(_tool_result(block, block_path))
        else:
            allowed = "`text`, `image` and `tool_result`"
            FIELDS.fail(f"{block_path}.type", f"user messages can hold {allowed} blocks, not `{brief(kind)}`")
    if parts:
        messages.append(Message("user", tuple(parts)))
    return messages


def _assistant_message(content: list[Any], path: str) -> Message | None:
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        block_path = f"{path}[{index}]"
        block = FIELDS.object(block, block_path)
        kind = _block_type(block, block_path)
        if kind == "text":
            parts.append(_text_block(block, block_path))
        elif kind == "tool_use":
            calls.append(_tool_use(block, block_path))
        elif kind not in _DROPPED_ASSISTANT_BLOCKS:
            FIELDS.fail(
                f"{block_path}.type", f"assistant messages can hold `text` and `tool_use` blocks, not `{brief(kind)}`"
            )
    if not parts and not calls:
        return None
    return Message("assistant", tuple(parts) if parts else None, tool_calls=tuple(calls))


def _system_text(value: object, path: str) -> str:
    if isinstance(value, str):
        return FIELDS.text(value, path)
    texts = []
    for index, block in enumerate(FIELDS.array(value, path)):
        block_path = f"{path}[{index}]"
        block = FIELDS.object(block, block_path)
        kind = _block_type(block, block_path)
        if kind != "text":
            FIELDS.fail(f"{block_path}.type", f"system content can only hold `text` blocks, not `{brief(kind)}`")
        texts.append(_text_block(block, block_path).text)
    return "\n".join(texts)


def _messages(value: object) -> list[Message]:
    if value is None:
        FIELDS.fail("messages", "is required")
    items = FIELDS.array(value, "messages")
    if not items:
        FIELDS.fail("messages", "must hold at least one message")
    if len(items) > MAX_MESSAGES:
        FIELDS.fail("messages", f"holds {len(items)} messages; the limit is {MAX_MESSAGES}")
    messages: list[Message] = []
    for index, item in enumerate(items):
        path = f"messages[{index}]"
        item = FIELDS.object(item, path)
        role = FIELDS.string(item.get("role"), f"{path}.role")
        content = item.get("content")
        if content is None:
            FIELDS.fail(f"{path}.content", "is required")
        if not isinstance(content, str | list):
            FIELDS.fail(f"{path}.content", f"must be a string or an array of content blocks, not {json_kind(content)}")
        if isinstance(content, list) and not content:
            FIELDS.fail(f"{path}.content", "must hold at least one content block")
        if role == "system":
            messages.append(Message("system", _system_text(content, f"{path}.content")))
        elif role not in ("user", "assistant"):
            FIELDS.fail(f"{path}.role", f"must be `user` or `assistant`, got `{brief(role)}`")
        elif isinstance(content, str):
            messages.append(Message(role, FIELDS.text(content, f"{path}.content")))
        elif role == "user":
            messages.extend(_user_messages(content, f"{path}.content"))
        elif (message := _assistant_message(content, f"{path}.content")) is not None:
            messages.append(message)
    return messages


# --- tools -----------------------------------------------------------------------------------------------------


def _tools(value: object) -> tuple[ToolDef, ...]:
    if value is None:
        return ()
    tools: list[ToolDef] = []
    seen: set[str] = set()
    for index, item in enumerate(FIELDS.array(value, "tools")):
        path = f"tools[{index}]"
        item = FIELDS.object(item, path)
        kind = FIELDS.optional_string(item.get("type"), f"{path}.type")
        if kind not in (None, "custom"):
            FIELDS.fail(
                f"{path}.type", f"server tool `{brief(kind)}` is not supported by this proxy; only custom tools are"
            )
        name = FIELDS.string(item.get("name"), f"{path}.name", non_empty=True)
        if name in seen:
            FIELDS.fail(f"{path}.name", f"tool `{brief(name)}` is declared twice")
        seen.add(name)
        tools.append(
            ToolDef(
                name=name,
                description=FIELDS.optional_string(item.get("description"), f"{path}.description"),
                parameters=FIELDS.json_object(item.get("input_schema"), f"{path}.input_schema"),
                strict=FIELDS.optional_bool(item.get("strict"), f"{path}.strict"),
            )
        )
    return tuple(tools)


def _tool_choice(value: object, tools: tuple[ToolDef, ...]) -> tuple[ToolChoice | None, bool | None]:
    """(`tool_choice`, `parallel_tool_calls`)."""
    if value is None:
        return None, None
    choice = FIELDS.object(value, "tool_choice")
    kind = FIELDS.string(choice.get("type"), "tool_choice.type")
    if kind not in _TOOL_CHOICE_MODES:
        FIELDS.fail("tool_choice.type", f"must be one of auto, any, tool, none; got `{brief(kind)}`")
    serial = FIELDS.optional_bool(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    name = None
    if kind == "tool":
        name = FIELDS.string(choice.get("name"), "tool_choice.name", non_empty=True)
        if name not in {tool.name for tool in tools}:
            FIELDS.fail("tool_choice.name", f"names no tool in `tools`: `{brief(name)}`")
    mode = _TOOL_CHOICE_MODES[kind]
    return ToolChoice(mode, name), (False if serial else None)  # type: ignore[arg-type]


# --- the body ----------------------------------------------------------------------------------------------------


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is not None:
        kind = FIELDS.object(thinking, "thinking").get("type")
        if kind != "disabled":
            FIELDS.fail("thinking", "extended thinking is not supported by this proxy; omit `thinking` or disable it")
    output_config = body.get("output_config")
    if output_config is not None and FIELDS.object(output_config, "output_config").get("format") is not None:
        FIELDS.fail("output_config.format", "structured output formats are not supported by this proxy")
    for field, reason in _REFUSED_FIELDS.items():
        if body.get(field) not in (None, [], {}):
            FIELDS.fail(field, reason)


def parse_messages_body(body: Mapping[str, Any], *, count_only: bool = False) -> ChatRequest:
    """A Messages API body as a `ChatRequest`; `count_only` reads a count_tokens body. Raises `RequestError`."""
    model = body.get("model")
    if model is None:
        FIELDS.fail("model", "is required")
    model = FIELDS.model_name(model)
    _refuse_unsupported(body)
    messages: list[Message] = []
    system = body.get("system")
    if system is not None and (text := _system_text(system, "system")):
        messages.append(Message("system", text))
    messages.extend(_messages(body.get("messages")))
    tools = _tools(body.get("tools"))
    tool_choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    if count_only:
        return ChatRequest(messages=tuple(messages), model=model, tools=tools, tool_choice=tool_choice)
    if body.get("max_tokens") is None:
        FIELDS.fail("max_tokens", "is required")
    max_tokens = FIELDS.integer(body.get("max_tokens"), "max_tokens", 1, MAX_TOKENS)
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    top_k = body.get("top_k")
    stop = body.get("stop_sequences")
    metadata = body.get("metadata")
    user = None
    if metadata is not None:
        user = FIELDS.optional_string(FIELDS.object(metadata, "metadata").get("user_id"), "metadata.user_id")
    return ChatRequest(
        messages=tuple(messages),
        model=model,
        max_tokens=max_tokens,
        temperature=None if temperature is None else FIELDS.number(temperature, "temperature", 0.0, 1.0),
        top_p=None if top_p is None else FIELDS.number(top_p, "top_p", 0.0, 1.0),
        stop=tuple(
            FIELDS.string(item, f"stop_sequences[{index}]", non_empty=True)
            for index, item in enumerate(FIELDS.array(stop, "stop_sequences") if stop is not None else ())
        ),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        stream=bool(FIELDS.optional_bool(body.get("stream"), "stream")),
        user=user,
        extra={"top_k": FIELDS.integer(top_k, "top_k", 0, MAX_TOKENS)} if top_k is not None else {},
    )
