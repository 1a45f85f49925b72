"""What tracing costs the proxy, as a share of its own CPU: robust to a noisy machine, unlike a difference of two runs.

    bench/.venv/bin/python bench/telemetry_share.py [--seconds 15] [--runs 2] [--proxy-src CHECKOUT]

Starts the fake upstream (core 1) and the proxy with every request traced and exported over OTLP/HTTP to it (core 0,
the `proxy otel` column's config), loads the OpenAI front with wrk at concurrency 16 (core 1), and samples the proxy
with py-spy (`--gil`: only the thread holding the GIL, i.e. the CPU the process spends in Python) while it does. A
sample counts as telemetry when any frame on its stack is the proxy's span or export code or the OpenTelemetry SDK's
(the exporter's thread included). Both variants run in the same process at the same time, so other work on the
machine slows both alike; throughput and CPU differences between two runs swing by 20-30 % here.

Prints the share per run, and the growth it implies for the process's CPU per request: share / (1 - share) (with
tracing off that code does not run). Needs `wrk` and `py-spy` (`pip install py-spy`; ptrace rights: root, or
`kernel.yama.ptrace_scope=0`).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
import servers
from servers import PROXY_TOKEN, Server

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Frames that exist only because tracing is on: the proxy's span and export code, the OTel SDK/API, the exporter's
# HTTP client (requests, urllib3, http.client; aiohttp's own `client.py` is excluded by the leading "(").
TELEMETRY_FRAMES = (
    "proxy/otel_fast.py",
    "proxy/otlp_encode.py",
    "proxy/spans.py",
    "_server_span (",
    "(trace/",
    "(context/",
    "(propagate/",
    "(propagators/",
    "(baggage/",
    "(sdk/",
    "_shared_internal/",
    "(requests/",
    "(urllib3/",
    " (http/client.py",
    "(threading.py",
)


def telemetry_share(raw: Path, top: int = 8) -> tuple[float, int, list[tuple[str, float]]]:
    """(share of samples with a telemetry frame, samples, the outermost telemetry frames with the largest shares)."""
    total = hits = 0
    outermost: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        found = [frame for frame in frames if any(mark in frame for mark in TELEMETRY_FRAMES)]
        if found:
            hits += n
            outermost[re.sub(r":\d+\)", ")", found[0])] += n
    if not total:
        raise RuntimeError(f"py-spy recorded no samples in {raw}")
    return hits / total, total, [(frame, n / total) for frame, n in outermost.most_common(top)]


def wrk(port: int, body: Path, seconds: float) -> str:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    argv = ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds:g}s", "-s", str(BENCH / "post.lua"), url]
    argv += ["--", str(body), f"Authorization: Bearer {PROXY_TOKEN}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="sampled seconds per run (15)")
    parser.add_argument("--runs", type=int, default=2, help="runs (2)")
    parser.add_argument("--proxy-src", type=Path, default=ROOT, help="checkout whose `proxy` to run")
    parser.add_argument("--python", default=sys.executable)
    options = parser.parse_args()
    for tool in ("wrk", "py-spy", "taskset"):
        if not shutil.which(tool):
            print(f"telemetry_share: `{tool}` not found (wrk: apt-get install wrk; py-spy: pip install py-spy)")
            return 2
    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        workdir = Path(tmp)
        body = workdir / "body.json"
        body.write_bytes(run.openai_body())
        upstream_port, proxy_port = servers.free_port(), servers.free_port()
        config = servers.proxy_config(workdir, upstream_port, telemetry=True)
        upstream_argv = servers.upstream_argv(options.python, upstream_port, 20, 5, 10)
        proxy_argv = servers.proxy_argv(options.python, proxy_port, config)
        with (
            Server.start("upstream", upstream_argv, port=upstream_port, core="1", workdir=workdir),
            Server.start("proxy", proxy_argv, port=proxy_port, core="0", workdir=workdir, cwd=options.proxy_src) as px,
        ):
            wrk(proxy_port, body, 2)  # warm up
            pid = str(px.process.pid)  # `taskset` exec'd into the proxy
            shares = []
            for index in range(options.runs):
                raw = workdir / f"run{index}.txt"
                record = ["py-spy", "record", "--gil", "-r", "400", "-f", "raw", "-d", f"{options.seconds:g}"]
                spy = subprocess.Popen(
                    [*record, "-p", pid, "-o", str(raw)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wrk(proxy_port, body, options.seconds)
                spy.wait()
                share, samples, top = telemetry_share(raw)
                shares.append(share)
                print(f"run {index + 1}: telemetry {share:.1%} of {samples} samples -> CPU +{share / (1 - share):.1%}")
                for frame, part in top:
                    print(f"    {part:6.1%}  {frame}")
    mean = sum(shares) / len(shares)
    print(f"mean share {mean:.1%}: tracing adds about {mean / (1 - mean):.1%} to the proxy's CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
