"""The benchmark's printed report: one table (rows are measurements, columns are what was measured) with the
ratios to the floor, then the issue's targets, each marked met or missed.

Throughput is compared with the forwarder (the Python floor) and latencies with the upstream's own (`+` is what
the column adds). `table(columns, meta)` returns the text; columns are `run.Column`s with their `results`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (label, key, how a cell is shown): `rps` against the forwarder, `ms` with the time added to the upstream's.
ROWS = [
    ("req/s at c16", "rps16", "rps"),
    ("req/s at c64", "rps64", "rps"),
    ("CPU ms per request", "cpu_ms", "plain"),
    ("latency c1 p50 ms", "c1_p50", "ms"),
    ("latency c1 p90 ms", "c1_p90", "ms"),
    ("latency c1 p99 ms", "c1_p99", "ms"),
    ("latency c8 p50 ms", "c8_p50", "ms"),
    ("latency c8 p90 ms", "c8_p90", "ms"),
    ("latency c8 p99 ms", "c8_p99", "ms"),
    ("stream first event p50 ms", "ttfb_p50", "ms"),
    ("stream first event p99 ms", "ttfb_p99", "ms"),
    ("stream whole p50 ms", "stream_p50", "ms"),
    ("RSS, streams open MiB", "rss_streams", "plain"),
    ("peak RSS MiB", "rss_peak", "plain"),
    ("RSS growth 2nd half MiB", "rss_growth", "plain"),
    ("errors", "errors", "plain"),
    ("OTLP exports received", "otlp_posts", "plain"),
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _errors(results: dict[str, float]) -> float:
    return sum(v for k, v in results.items() if k.endswith("errors"))


def _cell(kind: str, value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    if kind == "rps":
        text = f"{value:,.0f}"
        return f"{text} ({value / base:.0%})" if base else text
    if kind == "ms":
        return f"{value:.2f} (+{value - base:.2f})" if base is not None else f"{value:.2f}"
    return f"{value:,.1f}" if value >= 10 or value == 0 else f"{value:.2f}"


def table(columns: list[Any], meta: dict[str, Any]) -> str:
    results = {c.name: {**c.results, "errors": _errors(c.results)} for c in columns}
    floor = results.get("forwarder", {})
    direct = results.get("upstream", {})
    width = max(15, *(len(c.name) + 2 for c in columns))
    lines = [f"{k}: {v}" for k, v in meta.items()]
    lines.append("")
    lines.append("".ljust(27) + "".join(c.name.rjust(width + 2) for c in columns))
    for label, key, kind in ROWS:
        if all(key not in r for r in results.values()):
            continue
        cells = []
        for c in columns:
            r = results[c.name]
            if kind == "rps":
                base = floor.get(key) if c.name not in ("forwarder", "upstream") else None
            elif kind == "ms":
                base = direct.get(key) if c.name != "upstream" else None
            else:
                base = None
            cells.append(_cell(kind, r.get(key), base).rjust(width + 2))
        lines.append(label.ljust(27) + "".join(cells))
    lines.append("")
    lines.append("req/s: (share of the forwarder's); ms: (+ added to the upstream's own)")
    lines += targets(results)
    return "\n".join(lines)


def targets(results: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets against this run; a line per target, `met`, `MISSED` or `not measured`."""
    up, fw = results.get("upstream", {}), results.get("forwarder", {})
    px, mcp, cache = (results.get(n, {}) for n in ("proxy openai", "proxy mcp", "proxy cache"))
    out = ["", "targets (proxy openai unless named):"]

    def line(text: str, ok: bool | None, value: str) -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "MISSED")
        out.append(f"  {verdict:>12}  {text}: {value}")

    def added(r: dict[str, float], key: str) -> float | None:
        return r[key] - up[key] if key in r and key in up else None

    for c in (16, 64):
        key = f"rps{c}"
        share = px[key] / fw[key] if key in px and fw.get(key) else None
        line(f"throughput c{c} >= 60% of the forwarder's", None if share is None else share >= 0.6,
             "-" if share is None else f"{share:.0%}")  # fmt: skip
    for key, limit in (("c1_p50", 0.75), ("c1_p99", 3.0), ("c8_p99", 5.0)):
        a = added(px, key)
        line(f"added latency {key.replace('_', ' ')} < {limit:g} ms", None if a is None else a < limit,
             "-" if a is None else f"+{a:.2f} ms")  # fmt: skip
    a = added(px, "ttfb_p50")
    line("stream first event within 1 ms of the upstream's (p50)", None if a is None else a <= 1.0,
         "-" if a is None else f"+{a:.2f} ms")  # fmt: skip
    if "cpu_ms" in mcp and "cpu_ms" in px and "cpu_ms" in fw:
        ratio = (mcp["cpu_ms"] - fw["cpu_ms"]) / max(px["cpu_ms"] - fw["cpu_ms"], 1e-9)
        lat = (added(mcp, "c1_p50") or 0) / max(added(px, "c1_p50") or 1e-9, 1e-9)
        line("MCP complete_chat overhead within 2x the OpenAI front's", ratio <= 2.0,
             f"{ratio:.1f}x in CPU beyond the forwarder's, {lat:.1f}x in added c1 p50")  # fmt: skip
    else:
        line("MCP complete_chat overhead within 2x the OpenAI front's", None, "-")
    rss = px.get("rss_streams")
    line("RSS with 64 streams open < 120 MB", None if rss is None else rss * 1.048576 < 120,
         "-" if rss is None else f"{rss * 1.048576:.0f} MB")  # fmt: skip
    growth = px.get("rss_growth")
    line(f"no RSS growth over {px.get('leak_requests', 100_000):,.0f} requests (< 2 MiB in the second half)",
         None if growth is None else growth < 2.0, "-" if growth is None else f"{growth:+.1f} MiB")  # fmt: skip
    p50 = cache.get("c1_p50")
    line("cache hit p50 < 0.3 ms end to end at c1", None if p50 is None else p50 < 0.3,
         "-" if p50 is None else f"{p50:.2f} ms")  # fmt: skip
    otel = results.get("proxy otel", {})
    if otel.get("otlp_posts") and "rps16" in px:
        share = min(otel["rps16"] / px["rps16"], otel["rps64"] / px["rps64"])
        line("telemetry on: throughput within 15% of off", share >= 0.85, f"{share:.0%} of off (worse of c16, c64)")
    else:
        why = "no OTLP export reached the receiver (tracing not in this build)" if otel else "-"
        line("telemetry on: throughput within 15% of off", None, why)
    ll = results.get("litellm", {})
    if "rps16" in ll and "rps16" in px:
        rps16, rps64, cpu = px["rps16"] / ll["rps16"], px["rps64"] / ll["rps64"], ll["cpu_ms"] / px["cpu_ms"]
        versus = f"{rps16:.0f}x the throughput at c16, {rps64:.0f}x at c64, {cpu:.0f}x less CPU per request"
        out.append(f"  proxy openai vs litellm: {versus}")
    return out
