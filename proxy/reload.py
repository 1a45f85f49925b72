"""Hot reload: watch the config file, its directory and the templates directory; on a change, load and check
everything aside, build the new runtime from the old one's state, and swap one reference in the engine.

- What is watched (`watchfiles`): the config file's directory (editors write a temporary file and rename it; a
  Kubernetes ConfigMap swaps the `..data` symlink to a new timestamped directory, so the file itself never changes
  in place) and the template directory. A change counts when it touches the config file's name, a `..`-prefixed
  entry (the ConfigMap machinery) or anything under the template directory. Bursts are debounced (an editor's
  several writes make one reload), and a reload whose content hash equals the served version is skipped.
- A reload is transactional: reading and checking run in a worker thread (file I/O off the event loop); any
  problem (bad YAML, schema, semantic, a template that does not build) changes nothing, is logged once with
  `file:line:col`, kept in `last_error` (for `/readyz`) and counted (`reloads_total{result="rejected"}`).
  `reload()` never raises: an unexpected failure (a bug) is rejected the same way, its traceback logged, so neither
  the watcher nor SIGHUP can take the server down.
- The watcher outlives its directories: when a watched directory is deleted (and maybe recreated), renamed over,
  or the template directory moves in a reload, it starts watching the current directories again (polling every
  `POLL_SECONDS` while the config's directory is missing) and reloads once they are back. An error from the file
  watcher itself is logged and watching resumes.
- A good file is built into a new `Runtime` with `previous=` the current one (unchanged providers keep their
  pools, buckets, breakers; see proxy/runtime.py) and swapped in; the old runtime is closed after the grace period,
  so in-flight requests and streams finish on it. Listeners (e.g. the MCP server announcing changed prompts) are
  called with the old and new runtimes.
- `SIGHUP` calls `reload()` too (wired by `llm-proxy serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from proxy.config.load import check_config_file
from proxy.engine import Engine
from proxy.errors import ConfigError, ConfigIssue
from proxy.runtime import Runtime

log = logging.getLogger(__name__)

Listener = Callable[[Runtime, Runtime], object]
DEBOUNCE_MS = 150
POLL_SECONDS = 0.5  # how often a missing config directory is looked for


class Reloader:
    """Reloads `engine` from `path`. `await reload()` once; `await watch()` runs until cancelled."""

    def __init__(self, engine: Engine, path: str | Path, *, grace_period: float | None = None) -> None:
        self.engine = engine
        self.path = Path(path).absolute()  # not resolved: a ConfigMap's file is a symlink that moves
        self.grace_period = grace_period
        self.last_error: str | None = None
        self.last_duration_ms: float | None = None
        self.listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._closing: dict[asyncio.Task[None], Runtime] = {}

    def watched_paths(self) -> list[Path]:
        """The directories to watch that exist now: the config file's, and the template directory unless it is
        inside that one."""
        paths = [self.path.parent] if self.path.parent.is_dir() else []
        template_dir = self.engine.runtime.config.template_dir
        if template_dir is not None and template_dir.is_dir():
            resolved = template_dir.resolve()
            if not any(resolved == p.resolve() or resolved.is_relative_to(p.resolve()) for p in paths):
                paths.append(template_dir)
        return paths

    def _watch_identity(self) -> tuple[tuple[Path, int, int], ...]:
        """What is being watched, by inode: changes when a directory is replaced, removed or added."""
        identity = []
        for path in self.watched_paths():
            with contextlib.suppress(OSError):
                info = path.stat()
                identity.append((path, info.st_dev, info.st_ino))
        return tuple(identity)

    def is_relevant(self, changed: Path) -> bool:
        """Whether a changed path can affect the config: the file's name, ConfigMap `..` entries, templates."""
        if changed.parent == self.path.parent and (changed.name == self.path.name or changed.name.startswith("..")):
            return True
        template_dir = self.engine.runtime.config.template_dir
        if template_dir is not None:
            try:
                changed.relative_to(template_dir)
                return True
            except ValueError:
                pass
        return False

    async def reload(self, reason: str = "change") -> bool:
        """Load, check and apply the file now. True if a new config is serving, False if rejected or unchanged."""
        async with self._lock:
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(check_config_file, self.path)
            except Exception as exc:  # a bug in the checks: the file stays unapplied, the server keeps serving
                return self._internal_error(exc, "checked", reason)
            if result.config is None:
                return self._reject(ConfigError(result.issues), reason)
            config = result.config
            current = self.engine.runtime
            if config.version_hash == current.config.version_hash:
                log.debug("config reload (%s): content unchanged (version %s)", reason, config.version_hash)
                return False
            try:
                runtime = Runtime.build(
                    config, clock=current.clock, sleep=current.sleep, rng=current.rng, previous=current
                )
            except ConfigError as exc:
                return self._reject(exc, reason)
            except Exception as exc:  # what the checks let through and a component refused: same as a rejection
                return self._internal_error(exc, "built", reason)
            old = self.engine.swap(runtime)
            self.last_error = self.engine.reload_error = None
            self.last_duration_ms = (time.perf_counter() - started) * 1000
            self.engine.metrics.record_reload(True, version=config.version_hash)
            fresh = sorted(set(config.providers) - runtime.unchanged)
            log.info(
                "config reloaded (%s): version %s -> %s in %.1f ms%s",
                reason,
                old.config.version_hash,
                config.version_hash,
                self.last_duration_ms,
                f"; providers starting fresh: {', '.join(fresh)}" if fresh else "",
            )
            for listener in self.listeners:
                try:
                    outcome = listener(old, runtime)
                    if asyncio.iscoroutine(outcome):
                        await outcome
                except Exception:
                    log.exception("a reload listener failed")
            self._close_later(old)
            return True

    def _reject(self, error: ConfigError, reason: str) -> bool:
        text = str(error)
        if text != self.last_error:  # logged once per distinct problem, not on every event
            log.error("config reload (%s) rejected; still serving version %s:\n%s", reason, self._version(), text)
        self.last_error = self.engine.reload_error = text
        self.engine.metrics.record_reload(False, version=self._version(), detail=f"{len(error.issues)} problem(s)")
        return False

    def _internal_error(self, exc: Exception, step: str, reason: str) -> bool:
        log.error("config reload (%s): the new config could not be %s", reason, step, exc_info=exc)
        issue = ConfigIssue(
            str(self.path),
            None,
            None,
            "",
            f"the new config could not be {step} because of an internal error ({type(exc).__name__}); "
            "the details are in the proxy's log",
            "io",
        )
        return self._reject(ConfigError([issue]), reason)

    def _version(self) -> str:
        return self.engine.runtime.config.version_hash

    def _close_later(self, old: Runtime) -> None:
        grace = self.grace_period if self.grace_period is not None else old.config.server.grace_period

        async def close() -> None:
            await asyncio.sleep(grace)
            await old.aclose()

        task = asyncio.create_task(close())
        self._closing[task] = old
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    async def watch(self, *, debounce_ms: int = DEBOUNCE_MS, stop_event: asyncio.Event | None = None) -> None:
        """Watch until cancelled (or `stop_event` is set), reloading after each relevant burst of changes."""
        stop = stop_event if stop_event is not None else asyncio.Event()
        restarted = False
        polling = False  # after the native watcher failed (e.g. out of inotify watches), poll instead
        while not stop.is_set():
            identity = self._watch_identity()
            if not identity:  # the config's directory is gone (an unmounted volume, a replaced directory)
                restarted = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_SECONDS)
                continue
            if restarted:  # the directories are back, maybe with other content: look at it now
                restarted = False
                await self._reload_logged("watched directory replaced")
            paths = [path for path, _, _ in identity]
            log.info("watching %s for config changes", ", ".join(str(p) for p in paths))
            try:
                watcher = watchfiles.awatch(
                    *paths, debounce=debounce_ms, step=20, stop_event=stop, recursive=True, force_polling=polling
                )
                async with contextlib.aclosing(watcher):  # closed at once on `break`, not when collected
                    async for changes in watcher:
                        if any(self.is_relevant(Path(path)) for _, path in changes):
                            await self._reload_logged("file change")
                        if self._watch_identity() != identity:
                            restarted = True
                            break  # a watched directory was replaced or removed, or the template directory moved
            except Exception:  # the watcher itself failed (a directory vanished as it started, inotify limits)
                log.warning("watching %s failed; retrying", ", ".join(str(p) for p in paths), exc_info=True)
                restarted = polling = True
            if restarted and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    async def _reload_logged(self, reason: str) -> None:
        try:
            await self.reload(reason)
        except Exception:  # a subclass's bug must not stop the watching (nor the server): log it, keep serving
            log.exception("config reload failed unexpectedly; still serving version %s", self._version())

    async def aclose(self) -> None:
        """Close the old runtimes still waiting out their grace period now (at shutdown)."""
        pending, self._closing = self._closing, {}
        for task, old in pending.items():
            task.cancel()
            await old.aclose()
