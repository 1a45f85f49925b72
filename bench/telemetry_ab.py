"""What tracing costs per request, measured inside one loaded proxy that turns its tracing off and on by turns.

    bench/.venv/bin/python bench/telemetry_ab.py [--seconds 60] [--window 1] [--client wrk|python] [--proxy-src DIR]

Why: on a shared VM the CPU a request costs drifts by 20-30 % from one minute to the next, so a difference of two
runs (or two processes) cannot settle a 15 % question. Here one proxy process (the `proxy otel` column's config:
every request traced, exported over OTLP/HTTP to the fake upstream) runs under a wrapper that switches its tracing
off and on every `--window` seconds (`proxy.telemetry.install`), while a closed loop at concurrency 16 (`--concurrency`)
keeps it busy.
Each window records the event loop's thread CPU (`time.thread_time`), the other threads' (the span exporter's, from
/proc) and the requests served. Drift hits neighbouring windows alike, so the medians of the two states compare.

Prints, per state: the event loop's CPU per request (median over windows), the other threads' CPU per traced request
(all of it counted against tracing, since the exporter only works for traced requests), and the growth with tracing
on, with a bootstrap 90 % interval for it (its width shows how noisy the machine was); and per state the p50 and p99
of the time each request spends in the proxy (from its ASGI call to the end of its answer; the fake upstream answers
at once), in 2 % buckets: at concurrency 1 or 8 that is the latency the proxy adds, tail included.
The proxy runs on core 0, the load and the upstream on core 1 (`taskset`), as in bench/run.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


# --- inside the proxy ----------------------------------------------------------------------------------------------


def _threads_cpu() -> dict[int, float]:
    cpu = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended
            continue
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return cpu


_STEP = math.log(1.02)  # request times are counted in buckets 2 % wide


def _bucket(seconds: float) -> int:
    return math.floor(math.log(max(seconds, 1e-7)) / _STEP)


def _percentile(counts: collections.Counter[int], fraction: float) -> float:
    """The `fraction` percentile of bucketed times, in ms (the bucket's middle)."""
    wanted, seen = fraction * sum(counts.values()), 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= wanted:
            return math.exp((bucket + 0.5) * _STEP) * 1e3
    return math.nan


def serve_alternating(argv: list[str], window: float, out: Path) -> None:
    """Run `llm-proxy serve ...argv` in this process, counting requests and switching tracing every `window` s."""
    import asyncio

    from proxy import telemetry
    from proxy.cli import main
    from proxy.fronts import http_app

    served = [0]
    times: collections.Counter[int] = collections.Counter()  # this window's request times, by _bucket
    tasks: list[asyncio.Task[None]] = []  # a reference, so the task is not collected
    rows: list[dict[str, float | bool]] = []
    original = http_app.ProxyMiddleware.__call__

    async def alternate() -> None:
        tracing, on = telemetry.active(), True
        me = os.getpid()
        while True:
            cpu0, n0, threads0 = time.thread_time(), served[0], _threads_cpu()
            await asyncio.sleep(window)
            cpu1, n1, threads1 = time.thread_time(), served[0], _threads_cpu()
            others = sum(cpu - threads0.get(tid, 0.0) for tid, cpu in threads1.items() if tid != me)
            row = {"on": on, "loop": cpu1 - cpu0, "others": others, "requests": n1 - n0, "times": dict(times)}
            rows.append(row)
            times.clear()
            on = not on
            telemetry.install(tracing if on else None)
            out.with_suffix(".tmp").write_text(json.dumps(rows))
            out.with_suffix(".tmp").replace(out)

    async def counting(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            if not served[0]:  # the first request starts the alternation
                tasks.append(asyncio.get_running_loop().create_task(alternate()))
            served[0] += 1
            started = time.perf_counter()
            try:
                await original(self, scope, receive, send)
            finally:
                times[_bucket(time.perf_counter() - started)] += 1
            return
        await original(self, scope, receive, send)

    http_app.ProxyMiddleware.__call__ = counting  # type: ignore[method-assign]
    sys.exit(main(argv))


# --- the driver ----------------------------------------------------------------------------------------------------


def _growth(rows: list[dict]) -> tuple[float, float, float, float]:
    """Loop CPU per request off and on (median of windows), exporter per traced request (us), and the growth."""
    off = [r["loop"] / r["requests"] * 1e6 for r in rows if not r["on"] and r["requests"]]
    on = [r["loop"] / r["requests"] * 1e6 for r in rows if r["on"] and r["requests"]]
    traced = sum(r["requests"] for r in rows if r["on"])
    if not off or not on or not traced:
        raise RuntimeError(f"not enough windows with requests in both states: {rows}")
    exporter = sum(r["others"] for r in rows) / traced * 1e6
    loop_off, loop_on = statistics.median(off), statistics.median(on)
    return loop_off, loop_on, exporter, (loop_on + exporter) / loop_off - 1


def summarize(rows: list[dict], resamples: int = 2000) -> dict[str, float]:
    """Per state: the loop's CPU per request (median of windows), the other threads' per traced request (us); the
    growth, and its 90 % interval from a bootstrap over the windows (each state's windows drawn with replacement):
    how far the figure could move from window noise alone (drift between states is what the alternation cancels)."""
    rows = [r for r in rows if r["requests"]]
    loop_off, loop_on, exporter, growth = _growth(rows)
    states = [[r for r in rows if not r["on"]], [r for r in rows if r["on"]]]
    draw = random.Random(0).choices
    samples = sorted(_growth([*draw(states[0], k=len(states[0])), *draw(states[1], k=len(states[1]))])[3]
                     for _ in range(resamples))  # fmt: skip
    times: list[collections.Counter[int]] = [collections.Counter(), collections.Counter()]
    for row in rows:
        times[bool(row["on"])].update({int(bucket): n for bucket, n in row.get("times", {}).items()})
    return {
        "p50_off_ms": _percentile(times[0], 0.5),
        "p99_off_ms": _percentile(times[0], 0.99),
        "p50_on_ms": _percentile(times[1], 0.5),
        "p99_on_ms": _percentile(times[1], 0.99),
        "windows": len(rows),
        "loop_off_us": loop_off,
        "loop_on_us": loop_on,
        "exporter_us": exporter,
        "growth": growth,
        "growth_low": samples[int(0.05 * (resamples - 1))],
        "growth_high": samples[int(0.95 * (resamples - 1))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per state (1)")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16: the proxy saturated)")
    parser.add_argument("--proxy-src", type=Path, default=BENCH.parent, help="checkout whose `proxy` to run")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    if sys.argv[1:2] == ["--serve"]:  # the proxy side: --serve WINDOW ROWS_FILE <llm-proxy arguments>
        serve_alternating(sys.argv[4:], float(sys.argv[2]), Path(sys.argv[3]))
        return 0
    options = parser.parse_args()

    sys.path.insert(0, str(BENCH))
    import run
    import servers
    from servers import PROXY_TOKEN, Server

    headers = {"authorization": f"Bearer {PROXY_TOKEN}", "content-type": "application/json"}
    column = run.Column("proxy otel", "proxy", "/v1/chat/completions", headers, run.openai_body(), b"")
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        workdir = Path(tmp)
        rows_file = workdir / "windows.json"
        upstream_port, proxy_port = servers.free_port(), servers.free_port()
        config = servers.proxy_config(workdir, upstream_port, telemetry=True)
        serve = servers.proxy_argv(options.python, proxy_port, config)[3:]  # after `python -m proxy`
        proxy_argv = [options.python, __file__, "--serve", str(options.window), str(rows_file)]
        env = {**os.environ, "PYTHONPATH": str(options.proxy_src)}
        load = run.Load(options.client, "1", workdir)
        with (
            Server.start("upstream", servers.upstream_argv(options.python, upstream_port, 20, 5, 10),
                         port=upstream_port, core="1", workdir=workdir),
            Server.start("proxy", [*proxy_argv, *serve], port=proxy_port, core="0", workdir=workdir,
                         cwd=options.proxy_src, env=env) as proxy,
        ):  # fmt: skip
            load.run(proxy_port, column, options.concurrency, min(2.0, options.seconds))  # warm up; starts alternating
            skip = len(json.loads(rows_file.read_text())) if rows_file.exists() else 0
            load.run(proxy_port, column, options.concurrency, options.seconds)
            time.sleep(options.window * 1.5)  # the window in progress when the load stopped
            rows = json.loads(rows_file.read_text())[skip + 1 :]  # + the window the warm-up ended in
            rows = [r for r in rows if r["requests"]]
            if not rows:
                raise RuntimeError(f"the proxy recorded no windows:\n{proxy.tail()}")
    summary = summarize(rows)
    state = f"tracing off and on by turns (OpenAI front, c{options.concurrency})"
    print(f"{summary['windows']} windows of {options.window:g} s, {state}")
    print(f"  event loop CPU per request: off {summary['loop_off_us']:.1f} us, on {summary['loop_on_us']:.1f} us")
    print(f"  exporter thread CPU per traced request: {summary['exporter_us']:.1f} us")
    print(
        f"  tracing adds {summary['growth']:.1%} to the CPU a request costs"
        f" (90 % interval {summary['growth_low']:.1%} to {summary['growth_high']:.1%})"
    )
    print(
        f"  time in the proxy per request (from the ASGI call to its end), p50 / p99: off {summary['p50_off_ms']:.2f}"
        f" / {summary['p99_off_ms']:.2f} ms, on {summary['p50_on_ms']:.2f} / {summary['p99_on_ms']:.2f} ms"
    )
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
