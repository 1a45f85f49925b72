"""The config reference in Markdown, generated from the JSON Schema (the README embeds it; a test keeps them equal).

llm-proxy schema --format markdown
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from proxy.resources import config_schema


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = schema["$defs"][node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return merged
    return node


def _type_of(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "oneOf" in node:
        return "duration"
    kind = node.get("type", "any")
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind == "array":
        item = node.get("items", {})
        return f"list of {item.get('type', 'values')}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map"
    return kind


def _default(node: dict[str, Any]) -> str:
    if "default" not in node or node["default"] in ({}, []):
        return ""
    return f"`{json.dumps(node['default'])}`"


def _rows(node: dict[str, Any], path: str, schema: dict[str, Any], depth: int) -> Iterator[str]:
    node = _resolve(node, schema)
    if depth > 0:
        description = " ".join(node.get("description", "").split()).replace("|", "\\|")
        yield f"| `{path}` | {_type_of(node)} | {_default(node)} | {description} |"
    if depth > 6:
        return
    for name, child in node.get("properties", {}).items():
        yield from _rows(child, f"{path}.{name}" if path else name, schema, depth + 1)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "$ref" in extra:
        placeholder = {
            "providers": "<name>",
            "models": "<name>",
            "templates": "<name>",
            "pricing": "<model>",
            "arguments": "<argument>",
        }.get(path.rsplit(".", 1)[-1], "<key>")
        yield from _rows(extra, f"{path}.{placeholder}", schema, depth + 1)
    items = node.get("items")
    if isinstance(items, dict) and "$ref" in items:
        yield from _rows(items, f"{path}[]", schema, depth + 1)


def markdown_reference() -> str:
    """Every config key as one Markdown table row: path, type, default, description."""
    schema = config_schema()
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines.extend(_rows(schema, "", schema, 0))
    return "\n".join(lines) + "\n"
