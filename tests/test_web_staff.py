"""The staff console, for real: a real Mosquitto, a real `cartd run`, the console as a subprocess,
accounts made with `cartd user add`, and Debian's chromium driven by Playwright.

The browser signs in (a wrong password first), finds a doubtful line in the review queue with its
evidence, picks the other product, and sees cartd's correction receipt and the audit entry; on the
health view it sees the unit go offline and come back. Screenshots:
bench/out/console-*.png (the README's pictures in docs/img/ are copies).
The HTTP checks (sign-in, roles, CSRF, cross-site, bounds) run without a browser."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from cartd_support import Cartd, Pub, entry, exit_, health, item_event, tracking, ts, write_config
from conftest import _skip_or_fail

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user(cfg: Path, tmp: Path, name: str, role: str, password: str) -> None:
    pw = tmp / f"{name}.pw"
    pw.write_text(password + "\n")
    r = subprocess.run([sys.executable, "-m", "aggregator.cli", "user", "add", name, "--config", str(cfg),
                        "--role", role, "--password-file", str(pw)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


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


def _start(tmp_path, mosquitto, subscriber_factory, **over):
    cfg = write_config(tmp_path, mosquitto, units=[{"unit_id": "unit-a", "shelves": ["1", "2"]}],
                       receipts={"deadline_s": 8.0, "correction_delay_s": 0.3}, **over)
    status = subscriber_factory(mosquitto, "gondola/v1/store-1/_store/cartd/status/+")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    status.wait_for(1, timeout=20, where=lambda m: m.json().get("state") == "online")
    _user(cfg, tmp_path, "alice", "reviewer", "alice-password-1")
    _user(cfg, tmp_path, "vic", "viewer", "vic-password-12")
    port = _free_port()
    with open(tmp_path / "web.log", "ab") as logf:
        web = subprocess.Popen([sys.executable, "-m", "aggregator.web", "--config", str(cfg), "--port", str(port),
                                "--refresh-s", "30"],  # slow periodic rebuild: what we see must come by push
                               cwd=REPO, stdout=logf, stderr=logf, env=ENV)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            if web.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"console did not start: {(tmp_path / 'web.log').read_text()[-2000:]}")
            time.sleep(0.2)
    return {"url": url, "pub": Pub(mosquitto), "web": web, "cartd": cartd, "tmp": tmp_path, "cfg": cfg}


def _stop(st: dict) -> None:
    st["pub"].close()
    st["web"].terminate()
    assert st["web"].wait(10) == 0, (st["tmp"] / "web.log").read_text()[-2000:]
    assert st["cartd"].stop() == 0, st["cartd"].logtext()[-2000:]


@pytest.fixture
def staff(tmp_path, mosquitto, subscriber_factory):
    st = _start(tmp_path, mosquitto, subscriber_factory)
    yield st
    _stop(st)


def test_behind_an_sso_proxy_the_header_signs_in_only_from_the_proxy(tmp_path, mosquitto, subscriber_factory):
    st = _start(tmp_path, mosquitto, subscriber_factory,
                console={"sso": {"header": "X-Forwarded-User", "trusted_proxies": ["127.0.0.1"]}})
    try:
        proxy = Client(st["url"])
        assert proxy.call("/api/me")[0] == 401  # no header: nobody
        code, me = proxy.call("/api/me", headers={"X-Forwarded-User": "alice"})
        assert code == 200 and (me["username"], me["role"], me["sso"]) == ("alice", "reviewer", True)
        assert proxy.call("/api/me", headers={"X-Forwarded-User": "mallory"})[0] == 401  # no such account
        code, doc = proxy.call("/api/restock", {"unit_id": "unit-a", "shelf": "1", "sku": "A"},
                               headers={"X-Forwarded-User": "alice"})
        assert (code, doc["error"]) == (403, "missing or wrong X-CSRF-Token")
        code, _ = proxy.call("/api/restock", {"unit_id": "unit-a", "shelf": "1", "sku": "A"},
                             headers={"X-Forwarded-User": "alice", "X-CSRF-Token": me["csrf"]})
        assert code == 200
        code, doc = proxy.call("/api/restock", {"unit_id": "unit-a", "shelf": "1", "sku": "A"},
                               headers={"X-Forwarded-User": "vic", "X-CSRF-Token": me["csrf"]})
        assert code == 403  # alice's token is not vic's
    finally:
        _stop(st)


def _doubtful_visit(pub: Pub) -> dict:
    """S-1 takes something the unit is unsure of (A at 0.55, B at 0.41) and leaves."""
    now = time.time()
    pub.send("unit-a/status", {"state": "online", "since": "2026-12-03T10:00:00.000Z"}, retain=True)
    pub.send("unit-a/health", {**health(now, 0), "plates": {"1/1": {"state": "rest", "noise_g": 0.4}}}, retain=True)
    pub.send("unit-a/state", {"facings": [{"sku": "A", "shelf": "1", "plates": [1], "units": 1, "source": "stock"},
                                          {"sku": "B", "shelf": "1", "plates": [2], "units": 9, "source": "stock"}]},
             retain=True)
    pub.send("_store/gates/entry", entry("S-1", now - 8))
    for k in range(6):
        pub.send("_store/tracking", tracking(now - 6 + k, [("S-1", "unit-a", "1", 0.95)]))
    ev = item_event("unit-a", 1, "1", "pick", "A", 1, now - 5, now - 4, confidence=0.55, review=True,
                    candidates=[{"sku": "A", "quantity": 1, "score": 0.55}, {"sku": "B", "quantity": 1, "score": 0.41}],
                    trace={"t0": ts(now - 6), "dt_s": 0.1,
                           "plates": {"1": [500.0] * 10 + [480.0, 430.0, 400.0] + [300.0] * 17}})
    pub.send("unit-a/events", ev)
    pub.send("_store/gates/exit", exit_("S-1", now - 1))
    pub.send("_store/tracking", tracking(time.time(), []))
    pub.send("unit-a/health", {**health(time.time() + 3, 1), "plates": {"1/1": {"state": "rest", "noise_g": 0.4}}},
             retain=True)
    pub.flush()
    return ev


def test_console_review_correction_audit_and_unit_health_in_a_browser(staff, browser_page):
    page, pub = browser_page, staff["pub"]
    page.goto(staff["url"] + "/")
    assert page.url.endswith("/login")  # viewing needs a signed-in account
    page.fill("#username", "alice")
    page.fill("#password", "not-her-password")
    page.click("#signin")
    page.wait_for_selector("#failed.on", timeout=10000)
    page.fill("#username", "alice")
    page.fill("#password", "alice-password-1")
    page.click("#signin")
    page.wait_for_selector("#live.on", timeout=15000)
    assert "alice (reviewer)" in page.inner_text("#who")
    page.evaluate("window.__notReloaded = 42")

    _doubtful_visit(pub)
    # the receipt goes out with the doubtful line flagged; the line waits in the review queue
    page.click('nav button[data-view="store"]')
    page.wait_for_selector('[data-receipt-id="S-1/1"]', timeout=20000)
    assert "review" in page.locator('[data-receipt-id="S-1/1"]').inner_text()
    page.click('nav button[data-view="review"]')
    page.wait_for_selector(".queue .item", timeout=15000)
    assert page.inner_text("#nreview") == "1"
    page.click(".queue .item")
    page.wait_for_selector("#products button[data-sku='B']", timeout=10000)
    detail = page.inner_text("#detail")
    assert "unsure product" in detail and "55%" in detail and "41%" in detail and "S-1" in detail
    assert page.locator("svg.trace polyline").count() == 1  # the plates' weights around the event
    shots = REPO / "bench" / "out"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "console-review.png"))

    page.click("#products button[data-sku='B']")  # it was B
    page.wait_for_selector("#outcome", timeout=15000)
    assert page.inner_text("#outcome").startswith("product B × 1; correction for S-1 due")
    page.wait_for_function("document.querySelector('#nreview').innerText === '0'", timeout=15000)
    page.click('nav button[data-view="store"]')
    page.wait_for_selector('[data-receipt-id="S-1/2"]', timeout=15000)
    corr = page.locator('[data-receipt-id="S-1/2"]').inner_text()
    assert "correction" in corr and "Bagel" in corr and "Apple" not in corr, corr
    # money as money, a 24-hour clock, whole names on the shelf cards (first-run findings)
    assert "$1.20" in corr and re.search(r"\b\d{2}:\d{2}:\d{2}\b", corr) and not re.search(r"\b[AP]M\b", corr)
    assert "Apple juice" in page.inner_text("#shelves")
    page.click('nav button[data-view="audit"]')
    page.wait_for_function("document.querySelector('#audit').innerText.includes('review.product')", timeout=15000)
    audit = page.inner_text("#audit")
    assert "alice" in audit and "review.decided" in audit and "sign_in" in audit

    page.click('nav button[data-view="stock"]')
    page.wait_for_selector("#alerts table", timeout=10000)
    assert "Apple" in page.inner_text("#alerts")  # 1 left ≤ the default threshold 2
    page.screenshot(path=str(shots / "console-stock.png"))

    page.click('nav button[data-view="health"]')
    unit = '[data-unit="unit-a"] .state'
    page.wait_for_selector(f'{unit}[data-state="online"]', timeout=10000)
    pub.send("unit-a/status", {"state": "offline", "reason": "connection lost"}, retain=True)
    pub.flush()
    page.wait_for_selector(f'{unit}[data-state="offline"]', timeout=10000)
    assert "connection lost" in page.inner_text('[data-unit="unit-a"]')
    page.screenshot(path=str(shots / "console-health.png"))
    pub.send("unit-a/status", {"state": "online"}, retain=True)
    pub.flush()
    page.wait_for_selector(f'{unit}[data-state="online"]', timeout=10000)
    assert page.evaluate("window.__notReloaded") == 42, "the page reloaded instead of updating live"


class Client:
    """A browser-less client with a cookie jar (urllib)."""

    def __init__(self, url: str):
        self.url = url
        self.jar = CookieJar()
        self.op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def call(self, path: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h = {"Content-Type": "application/json", "X-CSRF-Token": self.csrf, **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, headers=h,
                                     method="POST" if data is not None else "GET")
        try:
            with self.op.open(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def sign_in(self, name: str, password: str) -> int:
        code, doc = self.call("/login", {"username": name, "password": password})
        self.csrf = doc.get("csrf", "")
        return code


def test_console_http_refuses_what_it_must(staff):
    url, pub = staff["url"], staff["pub"]
    anon = Client(url)
    assert anon.call("/api/state")[0] == 401
    _doubtful_visit(pub)
    alice, vic = Client(url), Client(url)
    assert alice.sign_in("alice", "alice-password-1") == 200 and vic.sign_in("vic", "vic-password-12") == 200
    deadline = time.monotonic() + 20
    while not alice.call("/api/state")[1].get("review") and time.monotonic() < deadline:
        time.sleep(0.3)
    (item,) = alice.call("/api/state")[1]["review"]
    line = f"/api/review/{item['line_id']}"
    # a viewer sees but may not decide
    assert vic.call(line)[0] == 200
    code, doc = vic.call(line, {"action": "accept"})
    assert (code, doc["error"]) == (403, "role viewer may not decide reviews")
    # CSRF: no token, a wrong token, a cross-site origin, a cross-site fetch
    assert alice.call(line, {"action": "accept"}, {"X-CSRF-Token": ""})[0] == 403
    assert alice.call(line, {"action": "accept"}, {"X-CSRF-Token": "forged"})[0] == 403
    code, doc = alice.call(line, {"action": "accept"}, {"Origin": "http://evil.example"})
    assert code == 403 and "cross-site" in doc["error"]
    assert alice.call(line, {"action": "accept"}, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    # bounded, one-line answers
    code, doc = alice.call(line, b"x" * 20000)
    assert code == 413 and "16384" in doc["error"]
    code, doc = alice.call(line, {"action": "steal"})
    assert code == 400 and doc["error"].startswith("action: expected one of accept, product, shopper, remove")
    code, doc = alice.call(line, {"action": "product", "sku": "NOT-SOLD-HERE"})
    assert (code, doc["error"]) == (400, "sku 'NOT-SOLD-HERE' is not in the catalogue")
    code, doc = alice.call(line, {"action": "shopper", "session_id": "S-NEVER"})
    assert code == 400 and "was not in the store" in doc["error"]
    assert alice.call("/api/review/999999", {"action": "accept"})[0] == 400
    # a good decision is queued and applied by cartd
    code, doc = alice.call(line, {"action": "accept"})
    assert code == 202
    deadline = time.monotonic() + 15
    while not (out := alice.call(f"/api/decision/{doc['decision']}")[1]).get("applied") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out["result"].startswith("accepted")
    # signing out ends the session on the server, not only in the browser
    cookies = list(alice.jar)
    assert alice.call("/logout", {})[0] == 200
    replay = Client(url)
    for c in cookies:
        replay.jar.set_cookie(c)
    assert replay.call("/api/state")[0] == 401
    # hostile unit documents are dropped and counted, and the console keeps its last good ones
    pub.send("unit-a/health", b"not json")
    pub.send("unit-a/health", b"[1, 2]")
    pub.send("unit-a/state", b"{" + b" " * (300 * 1024) + b"}")
    pub.send("unit-zz/status", {"state": "online"})  # not one of the store's units
    pub.flush()
    deadline = time.monotonic() + 10
    want = {"not_json": 1, "not_object": 1, "too_large": 1, "unknown_unit": 1}
    while (h := json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read()))[
            "dropped_unit_messages"] != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert h["dropped_unit_messages"] == want and h["faults"] == {}, h
    (unit,) = [u for u in vic.call("/api/state")[1]["units"] if u["unit_id"] == "unit-a"]
    assert unit["plates"] == {"1/1": {"state": "rest", "noise_g": 0.4}}
    # five wrong passwords, then the name is throttled (even with the right one)
    for _ in range(5):
        assert Client(url).sign_in("vic", "wrong-password") == 401
    assert Client(url).sign_in("vic", "vic-password-12") == 429


def test_console_start_errors_are_one_line_with_sysexits(tmp_path, mosquitto):
    def run(cfg: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aggregator.web", "--config", str(cfg), "--port", "0"],
                              cwd=REPO, capture_output=True, text=True, timeout=30, env=ENV)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstore_id: s\nstorage: {type: sqlite}\n")
    r = run(bad)
    assert r.returncode == 78 and "storage.path" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run(tmp_path / "missing.yaml")
    assert r.returncode == 66 and r.stderr.strip().endswith("missing.yaml: no such file"), r.stderr
    cfg = write_config(tmp_path, mosquitto)  # cartd never ran: no database yet
    r = run(cfg)
    assert r.returncode == 69 and "does not exist yet (start cartd first)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_sso_header_is_ignored_from_any_other_address():
    from types import SimpleNamespace

    from aggregator.config import parse_config
    from aggregator.console.server import Console

    cfg = parse_config({"store_id": "s", "storage": {"type": "sqlite", "path": "/nonexistent/x.db"},
                        "console": {"sso": {"header": "X-Forwarded-User", "trusted_proxies": ["10.0.0.5"]}}})
    looked_up: list[str] = []
    accounts = SimpleNamespace(proxy_user=lambda n: looked_up.append(n) or None)
    fake = SimpleNamespace(cfg=cfg, accounts=accounts)
    for addr in ("127.0.0.1", "10.0.0.6"):
        handler = SimpleNamespace(client_address=(addr, 5000), headers={"X-Forwarded-User": "alice"})
        assert Console.staff_for(fake, handler) is None  # type: ignore[arg-type]
    assert looked_up == []  # the header was not even read
    handler = SimpleNamespace(client_address=("10.0.0.5", 5000), headers={"X-Forwarded-User": "alice"})
    assert Console.staff_for(fake, handler) is None and looked_up == ["alice"]  # trusted: the account decides
