"""Hot reload under hostile file-system events: a file truncated mid-write, deleted and recreated, replaced by a
pipe, the whole config directory deleted and recreated, the template directory moved by a reload, and a config
whose new runtime fails to build for a reason the checks cannot see. Each time the old config keeps serving, the
problem is reported, nothing raises out of `reload()`, and the watcher picks up the next good version.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap

import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.reload import Reloader
from proxy.runtime import Runtime
from tests.test_reload import CONFIG, answer, wait_for, write


@pytest.fixture
async def watched(tmp_path):
    """A config in its own directory, its engine, reloader and a running watcher."""
    directory = tmp_path / "config"
    directory.mkdir()
    path = directory / "proxy.yaml"
    path.write_text(CONFIG.format(reply="one"))
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    stop = asyncio.Event()
    watcher = asyncio.create_task(reloader.watch(debounce_ms=50, stop_event=stop))
    await asyncio.sleep(0.3)  # let the watcher start
    yield path, engine, reloader
    stop.set()
    await asyncio.wait_for(watcher, 10)
    await reloader.aclose()
    await engine.aclose()


def serves(engine: Engine, reply: str):
    async def check() -> bool:
        return await answer(engine) == reply

    return check


def rejected(engine: Engine, count: int):
    async def check() -> bool:
        return engine.metrics_snapshot()["reloads"]["rejected"] >= count

    return check


async def test_a_file_truncated_mid_write_is_rejected_then_the_whole_file_applies(watched):
    path, engine, reloader = watched
    full = CONFIG.format(reply="two")
    path.write_text(full[: full.index("models:") + 10])  # an editor or `cp` caught halfway
    await wait_for(rejected(engine, 1), 10)
    assert await answer(engine) == "one"
    assert "proxy.yaml" in reloader.last_error
    path.write_text(full)
    await wait_for(serves(engine, "two"), 10)
    assert reloader.last_error is None


async def test_a_deleted_file_is_rejected_and_its_recreation_applies(watched):
    path, engine, reloader = watched
    path.unlink()
    await wait_for(rejected(engine, 1), 10)
    assert "no such file" in reloader.last_error and await answer(engine) == "one"
    path.write_text(CONFIG.format(reply="back"))
    await wait_for(serves(engine, "back"), 10)


async def test_the_config_directory_deleted_and_recreated_is_watched_again(watched):
    path, engine, _reloader = watched
    shutil.rmtree(path.parent)
    await wait_for(rejected(engine, 1), 10)
    assert await answer(engine) == "one"
    await asyncio.sleep(0.2)
    path.parent.mkdir()
    path.write_text(CONFIG.format(reply="recreated"))
    await wait_for(serves(engine, "recreated"), 10)
    write(path, CONFIG.format(reply="edited after"))  # and edits in the new directory are seen too
    await wait_for(serves(engine, "edited after"), 10)


async def test_the_config_directory_renamed_over_is_watched_again(watched):
    path, engine, _reloader = watched
    fresh = path.parent.with_name("config.new")
    fresh.mkdir()
    (fresh / "proxy.yaml").write_text(CONFIG.format(reply="swapped"))
    shutil.rmtree(path.parent)
    os.rename(fresh, path.parent)
    await wait_for(serves(engine, "swapped"), 10)
    write(path, CONFIG.format(reply="edited in swapped"))
    await wait_for(serves(engine, "edited in swapped"), 10)


async def test_a_template_directory_moved_by_a_reload_is_watched(watched):
    path, engine, _reloader = watched
    templates = path.parent.parent / "prompts"  # outside the config's directory
    templates.mkdir()
    (templates / "t.j2").write_text("first {{ x }}")
    moved = CONFIG.format(reply="moved") + textwrap.dedent(
        """\
        template_dir: ../prompts
        templates:
          t: {file: t.j2, arguments: {x: {required: true}}}
        """
    )
    write(path, moved)
    await wait_for(serves(engine, "moved"), 10)
    version = engine.runtime.templates.version("t")
    await asyncio.sleep(0.3)  # the watcher restarts on the new directories
    (templates / "t.j2").write_text("second {{ x }}")

    async def template_reloaded() -> bool:
        return "t" in engine.runtime.templates and engine.runtime.templates.version("t") != version

    await wait_for(template_reloaded, 10)
    rendered = engine.runtime.templates.render("t", {"x": "y"})
    assert rendered.messages[-1].text() == "second y"


async def test_a_pipe_in_place_of_the_file_is_rejected_without_blocking(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(reply="one"))
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    try:
        path.unlink()
        os.mkfifo(path)  # reading it would block until someone writes: the reload would hang, holding its lock
        assert await asyncio.wait_for(reloader.reload(), 10) is False
        assert "not a regular file" in reloader.last_error
        assert await answer(engine) == "one"
    finally:
        await reloader.aclose()
        await engine.aclose()


async def test_a_runtime_that_fails_to_build_is_a_rejection_not_an_exception(tmp_path, monkeypatch, caplog):
    # A `type: python` provider whose module raises at import is a config problem naming the module and the error.
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('import-time failure')\n")
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(reply="one"))
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    try:
        broken = CONFIG.format(reply="two").replace(
            "    type: mock\n", "    type: python\n    class: 'explodes_on_import:Provider'\n"
        )
        path.write_text(broken.replace('    mock: {reply: "two"}\n', ""))
        assert await reloader.reload("SIGHUP") is False  # no exception: SIGHUP's task (and the server) survive
        assert "importing module `explodes_on_import` raised RuntimeError" in reloader.last_error
        assert await answer(engine) == "one"
        # Anything else the build raises (a bug in a component the checks let through) is a rejection too, its
        # details only in the log (`last_error` is shown to clients on /readyz).
        real_build = Runtime.build

        def failing_build(*args, **kwargs):
            raise RuntimeError("build-time failure")

        monkeypatch.setattr(Runtime, "build", failing_build)
        path.write_text(CONFIG.format(reply="two"))
        assert await reloader.reload("SIGHUP") is False
        assert "internal error (RuntimeError)" in reloader.last_error
        assert "build-time failure" not in reloader.last_error
        assert "build-time failure" in caplog.text
        assert await answer(engine) == "one"
        assert engine.metrics_snapshot()["reloads"]["rejected"] == 2
        monkeypatch.setattr(Runtime, "build", real_build)
        path.write_text(CONFIG.format(reply="three"))
        assert await reloader.reload() is True and await answer(engine) == "three"
    finally:
        await reloader.aclose()
        await engine.aclose()


async def test_a_reloaded_file_with_a_crashing_value_is_rejected(watched):
    path, engine, reloader = watched
    # Each of these was a traceback from the checks (and so a reload that raised) before the audit.
    for count, bad in enumerate(("version: !!int abc", "version: " + "9" * 5000), start=1):
        write(path, CONFIG.format(reply="never").replace("version: 1", bad))
        await wait_for(rejected(engine, count), 10)
        assert "proxy.yaml:2:10: version:" in reloader.last_error
        assert await answer(engine) == "one"
