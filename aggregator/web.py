"""The staff page: a read-only view of the store, updating live.

    python -m aggregator.web --config cartd.yaml [--host 127.0.0.1] [--port 8080]

Shelves and their last events, open carts, lines awaiting review, receipts and dead letters,
read from cartd's database through :mod:`aggregator.views` (read-only connection). Standard
library only (``http.server``): the page is small, and a store server needs nothing more to serve a
handful of staff browsers.

Live updates: the server subscribes to the store's MQTT topics (item events, receipts, dead
letters, cartd health) only to learn *when* something changed; it then rebuilds one snapshot from
the database and pushes it to every open page as a Server-Sent Event (``/events``). A periodic
rebuild (``--refresh-s``) covers a broker that is down. ``/api/state`` returns the same snapshot
for scripts and for browsers without EventSource. Nothing on the page writes anything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from daemon.exitcodes import EX_CONFIG, EX_UNAVAILABLE

log = logging.getLogger("aggregator.web")


class Snapshots:
    """Builds the page's state from the database when poked (MQTT) or every ``refresh_s``;
    waiters are woken only when the state really changed."""

    def __init__(self, views, store_id: str, refresh_s: float = 2.0, limit: int = 50):
        self.views = views
        self.store_id = store_id
        self.refresh_s = refresh_s
        self.limit = limit
        self._cond = threading.Condition()
        self._poke = threading.Event()
        self.version = 0
        self.body = b"{}"
        self._digest = ""
        self.errors = 0
        self._stop = threading.Event()
        self._rebuild()
        self._thread = threading.Thread(target=self._loop, name="web-snapshots", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.refresh_s)
            self._poke.clear()
            if self._stop.is_set():
                return
            time.sleep(0.1)  # let a burst of messages land in one rebuild
            self._rebuild()

    def _rebuild(self) -> None:
        v = self.views
        try:
            state = {"store_id": self.store_id, "summary": v.summary(), "units": v.units(),
                     "shelves": v.shelves(limit=5), "open_carts": v.open_carts(),
                     "review": v.review_lines(), "receipts": v.receipts(limit=self.limit),
                     "deadletters": v.deadletters(limit=20)}
        except Exception:  # a locked or missing database must not end the page
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
            self.body = json.dumps({"version": self.version, "built_at": time.time(), **state},
                                   default=str).encode()
            self._cond.notify_all()

    def wait_newer(self, version: int, timeout: float) -> tuple[int, bytes]:
        with self._cond:
            self._cond.wait_for(lambda: self.version > version or self._stop.is_set(), timeout)
            return self.version, self.body


def _page() -> bytes:
    return (resources.files("aggregator") / "static" / "staff.html").read_bytes()


def make_handler(snaps: Snapshots, page: bytes):
    class Handler(BaseHTTPRequestHandler):
        server_version = "gondola-staff/1"

        def log_message(self, fmt, *args):  # access log at debug level, not on stderr
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/api/state":
                self._send(200, snaps.body, "application/json")
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/events":
                self._sse()
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def do_POST(self):  # read-only page: nothing to post to
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain")

        do_PUT = do_DELETE = do_POST

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
                    new, body = snaps.wait_newer(version, 15.0)
                    if new > version:
                        version = new
                        self.wfile.write(b"event: state\ndata: " + body + b"\n\n")
                    else:
                        self.wfile.write(b": keep-alive\n\n")  # also notices a closed tab
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return

    return Handler


def _mqtt_watch(cfg, snaps: Snapshots):
    """Subscribe to what changes the page; every message pokes a rebuild. Failure is not fatal:
    the periodic rebuild keeps the page current, just less promptly."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    base = f"{cfg.mqtt.topic_prefix}/{cfg.store_id}"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
    if cfg.mqtt.username:
        pw = cfg.mqtt.password_file.read_text().strip() if cfg.mqtt.password_file else None
        c.username_pw_set(cfg.mqtt.username, pw)
    if cfg.mqtt.tls:
        t = cfg.mqtt.tls
        c.tls_set(ca_certs=t.ca_file and str(t.ca_file), certfile=t.cert_file and str(t.cert_file),
                  keyfile=t.key_file and str(t.key_file))
    c.reconnect_delay_set(0.2, 5.0)
    topics = [(f"{base}/+/events", 0), (f"{base}/_store/receipts/+", 0), (f"{base}/_store/cartd/deadletter", 0),
              (f"{base}/_store/cartd/health/+", 0), (f"{base}/_store/gates/+", 0)]
    c.on_connect = lambda cl, *_a: cl.subscribe(topics)
    # cartd commits before it publishes, but the event topic arrives before cartd has applied it:
    # poke now and once more shortly after
    def on_message(_c, _u, _m):
        snaps.poke()
        threading.Timer(0.7, snaps.poke).start()
    c.on_message = on_message
    try:
        c.connect_async(cfg.mqtt.host, cfg.mqtt.port, keepalive=30)
        c.loop_start()
    except (OSError, ValueError) as exc:
        log.warning("MQTT %s:%s unavailable (%s); refreshing every %.1f s instead", cfg.mqtt.host,
                    cfg.mqtt.port, exc, snaps.refresh_s)
    return c


def serve(config: Path, host: str = "127.0.0.1", port: int = 8080, refresh_s: float = 2.0,
          ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    from daemon.config import ConfigError

    from .config import load_config
    from .views import Views
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{config}: {line}" if not line.startswith(str(config)) else line, file=sys.stderr)
        return EX_CONFIG
    try:
        views = Views.from_config(cfg)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:  # noqa: BLE001 - storage missing or unreachable: say so in one line
        print(f"aggregator.web: cannot open cartd's storage: {str(exc).splitlines()[0] if str(exc) else exc!r}",
              file=sys.stderr)
        return EX_UNAVAILABLE
    snaps = Snapshots(views, cfg.store_id, refresh_s)
    client = _mqtt_watch(cfg, snaps)
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(snaps, _page()))
    except OSError as exc:
        print(f"aggregator.web: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EX_UNAVAILABLE
    httpd.daemon_threads = True
    log.info("staff page on http://%s:%d/ (store %s)", host, httpd.server_address[1], cfg.store_id)
    if ready is not None:
        ready.set()
    stopper = None
    if stop is not None:
        stopper = threading.Thread(target=lambda: (stop.wait(), httpd.shutdown()), daemon=True)
        stopper.start()
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        snaps.stop()
        client.loop_stop()
        views.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import signal
    ap = argparse.ArgumentParser(prog="python -m aggregator.web", description="Gondola staff page (read-only).")
    ap.add_argument("--config", type=Path, required=True, help="cartd's YAML config (storage, MQTT, store)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--refresh-s", type=float, default=2.0, help="rebuild at least this often")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return serve(args.config, args.host, args.port, args.refresh_s, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
