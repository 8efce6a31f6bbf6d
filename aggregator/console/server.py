"""The console's HTTP server (standard library ``http.server``; a handful of staff browsers on the
store LAN need nothing more).

Pages: ``/login`` (sign-in form), ``/`` (the console, ``static/staff.html`` + ``console.js``).
JSON: ``GET /api/me``, ``GET /api/state`` (the snapshot), ``GET /api/review/<line>`` (one line's
evidence and decisions), ``POST /api/review/<line>`` ``{"action": "accept" | "product" | "shopper" |
"remove", "sku"?, "quantity"?, "session_id"?}``, ``GET /api/decision/<id>``, ``POST /api/restock``,
``POST /api/maintenance``, ``POST /logout``. ``/events``: the snapshot as Server-Sent Events.
``/healthz`` is the only thing served without signing in.

Every write needs a signed-in account whose role allows it (accounts.PERMISSIONS), the session's
CSRF token in ``X-CSRF-Token``, a JSON body of at most 16 KiB, and no cross-site ``Origin`` or
``Sec-Fetch-Site``; the cookie is HttpOnly and SameSite=Strict. Answers to bad requests are one
line: ``{"error": "..."}``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import Counter
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from itsdangerous import Signer

from ..config import Config
from ..messages import fmt_ts
from ..views import Views
from .accounts import Accounts, Staff
from .desk import Desk, DeskError
from .unitwatch import UnitWatch

log = logging.getLogger("aggregator.web")

COOKIE = "gondola_session"
MAX_BODY = 16 * 1024
_LINE = re.compile(r"^/api/review/(\d{1,12})$")
_DECISION = re.compile(r"^/api/decision/(\d{1,12})$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
                               " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static(name: str) -> bytes:
    return (resources.files("aggregator") / "static" / name).read_bytes()


class Snapshots:
    """Builds the console's state from the database and the units' documents when poked (MQTT) or
    every ``refresh_s``; waiters are woken only when the state really changed."""

    def __init__(self, build: Any, refresh_s: float = 2.0):
        self.build = build
        self.refresh_s = refresh_s
        self._cond = threading.Condition()
        self._poke = threading.Event()
        self.version = 0
        self.body = b"{}"
        self._digest = ""
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="web-snapshots", daemon=True)

    def start(self) -> None:
        self.rebuild()
        self._thread.start()

    def poke(self) -> None:
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.refresh_s)
            self._poke.clear()
            if self._stop.is_set():
                return
            time.sleep(0.1)  # let a burst of messages land in one rebuild
            self.rebuild()

    def rebuild(self) -> None:
        try:
            state = self.build()
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.exception("cannot read the database (%d time(s)); the page keeps the last state", self.errors)
            return
        body = json.dumps(state, default=str, sort_keys=True)
        digest = hashlib.sha1(body.encode()).hexdigest()
        with self._cond:
            if digest == self._digest:
                return
            self._digest = digest
            self.version += 1
            self.body = json.dumps({"version": self.version, "built_at": time.time(), **state}, default=str).encode()
            self._cond.notify_all()

    def wait_newer(self, version: int, timeout: float) -> tuple[int, bytes]:
        with self._cond:
            self._cond.wait_for(lambda: self.version > version or self._stop.is_set(), timeout)
            return self.version, self.body


class Console:
    """Everything a request handler needs: config, views, accounts, desk, units, snapshots."""

    def __init__(self, cfg: Config, views: Views, accounts: Accounts, desk: Desk, refresh_s: float = 2.0):
        self.cfg = cfg
        self.views = views
        self.accounts = accounts
        self.desk = desk
        self.snaps = Snapshots(self.state, refresh_s)
        self.units = UnitWatch(cfg, self.snaps.poke)
        self._csrf_signer = Signer(accounts.signer.secret_keys[-1], salt="gondola-console-sso-csrf")
        self.faults: Counter[str] = Counter()  # unexpected faults while answering, by kind

    def health(self) -> dict[str, Any]:
        return {"ok": True, "mqtt_connected": self.units.connected, "snapshot_version": self.snaps.version,
                "snapshot_errors": self.snaps.errors, "faults": dict(self.faults),
                "dropped_unit_messages": dict(self.units.dropped)}

    def start(self) -> None:
        self.snaps.start()
        self.units.start()

    def stop(self) -> None:
        self.snaps.stop()
        self.units.stop()

    # -- the snapshot
    def state(self) -> dict[str, Any]:
        v = self.views
        with self.accounts.lock:
            db_units = v.units()
            state = {"store_id": self.cfg.store_id, "currency": self.cfg.receipts.currency,
                     "summary": v.summary(), "shelves": v.shelves(limit=5), "open_carts": v.open_carts(),
                     "review": v.review_queue(), "receipts": v.receipts(limit=50),
                     "deadletters": v.deadletters(limit=20), "audit": v.audit(limit=40)}
            acks = v.restock_acks()
        docs = self.units.snapshot()
        state["units"] = unit_health(db_units, docs, self.cfg, time.time())
        state["stock"] = stock(docs, self.cfg, acks, v)
        return state

    def staff_for(self, handler: BaseHTTPRequestHandler) -> Staff | None:
        sso = self.cfg.console.sso
        if sso.header:
            if handler.client_address[0] not in sso.trusted_proxies:
                return None
            name = handler.headers.get(sso.header)
            who = self.accounts.proxy_user(name) if name else None
            return who._replace(csrf=self._csrf_signer.get_signature(who.username).decode()) if who else None
        jar = SimpleCookie()
        try:
            jar.load(handler.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is no session, never a fault
            return None
        morsel = jar.get(COOKIE)
        return self.accounts.session(morsel.value if morsel else None)


def unit_health(db_units: list[dict[str, Any]], docs: dict[str, dict[str, Any]], cfg: Config,
                now: float) -> list[dict[str, Any]]:
    """One row per unit: status with reasons and since when, outbox, plates, calibration, camera."""
    names = sorted({u["unit_id"] for u in db_units} | set(docs) | {u.unit_id for u in cfg.units})
    by_db = {u["unit_id"]: u for u in db_units}
    out = []
    for name in names:
        d = docs.get(name, {})
        st, h = d.get("status") or {}, d.get("health") or {}
        since = d.get("_since")
        seen = d.get("_seen", {})
        plates, outbox, cam, cal = (_obj(h.get(k)) for k in ("plates", "outbox", "camera", "calibration"))
        state = st.get("state") or (by_db.get(name) or {}).get("status") or "unknown"
        out.append({
            "unit_id": name, "state": state,
            "reasons": [str(r) for r in (h.get("reasons") or [])][:10] if isinstance(h.get("reasons"), list)
            else ([str(st["reason"])] if st.get("reason") else []),
            "since": st.get("since") or (fmt_ts(since[1]) if since else None),
            "health_age_s": round(now - seen["health"], 1) if "health" in seen else None,
            "outbox_depth": outbox.get("depth"), "outbox_oldest_s": outbox.get("oldest_pending_age_s"),
            "plates": {str(k): {"state": p.get("state"), "noise_g": p.get("noise_g")}
                       for k, p in list(plates.items())[:64] if isinstance(p, dict)},
            "calibration": {"calibration_id": cal.get("calibration_id"), "created": cal.get("created"),
                            "last_verify": cal.get("last_verify") if isinstance(cal.get("last_verify"), dict)
                            else {}},
            "camera": cam.get("state", "absent"),
            "last_seq": (by_db.get(name) or {}).get("last_seq"),
        })
    return out


def _obj(v: Any) -> dict[str, Any]:
    """A sub-document of a unit's message, or {} when it is missing or not an object."""
    return v if isinstance(v, dict) else {}


def stock(docs: dict[str, dict[str, Any]], cfg: Config, acks: dict[str, str], views: Views) -> dict[str, Any]:
    """Facings with their estimated units and low-stock alerts; misplaced items seen on shelves."""
    low = cfg.console.low_stock
    facings, alerts, misplaced = [], [], []
    for unit in sorted(docs):
        st = docs[unit].get("state") or {}
        for f in (st.get("facings") or [])[:500]:
            if not isinstance(f, dict):
                continue
            sku, units = f.get("sku"), f.get("units")
            threshold = low.skus.get(sku, low.default) if isinstance(sku, str) else low.default
            row = {"unit_id": unit, "shelf": f.get("shelf"), "sku": sku, "name": views.name(sku),
                   "plates": f.get("plates"), "units": units, "source": f.get("source"), "threshold": threshold,
                   "low": isinstance(units, int) and units <= threshold}
            facings.append(row)
            if row["low"]:
                key = f"{unit}/{row['shelf']}/{sku}"
                alerts.append({**row, "key": key, "acknowledged": acks.get(key)})
        for m in (st.get("misplaced") or [])[:200]:
            if isinstance(m, dict):
                misplaced.append({"unit_id": unit, "shelf": m.get("shelf"), "sku": m.get("sku"),
                                  "name": views.name(m.get("sku")), "plates": m.get("plates"),
                                  "units": m.get("units")})
    return {"facings": facings, "alerts": alerts, "misplaced": misplaced}


def make_handler(console: Console) -> type[BaseHTTPRequestHandler]:
    page, script, login = static("staff.html"), static("console.js"), static("login.html")
    cfg = console.cfg

    class Handler(BaseHTTPRequestHandler):
        server_version = "gondola-console/2"

        def log_message(self, format: str, *args: Any) -> None:  # access log at debug level, not stderr
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**_SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, doc: Any) -> None:
            self._send(code, json.dumps(doc, default=str).encode(), "application/json")

        def _error(self, code: int, msg: str) -> None:
            self._json(code, {"error": msg})

        def _redirect(self, where: str, cookie: str | None = None) -> None:
            headers = {"Location": where}
            if cookie is not None:
                headers["Set-Cookie"] = cookie
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", headers)

        def _cookie(self, value: str, max_age: int) -> str:
            secure = "; Secure" if cfg.console.secure_cookies else ""
            return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"

        # -- reading
        def do_GET(self) -> None:  # http.server's naming
            path = urlsplit(self.path).path
            if path == "/healthz":
                return self._json(200, console.health())
            if path == "/login":
                return self._send(200, login, "text/html; charset=utf-8")
            if path == "/static/console.js":
                return self._send(200, script, "text/javascript; charset=utf-8")
            who = console.staff_for(self)
            if who is None:
                if path in ("/", "/index.html"):
                    return self._redirect("/login")
                return self._error(HTTPStatus.UNAUTHORIZED, "sign in first")
            if path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if path == "/api/me":
                return self._json(200, {"username": who.username, "role": who.role, "csrf": who.csrf,
                                        "may": {p: who.may(p) for p in ("review", "restock", "maintenance")},
                                        "sso": bool(cfg.console.sso.header)})
            if path == "/api/state":
                return self._send(200, console.snaps.body, "application/json")
            if path == "/events":
                return self._sse()
            m = _LINE.match(path)
            if m:
                with console.accounts.lock:
                    item = console.views.review_item(int(m.group(1)))
                return self._json(200, item) if item else self._error(404, f"no line {m.group(1)}")
            m = _DECISION.match(path)
            if m:
                out = console.desk.outcome(int(m.group(1)))
                if out is None:
                    return self._error(404, f"no decision {m.group(1)}")
                return self._json(200, {"id": int(m.group(1)), "applied": out[0] is not None, "result": out[1]})
            return self._error(HTTPStatus.NOT_FOUND, f"nothing at {path[:80]}")

        do_HEAD = do_GET

        # -- writing
        def _cross_site(self) -> str | None:
            site = self.headers.get("Sec-Fetch-Site")
            if site and site not in ("same-origin", "none"):
                return f"cross-site request refused (Sec-Fetch-Site: {site[:20]})"
            origin = self.headers.get("Origin")
            if origin and origin != "null":
                host = urlsplit(origin).netloc
                if host != self.headers.get("Host"):
                    return f"cross-site request refused (Origin {origin[:80]})"
            elif origin == "null":
                return "cross-site request refused (Origin null)"
            return None

        def _body(self) -> bytes | None:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if not 0 <= n <= MAX_BODY:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body must be 0..{MAX_BODY} bytes")
                return None
            return self.rfile.read(n) if n else b""

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            problem = self._cross_site()
            if problem:
                return self._error(HTTPStatus.FORBIDDEN, problem)
            raw = self._body()
            if raw is None:
                return
            if path == "/login":
                return self._login(raw)
            who = console.staff_for(self)
            if who is None:
                return self._error(HTTPStatus.UNAUTHORIZED, "sign in first")
            token = self.headers.get("X-CSRF-Token", "")
            if not who.csrf or not hmac.compare_digest(token.encode(), who.csrf.encode()):
                return self._error(HTTPStatus.FORBIDDEN, "missing or wrong X-CSRF-Token")
            if path == "/logout":
                jar = SimpleCookie(self.headers.get("Cookie", ""))
                console.accounts.sign_out(jar[COOKIE].value if COOKIE in jar else None, who.username)
                return self._send(200, b'{"ok": true}', "application/json", {"Set-Cookie": self._cookie("", 0)})
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._error(HTTPStatus.BAD_REQUEST, "body is not JSON")
            if not isinstance(body, dict):
                return self._error(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            m = _LINE.match(path)
            try:
                if m:
                    if not who.may("review"):
                        return self._error(HTTPStatus.FORBIDDEN, f"role {who.role} may not decide reviews")
                    did = console.desk.decide(who, int(m.group(1)), body)
                    console.snaps.poke()
                    return self._json(HTTPStatus.ACCEPTED, {"decision": did})
                if path == "/api/restock":
                    if not who.may("restock"):
                        return self._error(HTTPStatus.FORBIDDEN, f"role {who.role} may not acknowledge restocks")
                    console.desk.restock_ack(who, *(str(body.get(k) or "") for k in ("unit_id", "shelf", "sku")))
                    console.snaps.poke()
                    return self._json(200, {"ok": True})
                if path == "/api/maintenance":
                    if not who.may("maintenance"):
                        return self._error(HTTPStatus.FORBIDDEN, f"role {who.role} may not change maintenance")
                    return self._maintenance(who, body)
            except DeskError as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return self._error(HTTPStatus.NOT_FOUND, f"nothing to post at {path[:80]}")

        do_PUT = do_DELETE = do_PATCH = lambda self: self._error(
            HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST")

        def _login(self, raw: bytes) -> None:
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                try:
                    form = json.loads(raw)
                except ValueError:
                    form = None
            else:
                form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            if not isinstance(form, dict) or not isinstance(form.get("username"), str) \
                    or not isinstance(form.get("password"), str):
                return self._error(HTTPStatus.BAD_REQUEST, "username and password are needed")
            name = form["username"].strip()
            wait = console.accounts.throttled(name)
            if wait > 0:
                return self._error(HTTPStatus.TOO_MANY_REQUESTS, f"too many failed sign-ins for {name[:64]!r}:"
                                                                  f" wait {wait:.0f} s")
            got = console.accounts.sign_in(name, form["password"], self.client_address[0])
            if got is None:
                if ctype.startswith("application/json"):
                    return self._error(HTTPStatus.UNAUTHORIZED, "wrong user name or password")
                return self._redirect("/login?failed=1")
            cookie, who = got
            log.info("%s signed in (%s) from %s", who.username, who.role, self.client_address[0])
            c = self._cookie(cookie, int(console.accounts.ttl_s))
            if ctype.startswith("application/json"):
                return self._send(200, json.dumps({"username": who.username, "role": who.role,
                                                   "csrf": who.csrf}).encode(), "application/json", {"Set-Cookie": c})
            return self._redirect("/", cookie=c)

        def _maintenance(self, who: Staff, body: dict[str, Any]) -> None:
            unit, plates, seconds = body.get("unit_id"), body.get("plates"), body.get("seconds", 600)
            if not isinstance(unit, str) or not any(u["unit_id"] == unit for u in json.loads(console.snaps.body)
                                                    .get("units", [])):
                return self._error(HTTPStatus.BAD_REQUEST, f"unit_id: unknown unit {str(unit)[:64]!r}")
            if not isinstance(plates, list) or not plates or len(plates) > 64 \
                    or not all(isinstance(p, str) and len(p) <= 16 for p in plates):
                return self._error(HTTPStatus.BAD_REQUEST, "plates: a list of plate names like \"1/2\"")
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 3600:
                return self._error(HTTPStatus.BAD_REQUEST, "seconds: 0..3600 (0 ends maintenance)")
            reply = console.units.request(unit, "maintenance", {"plates": plates, "seconds": seconds}, who.username)
            console.desk.note(who.username, "maintenance.on" if seconds else "maintenance.off", unit,
                              {"plates": plates, "seconds": seconds, "ok": bool(reply.get("ok")),
                               "error": reply.get("error")})
            if not reply.get("ok"):
                return self._error(HTTPStatus.BAD_GATEWAY, str(reply.get("error") or "the unit refused")[:200])
            return self._json(200, {"ok": True, "result": reply.get("result")})

        def _sse(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            version = -1
            try:
                self.wfile.write(b"retry: 1000\n\n")
                while True:
                    new, body = console.snaps.wait_newer(version, 15.0)
                    if new > version:
                        version = new
                        self.wfile.write(b"event: state\ndata: " + body + b"\n\n")
                    else:
                        self.wfile.write(b": keep-alive\n\n")  # also notices a closed tab
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return

    return Handler


__all__ = ["Console", "Snapshots", "make_handler", "stock", "unit_health"]
