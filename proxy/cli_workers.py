"""`llm-proxy serve --workers N`: N HTTP server processes on one host sharing one listening socket.

    code = run_workers(config, options, workers=4, config_path="proxy.yaml")    # blocks; the exit code

A CLI module (like `proxy.cli_serve`): only those may reach into `proxy.fronts`, which the children need.
The parent binds the socket once and spawns N children (`python -m proxy.cli_workers --child ...`) that inherit it
(`pass_fds`); the kernel hands each new connection to one of the processes accepting on it. Every child is a whole
proxy: its own engine, config watcher, SIGHUP reload and graceful shutdown (`proxy.cli_serve.serve`).
The parent:
- refuses to start (`WorkersError`, exit 1) when `state.backend` is `memory` and a set limit is not marked
  `per_worker: true`: each process would keep its own buckets, so N workers would together allow N times every
  limit; shared limits need `state.backend: redis` (`check_worker_state`);
- logs `ready: N workers serving http://HOST:PORT` once every child listens (each reports on a pipe);
- forwards SIGTERM/SIGINT (as SIGTERM: each child drains its calls in flight) and SIGHUP (reload) to the children;
- restarts a child that dies after it was serving; a child that dies before (a bad config, say) stops them all
  with exit code 1;
- holds the write end of a "lifeline" pipe: if the parent dies, even by SIGKILL, the children read EOF and shut
  down rather than serve on unsupervised.
Children run in their own session, so a terminal's Ctrl-C reaches only the parent, which then stops them once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from proxy.cli_serve import ServeOptions, configure_logging, serve, serving_gc
from proxy.config.load import load_config
from proxy.config.model import Config
from proxy.errors import ConfigError, ProxyError
from proxy.sockets import set_nodelay

log = logging.getLogger("proxy.cli_workers")

KILL_MARGIN = 5.0  # after SIGTERM, how much longer than the grace period the children get before SIGKILL


class WorkersError(ProxyError):
    """`--workers` cannot run with this config or these options."""


def check_worker_state(config: Config, workers: int) -> None:
    """Raise `WorkersError` when `workers` processes would multiply the config's limits (see the module docs)."""
    if workers <= 1 or config.state.backend == "redis":
        return
    unmarked = [f"providers.{name}.limits" for name, provider in config.providers.items() if _unmarked(provider.limits)]
    for model_name, model in config.models.items():
        unmarked.extend(
            f"models.{model_name}.targets[{index}].limits"
            for index, target in enumerate(model.targets)
            if target.limits is not None and _unmarked(target.limits)
        )
    if unmarked:
        raise WorkersError(
            f"--workers {workers} with `state.backend: memory`: every worker process would keep its own rate-limit "
            f"buckets, so together they would allow {workers} times each limit. Not marked `per_worker: true`: "
            f"{', '.join(unmarked)}. Use `state.backend: redis` to share the limits, or mark each limit "
            "`per_worker: true` (then each worker allows it in full), or run one worker."
        )


def _unmarked(limits: Any) -> bool:
    return limits.any and not limits.per_worker


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (port 0: any free port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise WorkersError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    set_nodelay(sock)  # inherited by accepted connections: no Nagle stall
    sock.set_inheritable(True)
    return sock


def run_workers(config: Config, options: ServeOptions, workers: int, *, config_path: str | None) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; 0 after a clean stop, 1 when they cannot run."""
    try:
        if options.transport != "http":
            raise WorkersError("--workers needs the http transport (one stdio client cannot be shared)")
        check_worker_state(config, workers)
        sock = bind(options.host, options.port)
    except WorkersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if config.cache.backend == "memory":
        log.info("each worker keeps its own response cache (`cache.backend: redis` shares one)")
    try:
        return asyncio.run(_Supervisor(sock, options, workers, config_path, config.server.grace_period).run())
    finally:
        sock.close()


class _Supervisor:
    def __init__(
        self, sock: socket.socket, options: ServeOptions, workers: int, config_path: str | None, grace: float
    ) -> None:
        self.sock = sock
        self.options = options
        self.workers = workers
        self.config_path = config_path
        self.grace = grace
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.ready: set[int] = set()
        self.stopping = asyncio.Event()
        self.code = 0
        self._watchers: set[asyncio.Task[None]] = set()
        self._ready_r, self._ready_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        self._buffer = b""

    def _command(self, index: int) -> list[str]:
        command = [sys.executable, "-m", "proxy.cli_workers", "--child", str(index), "--host", self.options.host]
        command += ["--fds", f"{self.sock.fileno()},{self._ready_w},{self._life_r}"]
        if self.config_path:
            command += ["--config", self.config_path]
        if not self.options.watch:
            command.append("--no-watch")
        return command

    async def _spawn(self, index: int) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._command(index),
            pass_fds=(self.sock.fileno(), self._ready_w, self._life_r),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[index] = process
        watcher = asyncio.create_task(self._watch(index, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, index: int, process: asyncio.subprocess.Process) -> None:
        """Restart a child that died after it was serving; one that died before (a bad config, say) stops all."""
        code = await process.wait()
        if self.stopping.is_set():
            return
        if index not in self.ready:
            log.error("worker %d exited with code %s before it was serving; stopping", index, code)
            self.code = 1
            self.stopping.set()
            return
        self.ready.discard(index)
        log.warning("worker %d (pid %d) exited with code %s; starting another", index, process.pid, code)
        await self._spawn(index)

    def _on_ready_pipe(self) -> None:
        self._buffer += os.read(self._ready_r, 4096)
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.ready.add(int(line.split()[0]))
        if lines and len(self.ready) == self.workers:
            host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
            pids = " ".join(str(p.pid) for p in self.processes.values())
            port = self.sock.getsockname()[1]
            log.info("ready: %d workers serving http://%s:%d (pids %s)", self.workers, host, port, pids)

    def _signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def _stop(self, signum: int) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping %d workers", signal.Signals(signum).name, self.workers)
            self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._ready_r, self._on_ready_pipe)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        try:
            for index in range(self.workers):
                await self._spawn(index)
            await self.stopping.wait()
            await self._shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            loop.remove_reader(self._ready_r)
            for fd in (self._ready_r, self._ready_w, self._life_r, self._life_w):
                os.close(fd)
        return self.code

    async def _shutdown(self) -> None:
        """SIGTERM every child (each drains within the grace period), SIGKILL those still running after it."""
        for watcher in list(self._watchers):
            watcher.cancel()
        self._signal_all(signal.SIGTERM)
        processes = list(self.processes.items())
        try:
            async with asyncio.timeout(self.grace + KILL_MARGIN):
                await asyncio.gather(*(process.wait() for _, process in processes))
        except TimeoutError:
            for index, process in processes:
                if process.returncode is None:
                    log.warning("worker %d did not stop in time; killing it", index)
                    process.kill()
            await asyncio.gather(*(process.wait() for _, process in processes))


# --- the child ------------------------------------------------------------------------------------------


async def _child(config: Config, options: ServeOptions, sock: socket.socket, index: int, ready: int, life: int) -> None:
    import anyio

    stop = anyio.Event()
    loop = asyncio.get_running_loop()

    def on_lifeline() -> None:  # readable: the parent closed its end (it exited or died)
        if not os.read(life, 1):
            loop.remove_reader(life)
            log.warning("the supervising process is gone; shutting down")
            stop.set()

    def on_ready(url: str) -> None:
        os.write(ready, f"{index} {os.getpid()}\n".encode())

    loop.add_reader(life, on_lifeline)
    try:
        await serve(config, options, stop=stop, on_ready=on_ready, sock=sock)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(life)


def _tag_log_records(index: int) -> None:
    """Every log record of this process carries `worker` (its index), which JSON log lines show."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = index
        return record

    logging.setLogRecordFactory(tagged)


def child_main(argv: list[str]) -> int:
    """Entry point of one worker process (`python -m proxy.cli_workers --child INDEX ...`, started by the parent)."""
    parser = argparse.ArgumentParser(prog="llm-proxy worker")
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--fds", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--no-watch", action="store_true")
    args = parser.parse_args(argv)
    sock_fd, ready, life = (int(fd) for fd in args.fds.split(","))
    sock = socket.socket(fileno=sock_fd)
    configure_logging("info")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    configure_logging(config.telemetry.logs.level, config.telemetry.logs.format)
    _tag_log_records(args.child)
    options = ServeOptions(transport="http", host=args.host, port=sock.getsockname()[1], watch=not args.no_watch)
    code = 0
    try:
        with serving_gc():
            asyncio.run(_child(config, options, sock, args.child, ready, life))
    except* ProxyError as group:  # ConfigError from building the runtime
        for error in group.exceptions:
            print(f"error: {error}", file=sys.stderr)
        code = 1
    except* KeyboardInterrupt:
        code = 130
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m proxy.cli_workers --workers N [--config PATH] [--host H] [--port P] [--no-watch]`: what
    `llm-proxy serve --workers N` runs (also `--child ...`, the worker side)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return child_main(argv)
    parser = argparse.ArgumentParser(prog="python -m proxy.cli_workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--no-watch", action="store_true")
    args = parser.parse_args(argv)
    path = args.config or os.environ.get("LLM_PROXY_CONFIG") or None
    configure_logging("info")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    http = config.server.http
    options = ServeOptions(
        transport="http",
        host=args.host if args.host is not None else http.host,
        port=args.port if args.port is not None else http.port,
        watch=not args.no_watch,
    )
    return run_workers(config, options, args.workers, config_path=path)


if __name__ == "__main__":
    sys.exit(main())
