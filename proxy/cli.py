"""The `llm-proxy` command line (also `python -m proxy`).

    llm-proxy validate [PATH ...] [--format text|json]   exit 0 valid, 1 invalid
    llm-proxy schema [--format json|markdown]            print the config JSON Schema / reference
    llm-proxy complete [--model NAME] [--stream] [--system TEXT] PROMPT
    llm-proxy render TEMPLATE [--arg KEY=VALUE ...] [--format text|json]
    llm-proxy serve [--transport stdio|http] [--host H] [--port P] [--no-watch]
    llm-proxy explain [MODEL] [--request FILE|-] [--format text|json]
    llm-proxy diff OLD NEW [--format text|markdown|json]   exit 0 same, 1 changed, 2 invalid
    llm-proxy --version

The config comes from `--config PATH` (accepted before or after the subcommand), else `$LLM_PROXY_CONFIG`,
else the embedded default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.config.load import LoadResult, check_config_file
from proxy.resources import default_config_path, schema_text

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def _config_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $LLM_PROXY_CONFIG, else the embedded default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        description="A declarative, YAML-configured LLM proxy served over MCP and OpenAI/Anthropic-compatible HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _config_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = commands.add_parser("validate", help="check config files; exit 0 when valid, 1 with every problem")
    _config_option(validate, top=False)
    validate.add_argument("paths", nargs="*", metavar="PATH", help="files to check (default: the config in use)")
    validate.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    schema = commands.add_parser("schema", help="print the config JSON Schema (or its Markdown reference)")
    _config_option(schema, top=False)
    schema.add_argument("--format", choices=("json", "markdown"), default="json", help="output format")
    from proxy.cli_complete import add_parser as add_complete

    add_complete(commands, _config_option)
    from proxy.cli_render import add_parser as add_render

    add_render(commands, _config_option)
    from proxy.cli_serve import add_serve_parser

    add_serve_parser(commands, _config_option)
    from proxy.cli_explain import add_parser as add_explain

    add_explain(commands, _config_option)
    from proxy.cli_diff import add_parser as add_diff

    add_diff(commands)
    return parser


def config_path(args: argparse.Namespace) -> str | None:
    """The config file to use: --config, else $LLM_PROXY_CONFIG, else None (the embedded default)."""
    return getattr(args, "config", None) or os.environ.get("LLM_PROXY_CONFIG") or None


def _summary(result: LoadResult) -> str:
    config = result.config
    assert config is not None
    enabled = sum(1 for p in config.providers.values() if p.enabled)
    parts = [
        f"{len(config.providers)} provider{'s' if len(config.providers) != 1 else ''} ({enabled} enabled)",
        f"{len(config.models)} model{'s' if len(config.models) != 1 else ''}",
        f"{len(config.templates)} template{'s' if len(config.templates) != 1 else ''}",
    ]
    return f"valid (version {config.version_hash}): " + ", ".join(parts)


def cmd_validate(args: argparse.Namespace) -> int:
    paths: list[str | None] = list(args.paths) or [config_path(args)]
    if "" in paths:  # not "the default": a script's unset variable, most likely
        print("llm-proxy validate: an empty PATH names no file (an unset variable?)", file=sys.stderr)
        return 1
    results = [(path or str(default_config_path()), check_config_file(path)) for path in paths]
    if args.format == "json":
        report = [
            {
                "file": name,
                "valid": result.config is not None,
                "version": result.config.version_hash if result.config else None,
                "issues": [issue.as_dict() for issue in result.issues],
                "disabled_providers": {
                    p.name: p.disabled_reason for p in result.config.providers.values() if not p.enabled
                }
                if result.config
                else {},
            }
            for name, result in results
        ]
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for name, result in results:
            if result.config is None:
                for issue in result.issues:
                    print(issue.format(), file=sys.stderr)
                count = len(result.issues)
                print(f"{name}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
            else:
                print(f"{name}: {_summary(result)}")
                for provider in result.config.providers.values():
                    if not provider.enabled:
                        print(f"  provider `{provider.name}` is disabled: {provider.disabled_reason}")
    return EXIT_OK if all(result.config is not None for _, result in results) else EXIT_INVALID


def cmd_schema(args: argparse.Namespace) -> int:
    if args.format == "markdown":
        from proxy.config.reference import markdown_reference

        sys.stdout.write(markdown_reference())
    else:
        sys.stdout.write(schema_text())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from proxy.cli_complete import cmd_complete
    from proxy.cli_diff import cmd_diff
    from proxy.cli_explain import cmd_explain
    from proxy.cli_render import cmd_render
    from proxy.cli_serve import run_serve

    handlers = {
        "validate": cmd_validate,
        "schema": cmd_schema,
        "complete": lambda a: cmd_complete(a, config_path(a)),
        "render": lambda a: cmd_render(a, config_path(a)),
        "serve": lambda a: run_serve(a, config_path(a)),
        "explain": lambda a: cmd_explain(a, config_path(a)),
        "diff": cmd_diff,
    }
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `llm-proxy schema | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
