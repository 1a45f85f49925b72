"""The benchmark's smoke mode (`bench/run.py --quick`) runs end to end, so the harness cannot rot unnoticed.

It starts the fake upstream, the forwarder and the proxy on free ports, checks every column's answers (a plain
and a streamed request each, MCP's `complete_chat` and a cache hit included), measures each for a fraction of a
second with the Python load generator, and prints the table. Nothing here asserts a timing: CI machines are noisy.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
COLUMNS = ["upstream", "forwarder", "proxy openai", "proxy mcp", "proxy cache"]


def test_quick_benchmark_measures_every_column(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--client", "python", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert any(line.split() == " ".join(COLUMNS).split() for line in run.stdout.splitlines()), run.stdout
    assert "targets (proxy openai unless named):" in run.stdout
    results = json.loads(out.read_text())["columns"]
    assert list(results) == COLUMNS
    for name, r in results.items():
        assert r["rps16"] > 0 and r["rps64"] > 0, name
        assert r["c1_p50"] > 0 and r["c1_p99"] >= r["c1_p50"], name
        assert 0 < r["ttfb_p50"] <= r["stream_p50"], name
        assert r["rss_peak"] > 0 and r["cpu_ms"] >= 0, name
        assert not any(v for k, v in r.items() if k.endswith("errors")), (name, r)


def test_percentile_is_nearest_rank():
    sys.path.insert(0, str(BENCH))
    try:
        from client import percentile
    finally:
        sys.path.remove(str(BENCH))
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) == 0.0


def test_the_telemetry_share_counts_samples_with_tracing_frames(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import telemetry_share
    finally:
        sys.path.remove(str(BENCH))
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (asyncio/events.py:80);RequestTrace.__init__ (proxy/spans.py:130);start (proxy/otel_fast.py:200) 3\n"
        "run (asyncio/events.py:80);ClientSession._request (aiohttp/client.py:558) 5\n"  # not the exporter's HTTP
        "Thread._bootstrap (threading.py:995);export (proxy/otlp_encode.py:300) 2\n"
    )
    share, samples, top = telemetry_share.telemetry_share(raw)
    assert (share, samples) == (0.5, 10)
    assert top[0] == ("RequestTrace.__init__ (proxy/spans.py)", 0.3)


def test_the_telemetry_ab_tool_measures_both_states(tmp_path):
    out = tmp_path / "ab.json"
    argv = [sys.executable, str(BENCH / "telemetry_ab.py"), "--seconds", "4", "--window", "0.5", "--client", "python"]
    run = subprocess.run([*argv, "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tracing adds" in run.stdout
    summary = json.loads(out.read_text())
    assert summary["windows"] >= 2 and summary["loop_off_us"] > 0 and summary["loop_on_us"] > 0
    assert summary["exporter_us"] > 0  # the traced windows' spans were exported
    assert 0 < summary["p50_off_ms"] <= summary["p99_off_ms"] and 0 < summary["p50_on_ms"] <= summary["p99_on_ms"]


def test_the_telemetry_ab_summary_compares_the_median_windows():
    sys.path.insert(0, str(BENCH))
    try:
        from telemetry_ab import summarize
    finally:
        sys.path.remove(str(BENCH))
    rows = [
        {"on": False, "loop": 0.3, "others": 0.0, "requests": 1000},  # 300 us per request
        {"on": True, "loop": 0.33, "others": 0.01, "requests": 1000},  # 330 us, and 10 us exporting
        {"on": False, "loop": 0.32, "others": 0.01, "requests": 1000},  # late exports land in an off window
        {"on": True, "loop": 0.35, "others": 0.0, "requests": 1000},
        {"on": True, "loop": 0.0, "others": 0.0, "requests": 0},  # idle: not counted
    ]
    summary = summarize(rows)
    assert summary["loop_off_us"] == 310 and summary["loop_on_us"] == 340
    assert summary["exporter_us"] == 10  # all exporter time, per traced request
    assert round(summary["growth"], 6) == round(350 / 310 - 1, 6)
    assert summary["growth_low"] <= summary["growth"] <= summary["growth_high"]
    assert summary["windows"] == 4


def test_the_telemetry_ab_percentiles_come_from_two_percent_buckets():
    sys.path.insert(0, str(BENCH))
    try:
        from telemetry_ab import _bucket, _percentile
    finally:
        sys.path.remove(str(BENCH))
    counts = collections.Counter(_bucket(ms / 1000) for ms in range(1, 101))  # 1..100 ms
    assert abs(_percentile(counts, 0.5) - 50) / 50 < 0.02
    assert abs(_percentile(counts, 0.99) - 99) / 99 < 0.02
