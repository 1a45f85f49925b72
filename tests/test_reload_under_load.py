"""Hot reload under load: 50 clients (the official OpenAI SDK) call the HTTP front for 10 s against two fake
OpenAI upstreams while the config file is rewritten 20 times, alternating valid changes (weights, a new model, a
removed provider) and invalid ones. No request fails, every valid change serves within 1 s of its write, and no
invalid one is ever served."""

from __future__ import annotations

import asyncio
import os
import time

import openai

from proxy.config import load_config, load_config_text
from proxy.engine import Engine
from proxy.fronts import openai_api
from proxy.fronts.http_app import build_app
from proxy.reload import Reloader
from proxy.runtime import Runtime
from tests.fakes import OpenAIFake
from tests.http_server import serve_app

CLIENTS = 50
DURATION = 10.0
REWRITES = 20


def config_text(a_url: str, b_url: str, step: int) -> str:
    """Valid config number `step`: weights change, a model is added, provider `b` comes and goes."""
    with_b = step % 3 != 2
    providers = f"  a: {{type: openai, base_url: {a_url}, api_key: test-a-key}}\n"
    targets = f"[{{provider: a, model: gpt-4o-mini, weight: {1 + step % 4}}}"
    if with_b:
        providers += f"  b: {{type: openai, base_url: {b_url}, api_key: test-b-key}}\n"
        targets += ", {provider: b, model: gpt-4o-mini, weight: 1}"
    targets += "]"
    return (
        "version: 1\n"
        "server: {grace_period: 2s}\n"
        f"providers:\n{providers}"
        f"models:\n  default: {{strategy: weighted, targets: {targets}}}\n"
        f"  added_{step}: {{targets: [{{provider: a, model: gpt-4o}}]}}\n"
    )


INVALID = [
    "version: 1\nproviders: {a: {type: openai}}\nmodels: {default: {targets: [{provider: nope, model: x}]}}\n",
    "version: 1\nproviders:\n  a: {type: openai\n",  # broken YAML
    "version: 2\n",
]


def write(path, text: str) -> None:
    temporary = path.with_name(".proxy.yaml.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def test_reloads_under_load_fail_no_request_and_apply_only_valid_files(tmp_path, start_fake):
    fake_a = await start_fake(OpenAIFake())
    fake_b = await start_fake(OpenAIFake())
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text(fake_a.base_url, fake_b.base_url, 0))
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path)
    valid_versions = {engine.runtime.config.version_hash}
    served_versions: set[str] = set()
    failures: list[str] = []
    answered = 0
    delays: list[float] = []
    stop = asyncio.Event()

    async def client(base_url: str) -> None:
        nonlocal answered
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as sdk:
            while not stop.is_set():
                try:
                    await sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
                    answered += 1
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                served_versions.add(engine.runtime.config.version_hash)

    async def rewrite() -> None:
        await asyncio.sleep(0.3)
        for index in range(REWRITES):
            if index % 2 == 0:
                text = config_text(fake_a.base_url, fake_b.base_url, index // 2 + 1)
                expected = load_config_text(text, base_dir=tmp_path).version_hash
                valid_versions.add(expected)
                written = time.perf_counter()
                write(path, text)
                while engine.runtime.config.version_hash != expected:
                    assert time.perf_counter() - written < 1.0, f"valid change {index} not serving within 1 s"
                    await asyncio.sleep(0.005)
                delays.append(time.perf_counter() - written)
            else:
                before = engine.runtime.config.version_hash
                write(path, INVALID[index % len(INVALID)])
                await asyncio.sleep(0.3)
                assert engine.runtime.config.version_hash == before
            await asyncio.sleep(DURATION / REWRITES - 0.3)

    watcher = asyncio.create_task(reloader.watch(debounce_ms=50, stop_event=stop))
    try:
        async with serve_app(build_app(engine, api_routes=openai_api.routes)) as base_url:
            clients = [asyncio.create_task(client(base_url)) for _ in range(CLIENTS)]
            try:
                await rewrite()
            finally:
                stop.set()
                await asyncio.gather(*clients)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
        await reloader.aclose()
        await engine.aclose()

    assert failures == []
    assert answered > CLIENTS * 10
    assert len(delays) == REWRITES // 2
    assert served_versions <= valid_versions
    reloads = engine.metrics_snapshot()["reloads"]
    assert reloads["ok"] == REWRITES // 2 and reloads["rejected"] >= REWRITES // 2
    assert "added_10" in engine.runtime.config.models
