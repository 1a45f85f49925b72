"""The status page in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium): it
shows the providers, its charts update after traffic, a rejected reload's error appears after a bad edit, it fits a
phone's width, it shows failed and cancelled requests apart, and with auth on it shows nothing until it is given the
token.

Chromium is installed with apt-get by a session fixture when /usr/bin/chromium is missing; the tests are skipped
(saying why) only if that fails. Selenium calls block, so they run in a thread while the server runs on the test's
event loop. Screenshots go to the test's tmp_path; with `UPDATE_STATUS_SCREENSHOT=1` the desktop one also replaces
docs/status.png (the README's picture).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.fronts import openai_api, status
from proxy.fronts.http_app import build_app
from proxy.reload import Reloader
from proxy.runtime import Runtime
from tests.http_server import engine_app, serve_app
from tests.test_status_page import STALLED_CONFIG, chat, give_up_on_a_request

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "status.png"
TOKEN = "status-browser-token-42"
CONFIG = """
version: 1
providers:
  primary:
    type: mock
    description: The main upstream
    mock: {reply: from primary, latency: 40ms}
    limits: {requests_per_minute: 600, tokens_per_minute: 200000}
  backup:
    type: mock
    mock: {reply: from backup, latency: 5ms}
  flaky:
    type: mock
    mock: {reply: sometimes, fault: {status: 503, rate: 0.5}, seed: 3}
    breaker: {failures: 50}
  openai:
    type: openai
    api_key: ${STATUS_BROWSER_OPENAI_KEY}
models:
  default:
    strategy: weighted
    targets:
      - {provider: primary, model: large, weight: 3, context_window: 8192}
      - {provider: backup, model: small, weight: 1, context_window: 4096}
  experimental:
    targets:
      - {provider: openai, model: gpt-4o-mini}
      - {provider: flaky, model: beta}
    fallback: default
retry: {max_attempts: 1}
"""


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's headless Chromium and its driver, installed with apt-get when missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for command in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            ):
                subprocess.run(command, check=True, capture_output=True, env=env, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"Chromium is missing and `apt-get install chromium chromium-driver` failed: {exc}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("apt-get ran but /usr/bin/chromium or /usr/bin/chromedriver is still missing")


@pytest.fixture(scope="module")
def browser(chromium):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is in the dev extras: pip install -e '.[dev]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(5)
    yield driver
    driver.quit()


async def js(driver, script: str, *args):
    return await asyncio.to_thread(driver.execute_script, script, *args)


async def until(driver, script: str, seconds: float = 10.0):
    """Poll a JavaScript expression in the page until it is truthy (what a person would wait to see)."""
    deadline = time.monotonic() + seconds
    while True:
        value = await js(driver, f"return ({script});")
        if value:
            return value
        assert time.monotonic() < deadline, f"the page never showed: {script}"
        await asyncio.sleep(0.1)


async def send_traffic(base_url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            model = "experimental" if i % 3 == 0 else "default"
            body = {"model": model, "messages": [{"role": "user", "content": f"say hello number {i} " * (i % 7 + 1)}]}
            async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()


async def screenshot(driver, path: Path, width: int) -> None:
    """The whole page: the window is grown to the page's height (plus the window's own frame) first."""
    height = await js(driver, "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;")
    await asyncio.to_thread(driver.set_window_size, width, max(600, int(height)))
    await asyncio.sleep(0.3)  # let the charts follow the new size before the picture
    await asyncio.to_thread(driver.save_screenshot, str(path))
    assert (await asyncio.to_thread(path.read_bytes))[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def live(tmp_path, monkeypatch):
    monkeypatch.delenv("STATUS_BROWSER_OPENAI_KEY", raising=False)
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    engine = Engine(Runtime.build(load_config(path)))
    reloader = Reloader(engine, path, grace_period=0)
    try:
        async with serve_app(build_app(engine, api_routes=[*openai_api.routes, *status.routes])) as base_url:
            yield base_url, path, reloader
    finally:
        await reloader.aclose()
        await engine.aclose()


async def test_the_page_shows_providers_live_charts_and_a_rejected_reload(browser, live, tmp_path):
    base_url, path, reloader = live
    await asyncio.to_thread(browser.set_window_size, 1280, 900)
    await asyncio.to_thread(browser.get, f"{base_url}/status?interval=300")
    await until(browser, "document.querySelectorAll('#providers tbody tr').length === 4")
    rows = await js(browser, "return [...document.querySelectorAll('#providers tbody tr')].map(r => r.innerText);")
    assert [row.split()[0] for row in rows] == ["primary", "backup", "flaky", "openai"]
    assert "disabled" in rows[3] and "STATUS_BROWSER_OPENAI_KEY" in rows[3]
    assert "600 / 600 req" in rows[0] and "unlimited" in rows[1]
    cards = await js(browser, "return [...document.querySelectorAll('#models .card')].map(c => c.innerText);")
    assert cards[0].startswith("default\nweighted\ndefault") and "75%" in cards[0] and "8,192 ctx" in cards[0]
    assert "then default" in cards[1] and "disabled" in cards[1]

    await until(browser, "document.querySelectorAll('.chart canvas').length === 5")
    peak = "Math.max(0, ...window.llmProxyStatus.charts.rps.data.slice(1).flat().filter(v => v !== null))"
    assert await js(browser, f"return {peak};") == 0
    await send_traffic(base_url, 30)
    await until(browser, f"{peak} > 0")  # the requests/s chart moved after the traffic
    await until(browser, "Number(document.querySelector('#providers tbody tr').children[4].innerText) > 0")
    errors = "Math.max(0, ...window.llmProxyStatus.charts.errors.data.slice(1).flat().filter(v => v !== null))"
    await send_traffic(base_url, 30)
    await until(browser, f"{errors} > 0")  # the flaky provider's 503s show as an error rate

    if os.environ.get("UPDATE_STATUS_SCREENSHOT") == "1":  # a few more seconds of traffic for the README picture
        for burst in (10, 25, 40, 20, 35, 15, 30, 10):
            await send_traffic(base_url, burst)
            await asyncio.sleep(1)
    path.write_text(CONFIG.replace("{provider: backup, model: small, weight: 1,", "{provider: bakup, model: small,"))
    assert not await reloader.reload()
    error = await until(
        browser, "document.querySelector('#reload pre') && document.querySelector('#reload pre').innerText"
    )
    assert (
        f"{path}:24:20: models.default.targets[1].provider: unknown provider `bakup`; did you mean `backup`?" in error
    )
    assert "Last reload rejected" in await js(browser, "return document.querySelector('#reload').innerText;")
    await screenshot(browser, tmp_path / "status.png", 1280)
    if os.environ.get("UPDATE_STATUS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "status.png", DOCS_SCREENSHOT)

    await asyncio.to_thread(browser.set_window_size, 390, 844)  # a phone
    await until(browser, "document.querySelector('.chart').clientWidth < 400")
    assert await js(browser, "return document.documentElement.scrollWidth <= window.innerWidth;")
    await screenshot(browser, tmp_path / "status-phone.png", 390)


async def test_the_page_shows_the_cancelled_requests(browser):
    async with engine_app(STALLED_CONFIG, api_routes=[*openai_api.routes, *status.routes]) as (base_url, engine):
        await chat(base_url, 2)
        await give_up_on_a_request(base_url, engine)
        await asyncio.to_thread(browser.get, f"{base_url}/status?interval=300")
        header = await until(
            browser,
            "document.getElementById('config').innerText.includes('requests') && "
            "document.getElementById('config').innerText",
        )
    assert "3 requests (0 failed, 1 cancelled)" in header


async def test_with_auth_on_the_page_asks_for_the_token(browser, tmp_path, monkeypatch):
    monkeypatch.delenv("STATUS_BROWSER_OPENAI_KEY", raising=False)
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG + f"server: {{auth: {{bearer_tokens: [{TOKEN}]}}}}\n")
    engine = Engine(Runtime.build(load_config(path)))
    try:
        async with serve_app(build_app(engine, api_routes=status.routes)) as base_url:
            await asyncio.to_thread(browser.get, f"{base_url}/status.json")
            refused = await js(browser, "return document.body.innerText;")
            assert "missing or invalid API key" in refused and "primary" not in refused

            await asyncio.to_thread(browser.get, f"{base_url}/status?interval=300")
            await until(browser, "!document.getElementById('login').hidden")
            assert await js(browser, "return document.getElementById('login-message').innerText;") == (
                "This proxy requires a token."
            )
            assert await js(browser, "return document.querySelectorAll('#providers tr').length;") == 0

            async def sign_in(token: str) -> None:
                field = await asyncio.to_thread(browser.find_element, "id", "token")
                await asyncio.to_thread(field.send_keys, token)
                await asyncio.to_thread(field.submit)

            await sign_in("not-the-token")
            await until(browser, "document.getElementById('login-message').innerText.includes('refused')")
            assert await js(browser, "return sessionStorage.length;") == 0

            await sign_in(TOKEN)
            await until(browser, "document.querySelectorAll('#providers tbody tr').length === 4")
            assert await js(browser, "return document.getElementById('login').hidden;")
            assert await js(browser, "return sessionStorage.getItem('llm-proxy-status-token');") == TOKEN
            assert TOKEN not in await js(browser, "return document.documentElement.outerHTML;")

            await asyncio.to_thread(browser.refresh)  # the tab keeps the token
            await until(browser, "document.querySelectorAll('#providers tbody tr').length === 4")
            await asyncio.to_thread(browser.find_element("id", "forget").click)
            await until(browser, "!document.getElementById('login').hidden")
            assert await js(browser, "return sessionStorage.length;") == 0
    finally:
        await engine.aclose()
