"""Tests for retry-after parsing (proxy/providers/retry_after.py): every header form providers use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.providers.retry_after import parse_go_duration, parse_retry_after

NOW = datetime(2025, 7, 7, 12, 0, 0, tzinfo=UTC)
NOW_TS = NOW.timestamp()


def wait(headers: dict[str, str], status: int | None = 429) -> float | None:
    return parse_retry_after(headers, status=status, now=NOW_TS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("12ms", 0.012),
        ("1h2m3s", 3723.0),
        ("17.142s", 17.142),
        ("0s", 0.0),
        ("1m30.5s", 90.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("5ns", 5e-9),
        (" 2s ", 2.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "6", "6x", "-1s", "s", "1s garbage", "1 s", "1.s", "inf", "1d"])
def test_bad_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


def test_retry_after_ms_wins() -> None:
    assert wait({"retry-after-ms": "644", "retry-after": "20"}) == pytest.approx(0.644)
    assert wait({"retry-after-ms": "1"}) == pytest.approx(0.001)
    assert wait({"retry-after-ms": "0"}) == 0.0


def test_retry_after_seconds() -> None:
    assert wait({"retry-after": "20"}) == 20.0
    assert wait({"retry-after": "1.5"}) == 1.5
    assert wait({"retry-after": " 7 "}) == 7.0


def test_retry_after_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)  # "Mon, 07 Jul 2025 12:01:30 GMT"
    assert wait({"retry-after": later}) == pytest.approx(90.0)
    earlier = format_datetime(NOW - timedelta(seconds=90), usegmt=True)
    assert wait({"retry-after": earlier}) == 0.0  # in the past: retry now
    assert wait({"retry-after": "Mon, 07 Jul 2025 12:01:30 -0000"}) == pytest.approx(90.0)  # no zone: GMT


@pytest.mark.parametrize("status", [429, 503, 529, 500, None])
def test_retry_after_counts_on_any_status(status: int | None) -> None:
    assert wait({"Retry-After": "3"}, status=status) == 3.0


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "3"},
        {"RETRY-AFTER": "3"},
        {"retry-after": "3"},
        {"Retry-After-Ms": "3000"},
    ],
)
def test_keys_are_case_insensitive(headers: dict[str, str]) -> None:
    assert wait(headers) == 3.0


def test_aiohttp_style_multidict_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": "4", "X-RateLimit-Reset-Tokens": "6m0s"}))
    assert parse_retry_after(headers, status=429, now=NOW_TS) == 4.0
    headers = CIMultiDictProxy(CIMultiDict({"X-RateLimit-Reset-Tokens": "6m0s"}))
    assert parse_retry_after(headers, status=429, now=NOW_TS) == 360.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after-ms": "soon"},
        {"retry-after-ms": "-5"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "inf"},
        {"retry-after": "soon"},
        {"retry-after": "-1"},
        {"retry-after": "nan"},
        {"retry-after": "inf"},
        {"retry-after": "Infinity"},
        {"retry-after": "1e400"},
        {"retry-after": ""},
        {"retry-after": "Mon, 99 Foo 2025 25:61:00 GMT"},
        {"x-ratelimit-reset-requests": "soon"},
        {"anthropic-ratelimit-requests-reset": "not a date"},
        {"anthropic-ratelimit-requests-reset": "2025-07-07T12:01:00"},  # no timezone: ambiguous, ignored
        {},
    ],
)
def test_bad_values_are_ignored(headers: dict[str, str]) -> None:
    assert wait(headers) is None


def test_a_bad_preferred_header_falls_back_to_the_next() -> None:
    assert wait({"retry-after-ms": "soon", "retry-after": "5"}) == 5.0
    assert wait({"retry-after": "soon", "x-ratelimit-reset-tokens": "2s"}) == 2.0


def test_openai_reset_headers_take_the_longest_wait() -> None:
    headers = {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1.5s"}
    assert wait(headers) == 360.0
    assert wait({"x-ratelimit-reset-tokens": "644ms"}) == pytest.approx(0.644)


def test_anthropic_rfc3339_resets() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": "2025-07-07T12:00:30Z",
        "anthropic-ratelimit-tokens-reset": "2025-07-07T12:00:10.500Z",
        "anthropic-ratelimit-input-tokens-reset": "2025-07-07T13:00:05+01:00",  # 12:00:05 UTC
        "anthropic-ratelimit-output-tokens-reset": "2025-07-07T11:59:00Z",  # past: 0
    }
    assert wait(headers) == pytest.approx(30.0)
    assert wait({"anthropic-ratelimit-tokens-reset": "2025-07-07T12:00:10.500Z"}) == pytest.approx(10.5)
    assert wait({"anthropic-ratelimit-output-tokens-reset": "2025-07-07T11:59:00Z"}) == 0.0


@pytest.mark.parametrize("status", [None, 400, 500, 503, 529])
def test_reset_headers_only_count_on_429(status: int | None) -> None:
    headers = {"x-ratelimit-reset-requests": "6m0s", "anthropic-ratelimit-requests-reset": "2025-07-07T12:00:30Z"}
    assert wait(headers, status=status) is None
    assert wait(headers, status=429) == 360.0


def test_retry_after_beats_reset_headers() -> None:
    headers = {"retry-after": "2", "x-ratelimit-reset-requests": "6m0s"}
    assert wait(headers) == 2.0


def test_default_now_is_the_clock() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=100), usegmt=True)
    assert 95.0 <= parse_retry_after({"retry-after": later}) <= 100.0
