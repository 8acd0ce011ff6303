"""The web playground at /, in headless Chromium (Debian's package, driven by Playwright)
against the real app: speak, hear it stream, see the queue and the timings; see the server's
message and a countdown when a rate limit says no. Screenshots land in artifacts/."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import speech_body
from tests.integration.conftest import fake_app

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
KEY = "playground-test-key-0123456789"
TEN = " ".join(f"Background sentence number {i} keeps the model busy." for i in range(10))
SECONDS = re.compile(r"^\d+\.\d\d s$")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium: `make test` installs Debian's package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield browser
        browser.close()


def watch(page, *ids: str) -> None:
    """Record every value the fields with these ids take (read back with `seen`)."""
    page.evaluate(
        """(ids) => { window.seen = {};
          for (const id of ids) {
            const el = document.getElementById(id); window.seen[id] = [el.textContent];
            new MutationObserver(() => window.seen[id].push(el.textContent))
              .observe(el, {childList: true, characterData: true, subtree: true});
          } }""",
        list(ids),
    )


def test_speak_streams_audio_and_shows_queue_and_timings(browser, server: str) -> None:
    # NOTE: bypass_csp lets Playwright evaluate its string predicates; the page itself runs
    # under its Content-Security-Policy as usual.
    page = browser.new_page(viewport={"width": 390, "height": 900}, bypass_csp=True)  # phone
    page.goto(f"{server}/")
    assert page.title() == "Chorus playground"
    assert page.locator("#key-row").is_hidden()  # this server has no keys
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.labels.length === 0).map(e => e.id)"
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.wait_for_function("document.querySelectorAll('#voice option').length > 1")  # loaded
    watch(page, "position", "wait")
    page.fill("#text", "Hello from the playground. It streams as it speaks.")
    with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=server, timeout=120) as c:
        body = speech_body(TEN, response_format="pcm")
        # the server estimates waits from the rate it has measured: give it one to measure
        assert c.post("/v1/audio/speech", json={**body, "input": "Warm."}).status_code == 200
        busy = [pool.submit(c.post, "/v1/audio/speech", json=body) for _ in range(3)]
        while c.get("/v1/queue").json()["items"] < 4:
            time.sleep(0.02)
        page.focus("#text")
        page.keyboard.press("Control+Enter")  # the keyboard alone can speak
        page.wait_for_function("document.getElementById('state').textContent === 'Done.'")
        assert [f.result().status_code for f in busy] == [200] * 3
    seen = page.evaluate("window.seen")
    positions = [int(p) for p in seen["position"] if p.isdigit()]
    assert positions[0] >= 1 and positions[-1] == 0, seen  # it waited behind the busy ones
    assert any(SECONDS.match(w) for w in seen["wait"]), seen
    ttfa, total = page.text_content("#ttfa"), page.text_content("#total")
    assert SECONDS.match(ttfa) and SECONDS.match(total)
    assert float(ttfa.split()[0]) <= float(total.split()[0])
    assert page.text_content("#sentences") == "2"
    player = page.locator("#player")
    assert int(player.get_attribute("data-bytes")) > 24000  # over half a second of pcm
    assert player.get_attribute("src").startswith("blob:")
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    duration = page.evaluate("document.getElementById('player').duration")
    assert duration == pytest.approx(float(page.text_content("#audio-seconds").split()[0]), 0.05)
    assert page.locator("#error").is_hidden()
    page.keyboard.press("Tab")  # focus moves on, and shows where it is
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
    page.close()


def test_rate_limit_and_missing_key_show_the_server_message_and_a_countdown(
    browser, server: str
) -> None:
    args = {
        "api_keys": [
            {"name": "tight", "key": KEY, "limits": {"requests_per_s": 0.05, "requests_burst": 1}}
        ]
    }
    with fake_app(server, "pgkeys", args, delay_s=0.05) as url:
        page = browser.new_page(bypass_csp=True)
        page.goto(f"{url}/")
        assert page.locator("#key-row").is_visible()
        page.fill("#text", "One sentence.")
        page.click("#speak")
        page.wait_for_selector("#error", state="visible")
        assert "API key" in page.text_content("#error-message")  # 401: no key yet
        page.fill("#key", KEY)
        page.click("#speak")
        page.wait_for_function("document.getElementById('state').textContent === 'Done.'")
        assert page.locator("#error").is_hidden()
        page.click("#speak")  # the bucket held one request; the next waits 20 s
        page.wait_for_selector("#error", state="visible")
        assert "rate limit" in page.text_content("#error-message")
        countdown = page.text_content("#countdown")
        match = re.fullmatch(r"Retry in (\d+) s\.", countdown)
        assert match and 15 <= int(match.group(1)) <= 20, countdown
        assert page.locator("#speak").is_disabled()
        page.wait_for_function(  # it counts down
            f"document.getElementById('countdown').textContent !== {countdown!r}"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "playground-rate-limited.png", full_page=True)
        page.close()
