"""The demo page in headless Chromium (Debian's, driven by Playwright) against a live server:
typed text is spoken (frames arrive and are scheduled for playback), the waveform is drawn, and
a server error shows in the page. Screenshots go to tests/artifacts/web_page_*.png."""
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ARTIFACTS = Path(__file__).parent / "artifacts"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is required for the page test: apt-get install chromium")
    return path


# the fast lane loads the page once (desktop); the phone layout runs in the full suite
@pytest.mark.parametrize("viewport", [
    {"width": 1280, "height": 900},
    pytest.param({"width": 390, "height": 844}, marks=pytest.mark.slow),
], ids=["desktop", "phone"])
def test_page_speaks_draws_and_shows_errors(server, viewport):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=[
            "--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        page = browser.new_page(viewport=viewport)
        page.goto(f"http://127.0.0.1:{server}/")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('ready')")
        page.fill("#text", "Hello from the browser test, speaking clearly now.")
        page.click("#speak")
        page.wait_for_function("window.sopranoStats.done >= 1", timeout=60_000)
        stats = page.evaluate("window.sopranoStats")
        assert stats["frames"] > 2 and stats["scheduled"] == stats["frames"]
        assert stats["errors"] == []
        assert page.text_content("#ttfa").endswith(" ms")
        lit = page.evaluate("""() => {
            const c = document.getElementById('wave');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 150) n++;
            return n; }""")
        assert lit > 100, "waveform canvas is blank"
        # a voice this model does not have: the server answers an error the page must show
        page.evaluate("""() => { const o = document.createElement('option');
            o.value = 'other-voice'; document.getElementById('voice').appendChild(o); }""")
        page.select_option("#voice", value="other-voice")
        page.click("#speak")
        page.wait_for_function("window.sopranoStats.errors.length >= 1", timeout=30_000)
        assert page.is_visible("#error")
        assert "not available" in page.text_content("#error")
        ARTIFACTS.mkdir(exist_ok=True)
        name = "phone" if viewport["width"] < 500 else "desktop"
        page.screenshot(path=str(ARTIFACTS / f"web_page_{name}.png"))
        browser.close()


def test_page_asks_for_the_api_key_and_speaks_with_it(start_server):
    """A server with keys: the page asks, a wrong key is refused, the right one opens a session
    (``?api_key=`` on the WebSocket) that speaks, and is remembered on reload."""
    live = start_server("--api-key", "page-key-1234")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=[
            "--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{live.port}/")
        page.wait_for_selector("#api-key", state="visible")
        assert "API key" in page.text_content("#status")
        page.fill("#api-key", "wrong-key")
        page.click("#key-use")
        page.wait_for_function("window.sopranoStats.errors.length >= 1")
        assert "refused" in page.text_content("#error")
        page.fill("#api-key", "page-key-1234")
        page.click("#key-use")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('ready')")
        assert not page.is_visible("#key-form")
        page.fill("#text", "Hello with a key.")
        page.click("#speak")
        page.wait_for_function("window.sopranoStats.done >= 1", timeout=60_000)
        assert page.evaluate("window.sopranoStats.frames") > 0
        page.reload()  # the key is kept for the tab: no question this time
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('ready')")
        assert not page.is_visible("#key-form")
        browser.close()
    assert live.stop() == 0, live.stderr()
