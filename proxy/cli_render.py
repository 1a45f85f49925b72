"""`llm-proxy render`: render a prompt template on the current config and print its messages (for template authors).

    llm-proxy render TEMPLATE [--arg KEY=VALUE ...] [--format text|json]

A VALUE that parses as JSON is taken as JSON (`--arg count=3` is the number 3, `--arg tags='["a","b"]'` a list,
`--arg x=null` leaves `x` out), anything else as a string (`--arg name=Ada`); write `--arg n='"3"'` for the string
"3". Exit 0 when it renders, 1 with the error on stderr (invalid config, unknown template, bad arguments, a template
that fails), 2 for usage errors. Nothing is sent to a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from proxy.config.load import load_config
from proxy.errors import ConfigError, ProxyError
from proxy.templates import PromptTemplates, RenderedPrompt


def parse_value(text: str) -> Any:
    """`text` as JSON when it is JSON (NaN and Infinity are not), else the string itself."""

    def _no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError:
        return text


class _KeyValue(argparse.Action):
    """Collects repeated `--arg KEY=VALUE` into one dict; a missing `=`, an empty or repeated KEY is a usage error."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        key, sep, value = str(values).partition("=")
        key = key.strip()
        if not sep or not key:
            parser.error(f"{option} expects KEY=VALUE, got `{values}`")
        collected = dict(getattr(namespace, self.dest) or {})
        if key in collected:
            parser.error(f"{option} `{key}` is given twice")
        collected[key] = parse_value(value)
        setattr(namespace, self.dest, collected)


def add_parser(commands: argparse._SubParsersAction, config_option) -> None:
    render = commands.add_parser(
        "render",
        help="render a prompt template and print its messages (nothing is sent to a model)",
        description="Render a prompt template from the config and print the messages it would send.",
        epilog="A VALUE that parses as JSON is taken as JSON (3, true, null, [..], {..}), anything else as a string.",
    )
    config_option(render, top=False)
    render.add_argument("template", metavar="TEMPLATE", help="template name from the config")
    render.add_argument(
        "--arg",
        dest="arguments",
        action=_KeyValue,
        default=None,
        metavar="KEY=VALUE",
        help="a template argument (repeatable)",
    )
    render.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def as_dict(rendered: RenderedPrompt) -> dict[str, Any]:
    """The `--format json` document."""
    return {
        "template": rendered.name,
        "version": rendered.version,
        "model": rendered.model,
        "max_tokens": rendered.max_tokens,
        "temperature": rendered.temperature,
        "messages": [{"role": m.role, "content": m.text()} for m in rendered.messages],
    }


def as_text(rendered: RenderedPrompt) -> str:
    """One `--- role ---` header per message, then its text."""
    return "".join(f"--- {m.role} ---\n{m.text()}\n" for m in rendered.messages)


def render_template(config_path: str | None, template: str, arguments: dict[str, Any]) -> RenderedPrompt:
    """Load the config, build its templates and render one (ConfigError / TemplateError on failure)."""
    templates = PromptTemplates.from_config(load_config(config_path))
    return templates.render(template, arguments)


def cmd_render(args: argparse.Namespace, config_path: str | None) -> int:
    try:
        rendered = render_template(config_path, args.template, args.arguments or {})
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ProxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        json.dump(as_dict(rendered), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(as_text(rendered))
    return 0
