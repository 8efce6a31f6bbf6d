"""The staff console: review queue with evidence, unit health and stock, signed-in writes.

    python -m aggregator.web --config cartd.yaml [--host 127.0.0.1] [--port 8080] [--wait-storage-s 0]

The parts live in :mod:`aggregator.console` (accounts, desk, unit watch, HTTP server); this module
opens what they need and serves until SIGTERM/SIGINT. Accounts: ``cartd user add``. The page
reads cartd's database and writes only review decisions, the audit log and sign-ins; cartd applies
the decisions (aggregator/engine/reviews.py). docs/console.md has the rest.

Exit codes: 0, 66 config file missing, 69 storage or port unavailable (or cartd's database is
older than this console: start cartd first), 78 bad config.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from daemon.exitcodes import EX_CONFIG, EX_NOINPUT, EX_UNAVAILABLE

from .config import Config
from .console.server import Console, Snapshots, make_handler
from .store import Store

__all__ = ["Snapshots", "main", "serve"]

log = logging.getLogger("aggregator.web")

NEEDS_SCHEMA = 2  # review decisions, audit, staff accounts (aggregator/schema.py)


def _open_storage(cfg: Config, wait_s: float) -> Store:
    """cartd's database, writable from several threads; waits up to wait_s for cartd to create it."""
    from . import schema
    from .config import SqliteStorage
    from .store import open_store
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if isinstance(cfg.storage, SqliteStorage) and not Path(cfg.storage.path).exists():
                raise FileNotFoundError(f"{cfg.storage.path} does not exist yet (start cartd first)")
            store = open_store(cfg.storage, threads=True)
            found = schema.version(store)
            store.end_read()
            if found >= NEEDS_SCHEMA:
                return store
            store.close()
            raise RuntimeError(f"{cfg.storage.type} storage is at schema version {found}, the console needs "
                               f"{NEEDS_SCHEMA}: start this version's cartd first (it migrates at start)")
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


class ConsoleServer(ThreadingHTTPServer):
    """http.server prints a traceback for a handler's unexpected fault; we log the first of each
    kind once, count every one (``/healthz``), and keep serving."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type, console: Console):
        super().__init__(addr, handler)
        self.console = console
        self._seen: set[str] = set()

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return  # the browser went away
        kind = type(exc).__name__
        self.console.faults[kind] += 1
        if kind not in self._seen:
            self._seen.add(kind)
            log.exception("unexpected fault while answering %s (logged once per kind; counted in /healthz)",
                          client_address)


def serve(config: Path, host: str = "127.0.0.1", port: int = 8080, refresh_s: float = 2.0,
          ready: threading.Event | None = None, stop: threading.Event | None = None, wait_storage_s: float = 0.0
          ) -> int:
    from daemon.config import ConfigError

    from .catalogue import Catalogue
    from .config import load_config
    from .console.accounts import Accounts
    from .console.desk import Desk
    from .views import Views
    if not config.exists():
        print(f"aggregator.web: {config}: no such file", file=sys.stderr)
        return EX_NOINPUT
    try:
        cfg = load_config(config)
        catalogue = Catalogue.load(cfg.catalogue, cfg.receipts.currency)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{config}: {line}" if not line.startswith(str(config)) else line, file=sys.stderr)
        return EX_CONFIG
    try:
        store = _open_storage(cfg, wait_storage_s)
    except Exception as exc:  # noqa: BLE001 - storage missing, unreachable or too old: say so in one line
        print(f"aggregator.web: cannot open cartd's storage: {str(exc).splitlines()[0] if str(exc) else exc!r}",
              file=sys.stderr)
        return EX_UNAVAILABLE
    accounts = Accounts(store, ttl_s=cfg.console.session_ttl_s)
    console = Console(cfg, Views(cfg, store, catalogue), accounts, Desk(accounts.db, catalogue), refresh_s)
    try:
        httpd = ConsoleServer((host, port), make_handler(console), console)
    except OSError as exc:
        print(f"aggregator.web: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        store.close()
        return EX_UNAVAILABLE
    console.start()
    n_users = len(accounts.users())
    log.info("staff console on http://%s:%d/ (store %s, %d account(s)%s)", host, httpd.server_address[1],
             cfg.store_id, n_users, "" if n_users else ": add one with `cartd user add`")
    if ready is not None:
        ready.set()
    if stop is not None:
        def shutdown_on_stop(stop: threading.Event) -> None:
            stop.wait()
            httpd.shutdown()
        threading.Thread(target=shutdown_on_stop, args=(stop,), daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        console.stop()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import signal
    ap = argparse.ArgumentParser(prog="python -m aggregator.web", description="Gondola staff console.")
    ap.add_argument("--config", type=Path, required=True, help="cartd's YAML config (storage, MQTT, store)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--refresh-s", type=float, default=2.0, help="rebuild at least this often")
    ap.add_argument("--wait-storage-s", type=float, default=0.0,
                    help="wait this long for cartd to create its database (a store starting up)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return serve(args.config, args.host, args.port, args.refresh_s, stop=stop, wait_storage_s=args.wait_storage_s)


if __name__ == "__main__":
    sys.exit(main())
