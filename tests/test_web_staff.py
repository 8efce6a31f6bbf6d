"""The staff page in a real headless browser (Debian's chromium driven by Playwright): a real
Mosquitto, a real cartd subprocess, the page server as a subprocess; a shopper enters, takes
something and leaves, and the open page shows the event, the cart and the receipt appear live,
without a reload. Screenshot: bench/out/staff_page.png."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cartd_support import BASE, Cartd, Pub, entry, exit_, health, item_event, tracking, write_config
from conftest import _skip_or_fail

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser_page(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        _skip_or_fail("chromium not installed (Debian: apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright (PyPI) not installed; `pip install -e .[test]`")
    with sync_playwright() as p:
        # a fresh profile every run; never `playwright install`: Debian's chromium is the browser
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS, viewport={"width": 1400, "height": 900})
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


@pytest.fixture
def staff(tmp_path, mosquitto, subscriber_factory):
    cfg = write_config(tmp_path, mosquitto, units=[{"unit_id": "unit-a", "shelves": ["1", "2"]}],
                       receipts={"deadline_s": 8.0, "correction_delay_s": 0.3})
    status = subscriber_factory(mosquitto, f"{BASE}/_store/cartd/status/+")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    status.wait_for(1, timeout=20, where=lambda m: m.json().get("state") == "online")
    port = _free_port()
    with open(tmp_path / "web.log", "ab") as logf:
        web = subprocess.Popen([sys.executable, "-m", "aggregator.web", "--config", str(cfg), "--port", str(port),
                                "--refresh-s", "30"],  # slow periodic rebuild: what we see must come by push
                               cwd=REPO, stdout=logf, stderr=logf, env=dict(os.environ, PYTHONPATH=str(REPO)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            if web.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"staff page did not start: {(tmp_path / 'web.log').read_text()[-2000:]}")
            time.sleep(0.2)
    pub = Pub(mosquitto)
    yield {"url": url, "pub": pub, "web": web, "cartd": cartd, "tmp": tmp_path}
    pub.close()
    web.terminate()
    assert web.wait(10) == 0, (tmp_path / "web.log").read_text()[-2000:]
    assert cartd.stop() == 0, cartd.logtext()[-2000:]


def test_staff_page_shows_event_cart_and_receipt_live(staff, browser_page):
    page, pub = browser_page, staff["pub"]
    page.goto(staff["url"] + "/")
    page.wait_for_selector("#live.on", timeout=15000)
    assert "nobody in the store" in page.inner_text("#carts")
    page.evaluate("window.__notReloaded = 42")

    now = time.time()
    pub.send("unit-a/status", {"state": "online"}, retain=True)
    pub.send("_store/gates/entry", entry("S-WEB-1", now - 6))
    pub.send("_store/tracking", tracking(now - 4, [("S-WEB-1", "unit-a", "1", 0.97)]))
    pub.send("_store/tracking", tracking(now - 3, [("S-WEB-1", "unit-a", "1", 0.96)]))
    ev = item_event("unit-a", 1, "1", "pick", "A", 2, now - 4, now - 3)
    pub.send("unit-a/events", ev)
    pub.flush()

    # the event on its shelf, and the open cart with the product, appear without a reload
    page.wait_for_selector(f'[data-event-id="{ev["event_id"]}"]', timeout=15000)
    page.wait_for_selector('[data-session-id="S-WEB-1"]', timeout=15000)
    page.wait_for_function(
        "document.querySelector('[data-session-id=\"S-WEB-1\"]')"
        " && document.querySelector('[data-session-id=\"S-WEB-1\"]').innerText.includes('Apple juice')",
        timeout=15000,
    )
    # (the page rebuilds its nodes on every update: read through locators, never stale handles)
    assert "5.00" in page.locator('[data-session-id="S-WEB-1"]').inner_text()
    assert "no receipts yet" in page.inner_text("#receipts")

    pub.send("_store/gates/exit", exit_("S-WEB-1", now - 1))
    pub.send("_store/tracking", tracking(time.time(), []))
    pub.send("unit-a/health", health(time.time() + 3, 1), retain=True)
    pub.flush()
    page.wait_for_selector('[data-receipt-id="S-WEB-1/1"]', timeout=20000)
    text = page.locator('[data-receipt-id="S-WEB-1/1"]').inner_text()
    assert "Apple juice" in text and "5.00" in text, text
    # the cart left the open list once receipted
    page.wait_for_function("!document.querySelector('[data-session-id=\"S-WEB-1\"]')", timeout=15000)
    assert page.evaluate("window.__notReloaded") == 42, "the page reloaded instead of updating live"
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "staff_page.png"), full_page=True)
    assert (out / "staff_page.png").stat().st_size > 10_000


def test_staff_page_is_read_only_and_reports_bad_config(tmp_path, staff):
    req = urllib.request.Request(staff["url"] + "/api/state", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 405
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstore_id: s\nstorage: {type: sqlite}\n")
    r = subprocess.run([sys.executable, "-m", "aggregator.web", "--config", str(bad), "--port", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 78, r.stderr
    assert "storage.path" in r.stderr and "Traceback" not in r.stderr
