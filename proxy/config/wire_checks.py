"""Checks of config values that end up on the wire, so a bad one is reported when the config loads instead of
failing every request (or the process) later:

- URLs (`providers.<name>.base_url`, `state.url`, `telemetry.traces.endpoint`) must have a host (a path for
  `unix://`), a port in 1-65535 and no spaces or control characters;
- values sent as HTTP headers (`api_key`, `headers`, `organization`, `project`, `api_version`) must not contain a
  line break or another control character: a key read from a secret file often ends with a newline, which HTTP
  clients refuse ("header injection") on every request;
- header names must be HTTP tokens (letters, digits and ``!#$%&'*+-.^_`|~``; no spaces or colons).

Messages never repeat a key's or a header's value, nor a URL (it may carry a password).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from proxy.config.yaml_source import Path

Problem = tuple[Path, str, bool]  # (path, message, points at the key)

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_HEADER_FIELDS = ("api_key", "organization", "project", "api_version")
_HTTP_SCHEMES = ("http", "https")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """What is wrong with `url` (without quoting it), or None."""
    if _SPACE_OR_CONTROL.search(url):
        return "the URL contains a space, a line break or another control character"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # `Port out of range 0-65535`, `Port could not be cast to integer value as '::'`
        detail = str(exc)
        if "Port" in detail or "port" in detail:
            return "the URL's port is not a number from 1 to 65535"
        return f"the URL cannot be read ({detail})"
    if parts.scheme not in schemes:
        return None  # the schema's pattern reports a wrong scheme
    if parts.scheme == "unix":
        return None if parts.path else "a `unix://` URL needs the socket's path, e.g. `unix:///run/redis.sock`"
    if not parts.hostname:
        return "the URL has no host name, e.g. `http://127.0.0.1:8000/v1`"
    if port == 0:
        return "the URL's port is not a number from 1 to 65535"
    return None


def header_value_problem(value: str) -> str | None:
    if _CONTROL.search(value):
        where = "ends with" if _CONTROL.search(value.rstrip("\r\n\t ")) is None else "contains"
        return (
            f"the value {where} a line break or another control character, which cannot be sent in an HTTP header "
            "(read from a file with a trailing newline?)"
        )
    return None


def _string(section: Any, key: str) -> str | None:
    value = section.get(key) if isinstance(section, dict) else None
    return value if isinstance(value, str) else None


def wire_problems(data: dict[str, Any]) -> list[Problem]:
    """Every problem with a URL, header name or header value in (schema-checked) `data`."""
    problems: list[Problem] = []
    providers = data.get("providers")
    for name, provider in (providers if isinstance(providers, dict) else {}).items():
        if not isinstance(provider, dict):
            continue
        base = ("providers", name)
        url = _string(provider, "base_url")
        if url and (problem := url_problem(url, _HTTP_SCHEMES)):
            problems.append(((*base, "base_url"), problem, False))
        for field in _HEADER_FIELDS:
            value = _string(provider, field)
            if value and (problem := header_value_problem(value)):
                problems.append(((*base, field), problem, False))
        headers = provider.get("headers")
        for header, value in (headers if isinstance(headers, dict) else {}).items():
            if not _TOKEN.match(header):
                problems.append(
                    (
                        (*base, "headers", header),
                        f"`{header[:60]}` is not a valid HTTP header name: use letters, digits and "
                        "``!#$%&'*+-.^_`|~`` (no spaces or colons)",
                        True,
                    )
                )
            elif isinstance(value, str) and (problem := header_value_problem(value)):
                problems.append(((*base, "headers", header), problem, False))
    url = _string(data.get("state"), "url")
    if url and (problem := url_problem(url, _REDIS_SCHEMES)):
        problems.append((("state", "url"), problem, False))
    traces = data.get("telemetry", {}).get("traces") if isinstance(data.get("telemetry"), dict) else None
    endpoint = _string(traces, "endpoint")
    if endpoint and (problem := url_problem(endpoint, _HTTP_SCHEMES)):
        problems.append((("telemetry", "traces", "endpoint"), problem, False))
    return problems
