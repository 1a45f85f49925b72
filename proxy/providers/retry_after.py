"""Parse how long an upstream asks us to wait, from every header form providers use.

In order of preference: `retry-after-ms` (milliseconds), `retry-after` (seconds, or an HTTP date),
then the rate-limit reset headers: OpenAI's `x-ratelimit-reset-requests|tokens` (Go durations such as `6m0s`,
`1.5s`, `12ms`) and Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339 timestamps). Reset headers only count on
a 429, where they say when capacity returns. All return seconds (float >= 0) or None.

Numbers are read as HTTP writes them: ASCII digits with an optional fraction (`20`, `1.5`); anything else (`1e3`,
`1_000`, `inf`, full-width digits, a negative) is ignored, as are unreadable dates. A wait longer than
`MAX_RETRY_AFTER` (one day: an upstream cannot mean more, and `1e308` is not a wait) is cut to it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 86400.0
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)", re.ASCII)
_HTTP_NUMBER = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_OPENAI_RESETS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
_ANTHROPIC_RESETS = (
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)


def parse_go_duration(text: str) -> float | None:
    """`6m0s` -> 360.0, `1.5s` -> 1.5, `12ms` -> 0.012; None if `text` is not such a duration."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    pos = 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _number(value: str) -> float | None:
    value = value.strip()
    return float(value) if _HTTP_NUMBER.fullmatch(value) else None


def _bounded(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _parse_seconds_or_date(value: str, now: float) -> float | None:
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # `-0000` ("zone unknown"): HTTP dates are GMT, not local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _parse_rfc3339(value: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_retry_after(
    headers: Mapping[str, str], *, status: int | None = None, now: float | None = None
) -> float | None:
    """Seconds to wait before retrying, from `headers` (keys compared case-insensitively), or None."""
    lowered = {k.lower(): v for k, v in headers.items()} if not _is_lowercase(headers) else headers
    now = time.time() if now is None else now
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        millis = _number(ms)
        value = _bounded(millis / 1000.0) if millis is not None else None
        if value is not None:
            return value
    ra = lowered.get("retry-after")
    if ra is not None:
        value = _bounded(_parse_seconds_or_date(ra, now))
        if value is not None:
            return value
    if status != 429:
        return None
    resets = [parse_go_duration(lowered.get(h, "")) for h in _OPENAI_RESETS]
    resets += [_parse_rfc3339(lowered[h], now) for h in _ANTHROPIC_RESETS if h in lowered]
    waits = [wait for wait in map(_bounded, resets) if wait is not None]
    return max(waits) if waits else None


def _is_lowercase(headers: Mapping[str, str]) -> bool:
    # aiohttp's CIMultiDictProxy already compares case-insensitively.
    return type(headers).__name__ in {"CIMultiDictProxy", "CIMultiDict"}
