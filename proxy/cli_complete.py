"""`llm-proxy complete`: send one prompt through the engine on the current config and print the answer."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from proxy.config.load import load_config
from proxy.engine import Engine
from proxy.errors import ConfigError, ProxyError
from proxy.runtime import Runtime
from proxy.types import ChatRequest


def add_parser(commands: argparse._SubParsersAction, config_option) -> None:
    complete = commands.add_parser("complete", help="send one prompt through the proxy and print the answer")
    config_option(complete, top=False)
    complete.add_argument("prompt", metavar="PROMPT", help="the prompt; `-` reads it from standard input")
    complete.add_argument("--model", help="model name from the config (default: the config's default model)")
    complete.add_argument("--system", help="system prompt")
    complete.add_argument("--max-tokens", type=int, help="maximum tokens to generate")
    complete.add_argument("--temperature", type=float, help="sampling temperature")
    complete.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    complete.add_argument("--json", action="store_true", help="print the whole result as JSON")


async def _run(args: argparse.Namespace, config_path: str | None) -> int:
    config = load_config(config_path)
    engine = Engine(Runtime.build(config))
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    request = ChatRequest.from_prompt(
        prompt, system=args.system, model=args.model, max_tokens=args.max_tokens, temperature=args.temperature
    )
    try:
        if args.stream and not args.json:
            async for chunk in engine.stream(request):
                if chunk.text:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            response = await engine.complete(request)
            if args.json:
                json.dump(dataclasses.asdict(response), sys.stdout, indent=2, default=str)
                sys.stdout.write("\n")
            else:
                sys.stdout.write((response.text or "") + "\n")
    finally:
        await engine.aclose()
    return 0


def cmd_complete(args: argparse.Namespace, config_path: str | None) -> int:
    try:
        return asyncio.run(_run(args, config_path))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ProxyError as exc:
        sys.stdout.flush()
        print(f"\nerror: {exc}" if args.stream else f"error: {exc}", file=sys.stderr)
        return 1
