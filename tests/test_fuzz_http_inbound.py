"""Adversarial inputs to the HTTP fronts over real HTTP, case by case (not random): bodies that are not a JSON
object, NaN/Infinity and deep nesting in the free-form JSON that is sent upstream, methods and paths, content
types and encodings, auth and request-id headers, and a client that leaves before its body is whole.

Every answer is checked for the API's error shape (OpenAI's on `/v1/chat/completions`, Anthropic's on
`/v1/messages*`), the status, and the field it names; never a 5xx. Each table runs in one test that reports every
failing case at once. The per-field tables, streamed and not, are in test_fuzz_http_inbound_stream.py.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from proxy.fronts import anthropic_api, openai_api
from proxy.fronts.http_app import build_app
from tests.fakes import AnthropicFake, OpenAIFake
from tests.http_server import engine_app, engine_from_yaml

TOKEN = "test-proxy-token-fuzz-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
OA, AN, CT = "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"
PATHS = (OA, AN, CT)
HI = [{"role": "user", "content": "hi"}]
CONFIG = """
version: 1
server: {auth: {bearer_tokens: ["${PROXY_TOKEN}"]}}
providers:
  mock: {type: mock, mock: {echo: true}}
  oai: {type: openai, base_url: "OPENAI_URL", api_key: test-upstream-key}
  ant: {type: anthropic, base_url: "ANTHROPIC_URL", api_key: test-upstream-key}
retry: {max_attempts: 1}
models:
  default: {targets: [{provider: mock, model: mock-1}]}
  gpt: {targets: [{provider: oai, model: gpt-4o-mini}]}
  claude: {targets: [{provider: ant, model: claude-sonnet-4-5}]}
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def minimal(path: str, **fields: Any) -> dict[str, Any]:
    """The smallest valid body for `path`, with `fields` on top."""
    body: dict[str, Any] = {"model": "default", "messages": HI}
    if path == AN:
        body["max_tokens"] = 16
    return {**body, **fields}


def error_problems(path: str, answer: Answer, status: int, param: str | None = None, words: str = "") -> list[str]:
    """What is wrong with `answer` as the error `path`'s API sends: status, shape, the field named, `words` in it."""
    if answer.status != status:
        return [f"status {answer.status}, not {status}: {answer.body[:200]!r}"]
    if status == 405 and not answer.body:  # HEAD
        return []
    try:
        payload = answer.json()
    except ValueError:
        return [f"not JSON: {answer.body[:200]!r}"]
    problems = []
    if path.startswith("/v1/messages"):
        if payload.get("type") != "error" or not {"type", "message"} <= set(payload.get("error", {})):
            return [f"not Anthropic's error shape: {payload}"]
        message = payload["error"]["message"]
        if param is not None and not message.startswith(f"{param}:"):
            problems.append(f"does not start with `{param}:`: {message!r}")
    else:
        if set(payload) != {"error"} or set(payload["error"]) != {"message", "type", "param", "code"}:
            return [f"not OpenAI's error shape: {payload}"]
        message = payload["error"]["message"]
        if param is not None and (payload["error"]["param"] != param or f"`{param}`" not in message):
            problems.append(f"does not name `{param}`: {payload['error']}")
    if not isinstance(message, str) or not message or "Traceback" in message:
        problems.append(f"unhelpful message: {message!r}")
    if words and words not in message:
        problems.append(f"{words!r} not in {message!r}")
    return problems


@dataclass
class Proxy:
    base_url: str
    session: aiohttp.ClientSession
    openai: OpenAIFake
    anthropic: AnthropicFake

    async def send(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        all_headers = {**AUTH, "content-type": "application/json", **(headers or {})}
        body = io.BytesIO(data) if data and len(data) > 1024 * 1024 else data  # aiohttp warns about big bytes
        async with self.session.request(method, path, data=body, headers=all_headers) as response:
            headers = {name.lower(): value for name, value in response.headers.items()}
            return Answer(response.status, headers, await response.read())

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Answer:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.send("POST", path, data, headers)

    async def raw(self, request: bytes) -> bytes:
        """`request` as it is on a new connection (`connection: close`); the whole answer."""
        host, port = self.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()


@asynccontextmanager
async def serve_proxy(openai_fake: OpenAIFake, anthropic_fake: AnthropicFake) -> AsyncIterator[Proxy]:
    """Both fronts over `CONFIG` (auth on; `default` is the echoing mock, `gpt`/`claude` the fakes)."""
    text = CONFIG.replace("OPENAI_URL", openai_fake.base_url).replace("ANTHROPIC_URL", anthropic_fake.base_url)
    routes = [*openai_api.routes, *anthropic_api.routes]
    async with (
        engine_app(text, api_routes=routes, env={"PROXY_TOKEN": TOKEN}) as (base_url, _),
        aiohttp.ClientSession(base_url) as session,
    ):
        yield Proxy(base_url, session, openai_fake, anthropic_fake)


@pytest.fixture
async def proxy(openai_fake: OpenAIFake, anthropic_fake: AnthropicFake) -> AsyncIterator[Proxy]:
    async with serve_proxy(openai_fake, anthropic_fake) as served:
        yield served


# --- bodies that are not a JSON object ------------------------------------------------------------------------

NOT_AN_OBJECT = [
    ("empty", b"", "is empty"),
    ("whitespace", b" \r\n\t ", "is empty"),
    ("truncated", b'{"model": "default", "messages": [', "not valid JSON"),
    ("trailing garbage", b'{"model": "default"} x', "not valid JSON"),
    ("single quotes", b"{'model': 'default'}", "not valid JSON"),
    ("a comment", b'{"model": "default" /* hi */}', "not valid JSON"),
    ("a raw control character", b'{"model": "de\x00fault"}', "not valid JSON"),
    ("not UTF-8", b'{"model": "d\xe9fault"}', "not valid UTF-8"),
    ("an array", b'[{"model": "default"}]', "must be a JSON object, not an array"),
    ("null", b"null", "must be a JSON object, not null"),
    ("a string", b'"hello"', "must be a JSON object, not a string"),
    ("an integer", b"42", "must be a JSON object, not an integer"),
    ("NaN", b"NaN", "must be a JSON object, not a number"),
    ("a boolean", b"true", "must be a JSON object, not a boolean"),
    ("deep arrays", b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    ("deep objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "nests too deeply"),
    ("a 5000-digit integer", b'{"model": "default", "max_tokens": ' + b"9" * 5000 + b"}", "more than 4300 digits"),
]


async def test_a_body_that_is_not_a_json_object_is_a_400_saying_why(proxy):
    problems = []
    for path in PATHS:
        for label, data, words in NOT_AN_OBJECT:
            answer = await proxy.post(path, data)
            problems += [f"{path} {label}: {p}" for p in error_problems(path, answer, 400, words=words)]
    assert not problems, "\n".join(problems)


# --- free-form JSON that is sent upstream: NaN, Infinity, deep nesting ------------------------------------------

DEEP = json.loads('{"a":' * 70 + "{}" + "}" * 70)


def oa_tool(parameters: Any) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}


def oa_schema(schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def an_tool(schema: Any) -> dict[str, Any]:
    return {"tools": [{"name": "f", "input_schema": schema}]}


def an_tool_input(value: Any) -> dict[str, Any]:
    call = {"type": "tool_use", "id": "t1", "name": "f", "input": value}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    return {"messages": [*HI, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]}


FREE_FORM = {
    OA: [
        ("NaN in a tool schema", oa_tool({"maximum": "NAN"}), "tools[0].function.parameters.maximum"),
        ("1e999 in a tool schema", oa_tool({"minimum": "1E999"}), "tools[0].function.parameters.minimum"),
        ("deep tool schema", oa_tool(DEEP), "tools[0].function.parameters"),
        ("Infinity in a response schema", oa_schema({"maximum": "INF"}), "response_format.json_schema.schema.maximum"),
        ("deep response_format", {"response_format": {"type": "json_object", "x": DEEP}}, "response_format"),
        ("NaN in an ignored field", {"metadata": {"score": "NAN"}}, "metadata.score"),
    ],
    AN: [
        ("NaN in a tool schema", an_tool({"type": "object", "maximum": "NAN"}), "tools[0].input_schema"),
        ("deep tool schema", an_tool(DEEP), "tools[0].input_schema"),
        ("-Infinity in a tool input", an_tool_input({"x": "-INF"}), "messages[1].content[0].input"),
        ("1e999 in a tool input", an_tool_input({"x": ["1E999"]}), "messages[1].content[0].input"),
    ],
}
LITERALS = {'"NAN"': "NaN", '"INF"': "Infinity", '"-INF"': "-Infinity", '"1E999"': "1e999"}


def with_literals(body: dict[str, Any]) -> bytes:
    """`body` as JSON, its "NAN"/"INF"/"-INF"/"1E999" strings written as the bare literals Python's reader takes."""
    text = json.dumps(body)
    for quoted, literal in LITERALS.items():
        text = text.replace(quoted, literal)
    return text.encode()


@pytest.mark.parametrize("path", [OA, AN])
@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize("stream", [False, True])
async def test_nan_infinity_and_deep_nesting_in_free_form_json_are_a_400_not_sent_upstream(proxy, path, model, stream):
    """They were a 500 (`Out of range float values are not JSON compliant`) when an Anthropic upstream answered, and
    went upstream as invalid JSON (`NaN`) to an OpenAI one; deep nesting depended on the stack's depth."""
    problems = []
    for label, fields, param in FREE_FORM[path]:
        answer = await proxy.post(path, with_literals(minimal(path, model=model, stream=stream, **fields)))
        problems += [f"{label}: {p}" for p in error_problems(path, answer, 400, param)]
    assert not problems, "\n".join(problems)
    assert proxy.openai.requests == [] and proxy.anthropic.requests == []


async def test_count_tokens_refuses_nan_in_a_tool_schema_too(proxy):
    body = minimal(CT, **an_tool({"type": "object", "maximum": "NAN"}))
    assert not error_problems(CT, await proxy.post(CT, with_literals(body)), 400, "tools[0].input_schema", "NaN")


# --- methods, paths -----------------------------------------------------------------------------------------------


async def test_other_methods_are_a_405_and_unknown_paths_a_404_in_the_apis_shape(proxy):
    problems = []
    for path in PATHS:
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE"):
            answer = await proxy.send(method, path, json.dumps(minimal(path)).encode())
            problems += [f"{method} {path}: {p}" for p in error_problems(path, answer, 405, words=method)]
            if "POST" not in answer.headers.get("allow", ""):  # RFC 9110: a 405 says what is allowed
                problems.append(f"{method} {path}: no Allow header naming POST: {answer.headers}")
    for path in ("/v1/nope", "/v1/chat/completions/x", "/v1/messages/x", "/v1/messagesx", "/V1/messages", "/"):
        for method in ("GET", "POST"):
            answer = await proxy.send(method, path, b"{}")
            problems += [f"{method} {path}: {p}" for p in error_problems(path, answer, 404, words=path)]
    assert not problems, "\n".join(problems)


# --- content type, encoding, length --------------------------------------------------------------------------


async def test_any_content_type_is_read_as_json_and_named_when_the_body_is_not(proxy):
    problems = []
    for path in PATHS:
        body = json.dumps(minimal(path)).encode()
        for content_type in ("text/plain", "application/json; charset=utf-8", "", "application/x-ndjson", ";;;"):
            answer = await proxy.send("POST", path, body, {"content-type": content_type})
            if answer.status != 200:
                problems.append(f"{path} {content_type!r}: {answer.status} {answer.body[:200]!r}")
        form = await proxy.send("POST", path, b"model=default", {"content-type": "application/x-www-form-urlencoded"})
        problems += [f"{path} form: {p}" for p in error_problems(path, form, 400, words="x-www-form-urlencoded")]
    assert not problems, "\n".join(problems)


async def test_a_compressed_body_is_a_415_naming_the_encoding(proxy):
    """It was read as JSON anyway: a gzip body was "not valid UTF-8", a plain one labelled gzip was answered."""
    problems = []
    for path in PATHS:
        body = json.dumps(minimal(path)).encode()
        for encoding, data in (("gzip", gzip.compress(body)), ("br", body), ("gzip, deflate", body)):
            answer = await proxy.send("POST", path, data, {"content-encoding": encoding})
            problems += [f"{path} {encoding}: {p}" for p in error_problems(path, answer, 415, words="Content-Encoding")]
        identity = await proxy.send("POST", path, body, {"content-encoding": "identity"})
        if identity.status != 200:
            problems.append(f"{path} identity: {identity.status}")
    assert not problems, "\n".join(problems)


async def test_a_declared_length_over_the_limit_is_a_413_before_any_body(proxy):
    for path in PATHS:
        head = f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 99999999999\r\n"
        answer = await proxy.raw(head.encode() + b"connection: close\r\n\r\n{")
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer[:300]
        body = Answer(413, {}, rest.partition(b"\r\n\r\n")[2])
        assert not error_problems(path, body, 413, words="99999999999 bytes")
        if path != OA:
            assert body.json()["error"]["type"] == "request_too_large"


# --- headers: auth, request ids, sizes --------------------------------------------------------------------------


def raw_post(path: str, headers: list[bytes], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"host: x", b"connection: close", b"content-type: application/json"]
    lines += [*headers, b"content-length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def parse_raw(answer: bytes) -> Answer:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return Answer(int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body)


REFUSED_CREDENTIALS = [
    ("no credentials", [], None),
    ("a wrong token", [b"authorization: Bearer not-the-token"], "invalid_api_key"),
    ("Basic auth", [b"authorization: Basic dGVzdDp0ZXN0"], None),
    ("an empty bearer", [b"authorization: Bearer "], None),
    ("the scheme alone", [b"authorization: Bearer"], None),
    ("latin-1 bytes", [b"authorization: Bearer \xff\xfe\xe9"], "invalid_api_key"),
    ("a 32 KB token", [b"authorization: Bearer " + b"a" * 32_000], "invalid_api_key"),
    ("a wrong x-api-key", [b"x-api-key: nope"], "invalid_api_key"),
    ("the token as the scheme", [b"authorization: " + TOKEN.encode()], None),
]
ACCEPTED_CREDENTIALS = [
    ("lower-case bearer", [b"authorization: bearer " + TOKEN.encode()]),
    ("spaces around the token", [b"authorization: Bearer   " + TOKEN.encode() + b"  "]),
    ("x-api-key", [b"x-api-key: " + TOKEN.encode()]),
    ("x-api-key beside Basic auth", [b"authorization: Basic dGVzdDp0ZXN0", b"x-api-key: " + TOKEN.encode()]),
]


async def test_refused_credentials_are_a_401_in_the_apis_shape_and_accepted_ones_work(proxy):
    problems = []
    for path in PATHS:
        body = json.dumps(minimal(path)).encode()
        for label, headers, code in REFUSED_CREDENTIALS:
            answer = parse_raw(await proxy.raw(raw_post(path, headers, body)))
            problems += [f"{path} {label}: {p}" for p in error_problems(path, answer, 401, words="bearer_tokens")]
            if answer.status == 401 and answer.headers.get("www-authenticate") != "Bearer":
                problems.append(f"{path} {label}: no `www-authenticate: Bearer`")
            if answer.status == 401 and path == OA and answer.json()["error"]["code"] != code:
                problems.append(f"{path} {label}: code {answer.json()['error']['code']}, not {code}")
            if answer.status == 401 and path != OA and answer.json()["error"]["type"] != "authentication_error":
                problems.append(f"{path} {label}: not an authentication_error")
        for label, headers in ACCEPTED_CREDENTIALS:
            answer = parse_raw(await proxy.raw(raw_post(path, headers, body)))
            if answer.status != 200:
                problems.append(f"{path} {label}: {answer.status} {answer.body[:200]!r}")
    assert not problems, "\n".join(problems)


async def test_a_junk_request_id_is_replaced_and_odd_headers_change_nothing(proxy):
    auth = b"authorization: Bearer " + TOKEN.encode()
    replaced = [b"\xff\xfejunk", b"a b", b"<script>", b"x" * 129, b"", b"id;drop", b"\xc3\xa9t\xc3\xa9"]
    for path in PATHS:
        body = json.dumps(minimal(path)).encode()
        for junk in replaced:
            answer = parse_raw(await proxy.raw(raw_post(path, [auth, b"x-request-id: " + junk], body)))
            assert answer.status == 200, (path, junk, answer.body[:200])
            assert answer.headers["x-request-id"].startswith("req_"), (path, junk)
        kept = parse_raw(await proxy.raw(raw_post(path, [auth, b"x-request-id: trace-1.2:3_x"], body)))
        assert kept.status == 200 and kept.headers["x-request-id"] == "trace-1.2:3_x"
        odd = [
            b"x-filler: " + b"a" * 30_000,
            b"cache-control: \xff, no-cache=,,,",
            b"anthropic-version: \xff",
            b"anthropic-beta: ,,x,,",
            b"traceparent: 00-zz-zz-01",
            b"accept: image/png",
            b"expect: 100-continue",
        ]
        for header in odd:
            answer = parse_raw(await proxy.raw(raw_post(path, [auth, header], body)))
            if header.startswith(b"expect"):  # "100 Continue", then the answer
                answer = parse_raw(answer.body)
            assert answer.status == 200, (path, header[:40], answer.body[:200])


# --- a client that leaves mid-body -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_a_client_leaving_before_its_body_is_whole_gets_a_499_not_a_500(path):
    """The Anthropic paths let Starlette's `ClientDisconnect` escape: a 500 and a traceback in the log."""
    text = CONFIG.replace("OPENAI_URL", "http://127.0.0.1:9").replace("ANTHROPIC_URL", "http://127.0.0.1:9")
    engine = engine_from_yaml(text, env={"PROXY_TOKEN": TOKEN})
    app = build_app(engine, api_routes=[*openai_api.routes, *anthropic_api.routes])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"authorization", AUTH["authorization"].encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    incoming = [{"type": "http.request", "body": b'{"model": "def', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    finally:
        await engine.aclose()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499


async def test_query_strings_are_ignored(proxy):
    """No endpoint reads one: `?stream=true` does not stream, junk is not an error."""
    for path in PATHS:
        body = json.dumps(minimal(path)).encode()
        for query in ("stream=true", "model=nope&model=x", "a=%ff%00&&=&b", "x=" + "q" * 4000):
            answer = await proxy.send("POST", f"{path}?{query}", body)
            assert answer.status == 200 and answer.headers["content-type"] == "application/json", (path, query)
