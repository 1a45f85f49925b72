"""What every HTTP endpoint shares: reading a JSON body safely, the two APIs' error shapes, and answer headers.

- `read_json_object(request)` reads at most `MAX_BODY_BYTES` (413 beyond, without buffering the rest), refuses
  a compressed body (415: `Content-Encoding` other than `identity`) and a body that is not a JSON object (400 naming
  the problem and where; whatever the content type said, the body is tried as JSON), and never raises anything but
  `BodyError` (and Starlette's `ClientDisconnect` when the client leaves mid-body).
- `openai_error(...)` / `anthropic_error(...)` build each API's error response with the right status and a
  `retry-after` header when the client should come back later; `error_for_path` picks the shape by URL.
- `proxy_error_response(api, error)` maps a `ProxyError` (unknown model, rate limited, all targets failed, ...)
  onto those shapes with the error's own status.
- `answer_headers(...)` are the `x-llm-proxy-*` headers naming who answered.
- `until_disconnect(receive, awaitable)` awaits the engine's work, cancelling it and raising `ClientGone` if the
  client disconnects first; a front then answers `CLIENT_CLOSED` (499), which nobody reads; a stream's
  first chunk is awaited so, through `first_chunk(stream)`.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterable, Awaitable
from typing import Any, Literal, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive

from proxy.errors import AllTargetsFailed, ProxyError, RateLimited, RequestError, UpstreamError
from proxy.fronts.fields import json_kind

MAX_BODY_BYTES = 20 * 1024 * 1024  # images travel as base64 inside the JSON
CLIENT_CLOSED = 499  # nginx's "client closed request"; nobody reads it, the connection is gone
Api = Literal["openai", "anthropic"]
T = TypeVar("T")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
    503: "overloaded_error",
}


class BodyError(Exception):
    """The request body is unusable; `status` is 400 or 413."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


async def read_json_object(request: Request, *, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or `BodyError` saying what is wrong with it."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BodyError(
            415, f"the request body is `{encoding[:40]}`-encoded (Content-Encoding); send it uncompressed, as JSON"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"the request body is {declared} bytes; the limit is {max_bytes}")
    # Any content type is parsed as JSON (`curl -d` sends form-urlencoded by default); it is only named when the
    # body then turns out not to be JSON.
    content_type = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    json_type = content_type in ("", "application/json") or content_type.endswith("+json")
    hint = "" if json_type else f" (it was sent as `{content_type}`; send JSON as application/json)"
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyError(413, f"the request body is larger than the {max_bytes}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BodyError(400, "the request body is empty; expected a JSON object")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise BodyError(400, "the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BodyError(400, f"the request body is not valid JSON: {exc.msg} at {where}{hint}") from None
    except RecursionError:
        raise BodyError(400, "the request body nests too deeply") from None
    except ValueError:  # an integer longer than Python's int-parsing limit (the only other ValueError)
        limit = sys.get_int_max_str_digits()
        raise BodyError(400, f"the request body holds a number with more than {limit} digits") from None
    if not isinstance(value, dict):
        raise BodyError(400, f"the request body must be a JSON object, not {json_kind(value)}")
    return value


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None or not math.isfinite(retry_after):
        return {}
    return {
        "retry-after": str(max(1, math.ceil(retry_after))),
        "retry-after-ms": str(max(0, round(retry_after * 1000))),
    }


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    error_type: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """`{"error": {"message", "type", "param", "code"}}` as OpenAI sends it."""
    body = {
        "error": {
            "message": message,
            "type": error_type
            or _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers={**_retry_headers(retry_after), **(headers or {})})


def anthropic_error(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """`{"type": "error", "error": {"type", "message"}}` as Anthropic sends it."""
    kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers={**_retry_headers(retry_after), **(headers or {})})


def error_for_path(path: str, status: int, message: str, *, code: str | None = None) -> JSONResponse:
    """An error in the shape the API at `path` uses (Anthropic for `/v1/messages`, else OpenAI's)."""
    if path.startswith("/v1/messages"):
        return anthropic_error(status, message)
    return openai_error(status, message, code=code)


def body_error_response(api: Api, error: BodyError) -> JSONResponse:
    if api == "anthropic":
        return anthropic_error(error.status, error.message)
    return openai_error(error.status, error.message, param=error.param)


def retry_after_of(error: ProxyError) -> float | None:
    if isinstance(error, RateLimited | UpstreamError | AllTargetsFailed):
        return error.retry_after
    return None


def proxy_error_response(api: Api, error: ProxyError) -> JSONResponse:
    """A `ProxyError` from the engine in the API's error shape, with its status and any retry-after."""
    status = error.status_code
    retry_after = retry_after_of(error)
    message = str(error)
    if api == "anthropic":
        return anthropic_error(status, message, retry_after=retry_after)
    param = error.param if isinstance(error, RequestError) else None
    code = "model_not_found" if status == 404 and param == "model" else None
    if isinstance(error, UpstreamError) and error.code:
        code = error.code
    return openai_error(status, message, param=param, code=code, retry_after=retry_after)


def answer_headers(provider: str | None, model: str | None, cached: bool) -> dict[str, str]:
    """Who answered: the provider's config name, the model id of the target, and whether the cache did."""
    headers = {"x-llm-proxy-cache": "hit" if cached else "miss"}
    if provider:
        headers["x-llm-proxy-provider"] = provider
    if model:
        headers["x-llm-proxy-model"] = model
    return headers


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it and raising `ClientGone` if the client disconnects first.

    Plain asyncio cancellation (one `CancelledError`), so the engine's cleanup (closing the upstream, releasing
    rate-limit leases) runs to completion. Call only once the request body has been read."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watcher):
            if not task.done():
                task.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)
    if work.cancelled():
        raise ClientGone
    return work.result()


async def first_chunk(stream: AsyncIterable[T]) -> T | None:
    """The first item of `stream` (an engine stream's first chunk), or None when it is empty."""
    return await anext(aiter(stream), None)
