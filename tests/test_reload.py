"""Hot reload: a valid edit is applied, an invalid one changes nothing and is reported, the Kubernetes ConfigMap
symlink swap is seen, editors' rename-over writes are seen, and bursts make one reload."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.reload import Reloader
from proxy.runtime import Runtime
from proxy.types import ChatRequest

CONFIG = """
version: 1
providers:
  mock:
    type: mock
    mock: {{reply: "{reply}"}}
models:
  default:
    targets: [{{provider: mock, model: mock-1}}]
"""
BROKEN = (
    "version: 1\nproviders:\n  mock: {type: mock}\nmodels:\n  default:\n    targets: [{provider: nope, model: x}]\n"
)


def write(path: Path, text: str) -> None:
    """Write like an editor: a temporary file renamed over the target (atomic)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def answer(engine: Engine) -> str:
    return (await engine.complete(ChatRequest.from_prompt("hi"))).text or ""


async def wait_for(predicate, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - polls what a client would observe
            await asyncio.sleep(0.02)


@pytest.fixture
async def reloading(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(reply="one"))
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    yield path, engine, reloader
    await reloader.aclose()
    await engine.aclose()


async def test_a_valid_edit_is_applied_and_an_invalid_one_changes_nothing(reloading):
    path, engine, reloader = reloading
    version = engine.runtime.config.version_hash
    path.write_text(CONFIG.format(reply="two"))
    assert await reloader.reload() is True
    assert await answer(engine) == "two"
    assert engine.runtime.config.version_hash != version
    path.write_text(BROKEN)
    assert await reloader.reload() is False
    assert await answer(engine) == "two"
    assert "proxy.yaml:6:" in reloader.last_error and "unknown provider `nope`" in reloader.last_error
    assert engine.config_info()["last_reload_error"] == reloader.last_error  # what /readyz and list_providers show
    reloads = engine.metrics_snapshot()["reloads"]
    assert reloads["ok"] == 1 and reloads["rejected"] == 1
    path.unlink()
    assert await reloader.reload() is False  # a deleted file is rejected too
    path.write_text(CONFIG.format(reply="three"))
    assert await reloader.reload() is True and await answer(engine) == "three"
    assert reloader.last_error is None and engine.config_info()["last_reload_error"] is None
    assert await reloader.reload() is False  # unchanged content: nothing to do


async def test_watching_applies_an_editors_rename_and_ignores_unrelated_files(reloading):
    path, engine, reloader = reloading
    stop = asyncio.Event()
    watcher = asyncio.create_task(reloader.watch(debounce_ms=50, stop_event=stop))
    try:
        await asyncio.sleep(0.2)
        (path.parent / "notes.txt").write_text("unrelated")
        write(path, CONFIG.format(reply="renamed"))

        async def applied() -> bool:
            return await answer(engine) == "renamed"

        await wait_for(applied)
        assert engine.metrics_snapshot()["reloads"]["ok"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def test_the_configmap_symlink_swap_is_applied(tmp_path):
    mount = tmp_path / "config"
    mount.mkdir()
    first = mount / "..2026_11_25_10_00_00.1234"
    first.mkdir()
    (first / "proxy.yaml").write_text(CONFIG.format(reply="configmap one"))
    (mount / "..data").symlink_to(first.name)
    (mount / "proxy.yaml").symlink_to("..data/proxy.yaml")
    engine = Engine(Runtime.build(load_config(mount / "proxy.yaml")))
    reloader = Reloader(engine, mount / "proxy.yaml", grace_period=0)
    stop = asyncio.Event()
    watcher = asyncio.create_task(reloader.watch(debounce_ms=50, stop_event=stop))
    try:
        await asyncio.sleep(0.2)
        second = mount / "..2026_11_25_10_05_00.5678"
        second.mkdir()
        (second / "proxy.yaml").write_text(CONFIG.format(reply="configmap two"))
        (mount / "..data_tmp").symlink_to(second.name)
        os.rename(mount / "..data_tmp", mount / "..data")  # what the kubelet does: one atomic rename
        shutil.rmtree(first)

        async def applied() -> bool:
            return await answer(engine) == "configmap two"

        await wait_for(applied)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
        await reloader.aclose()
        await engine.aclose()


async def test_a_rejected_reload_is_logged_once_per_distinct_problem(reloading, caplog):
    path, _, reloader = reloading
    path.write_text(BROKEN)
    for _ in range(3):
        await reloader.reload()
    assert sum("rejected" in record.message for record in caplog.records) == 1
