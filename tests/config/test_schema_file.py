"""The schema file itself: complete documentation, strictness, and agreement with the CLI and the examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from proxy.cli import main
from proxy.resources import config_schema, schema_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "config" / "proxy.yaml"]


def _objects(node, path="#"):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}/{i}")


def test_schema_is_valid_draft_2020_12():
    schema = config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_object_is_closed():
    for path, node in _objects(config_schema()):
        if path.endswith("/options") or path.endswith("/resource_attributes") or "additionalProperties" in node:
            continue
        raise AssertionError(f"{path} does not set additionalProperties")
    for path, node in _objects(config_schema()):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path


def test_every_property_has_a_description():
    schema = config_schema()
    for path, node in _objects(schema):
        for name, prop in node.get("properties", {}).items():
            if "$ref" in prop and "description" not in prop:
                target = prop["$ref"].split("/")[-1]
                prop = schema["$defs"][target]
            assert prop.get("description"), f"{path}/properties/{name} has no description"


def test_sections_with_defaults_declare_them():
    schema = config_schema()
    for name in ("defaults", "retry", "cache", "state", "server", "telemetry"):
        section = schema["properties"][name]
        assert section["default"] == {}
        for prop_name, prop in section["properties"].items():
            if prop.get("type") in ("integer", "boolean") or "enum" in prop:
                assert "default" in prop or prop_name in ("temperature",), f"{name}.{prop_name} has no default"


def test_cli_schema_prints_the_file(capsys):
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_path().read_text(encoding="utf-8")
    assert json.loads(schema_path().read_text(encoding="utf-8")) == config_schema()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_with_plain_jsonschema(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = list(Draft202012Validator(config_schema()).iter_errors(data))
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_point_editors_at_the_schema(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/config.schema.json"
