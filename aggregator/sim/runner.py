"""Runs a simulated store for real: a private Mosquitto on a free loopback port, one ``shelfd``
per unit (sim backend, scripted, on the store clock), ``cartd``, and the gates and tracking played
from the plan on the same clock (and, with ``RunOptions.web_port``, the staff page, started once
cartd is online and its database exists). Every child runs in its own session (a terminal's Ctrl-C
reaches only us), and :meth:`StoreRun.stop` ends them in order and leaves nothing behind. A child
that exits before :meth:`StoreRun.stop` is reported once, in one line naming it, its exit code and
its log's last line (``on_child_exit``; :meth:`StoreRun.check_children` looks).

The store clock is the wall clock: ``t0`` (epoch) is a few seconds after start, every unit's
sample 0 is at ``t0`` (``sensing.t0``), and the feeder publishes a gate or tracking message planned
at offset ``x`` at wall time ``t0 + x``. Real time means one run of N minutes takes N minutes;
overlapping shoppers keep 200 of them under ten.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .plan import Plan
from .store import Store
from .tracking import NoiseParams, batches

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "gondola/v1"


def rfc3339(t: float) -> str:
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_bin() -> str | None:
    for c in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", shutil.which("mosquitto")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def last_line(path: Path) -> str:
    """The last non-empty line of a log file ("" when it is empty or missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class ChildExited(RuntimeError):
    """A child the run cannot do without (a shelf unit, cartd) exited; the message is its one line."""

    def __init__(self, name: str, line: str):
        super().__init__(line)
        self.name = name


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Broker:
    """A private Mosquitto with persistence (sessions survive a restart on the same port)."""

    def __init__(self, workdir: Path, port: int | None = None):
        binary = mosquitto_bin()
        if binary is None:
            raise RuntimeError("mosquitto is missing: install it with 'sudo apt-get install mosquitto'")
        self.binary, self.port, self.dir = binary, port or free_port(), workdir
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {workdir}/", "autosave_interval 1", "max_queued_messages 0",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:  # as root Mosquitto drops to user mosquitto, who cannot write our tmp
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        (workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        with open(self.dir / "mosquitto.log", "ab") as logf:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.dir / "mosquitto.conf")],
                                         stdout=logf, stderr=logf, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig)


@dataclass
class RunOptions:
    tracking: str = "clean"            # clean | noisy
    noise: NoiseParams | None = None
    startup_s: float = 6.0             # t0 is this long after start(): daemons boot and settle
    receipt_grace_s: float = 40.0      # after the last exit, wait this long at most for receipts
    cartd_overrides: dict[str, Any] = field(default_factory=dict)
    watch_events: bool = False         # also collect the units' item events (the demo prints them)
    web_port: int | None = None        # also serve the staff page (python -m aggregator.web) on this port
    cartd_online_timeout_s: float = 60.0  # start(): cartd must be online this soon when the page needs it


class StoreRun:
    """One simulated store run. ``start()``, then ``wait()``, then ``stop()`` (or use ``with``)."""

    def __init__(self, store: Store, plan: Plan, workdir: Path, opts: RunOptions | None = None,
                 on_receipt: Callable[[dict[str, Any]], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_gate: Callable[[str, dict[str, Any]], None] | None = None,
                 on_child_exit: Callable[[str], None] | None = None):
        self.store, self.plan, self.dir = store, plan, Path(workdir)
        self.opts = opts or RunOptions()
        self.on_receipt, self.on_event, self.on_gate = on_receipt, on_event, on_gate
        self.on_child_exit = on_child_exit
        if (self.dir / "plan.json").exists():
            # A previous run's folder: its broker sessions, cartd database and unit outboxes would
            # carry that run's receipts and seqs into this one (and score them). Start clean.
            log.info("clearing the previous store run in %s", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker = Broker(self.dir / "broker")
        self.base = f"{PREFIX}/{store.store_id}"
        self.units: dict[str, subprocess.Popen[bytes]] = {}
        self.cartd: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.web_account: tuple[str, str] | None = None
        self.receipts: dict[str, dict[str, Any]] = {}       # receipt_id → document, as seen on the broker
        self.receipt_seen_at: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self._feeder_error: str | None = None
        self._reported: set[int] = set()    # id() of the children (and the feeder) already reported
        self._stopping = False
        self._cartd_online = threading.Event()
        self.t0 = 0.0
        self.cartd_config = self.dir / "cartd.yaml"

    # ------------------------------------------------------------ set-up

    def _write_files(self) -> None:
        scripts = self.plan.scripts(self.store)
        self.unit_configs: dict[str, Path] = {}
        for i, unit in enumerate(self.store.units):
            udir = self.dir / unit.unit_id
            udir.mkdir(exist_ok=True)
            script = udir / "script.jsonl"
            script.write_text("".join(json.dumps(x) + "\n" for x in scripts[unit.unit_id]))
            cfg = self.store.unit_config(unit, port=self.broker.port, state_dir=udir / "state", script=script,
                                         t0=self.t0, seed=self.plan.params.seed * 100 + i,
                                         ground_truth=udir / "sim_truth.json")
            path = udir / "shelfd.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            self.unit_configs[unit.unit_id] = path
        cat = self.store.write_catalogue(self.dir / "catalogue.yaml")
        cfg = {"version": 1, "store_id": self.store.store_id, "instance_id": "cartd-1",
               "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "topic_prefix": PREFIX},
               "storage": {"type": "sqlite", "path": str(self.dir / "cartd.sqlite3")},
               "catalogue": str(cat),
               "units": [{"unit_id": u.unit_id, "shelves": list(u.shelves)} for u in self.store.units]}
        for k, v in self.opts.cartd_overrides.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        self.cartd_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        storage = cfg.get("storage") or {}
        self.cartd_db = Path(storage["path"]) if storage.get("type") == "sqlite" and storage.get("path") else None
        self.plan.write(self.dir / "plan.json")

    def _feed(self) -> list[tuple[float, str, dict[str, Any], int]]:
        """Every gate and tracking message: (offset s, topic, payload, qos), in time order."""
        msgs: list[tuple[float, str, dict[str, Any], int]] = []
        for s in self.plan.sessions:
            msgs.append((s.t_entry, f"{self.base}/_store/gates/entry",
                         {"schema": "gondola.gate-entry/1", "session_id": s.session_id,
                          "t": rfc3339(self.t0 + s.t_entry), "gate": s.gate, "shopper_ref": f"acct-{s.session_id}"}, 1))
            msgs.append((s.t_exit, f"{self.base}/_store/gates/exit",
                         {"schema": "gondola.gate-exit/1", "session_id": s.session_id,
                          "t": rfc3339(self.t0 + s.t_exit), "gate": s.gate}, 1))
        for t, obs in batches(self.plan, self.store, self.opts.tracking, self.plan.params.seed, self.opts.noise):
            msgs.append((t, f"{self.base}/_store/tracking",
                         {"schema": "gondola.tracking/1", "t": rfc3339(self.t0 + t),
                          "source": f"sim-{self.opts.tracking}", "observations": obs}, 1))
        msgs.sort(key=lambda m: (m[0], m[1]))
        return msgs

    def cartd_cmd(self) -> list[str]:
        return [sys.executable, "-c", "import sys; from aggregator.cli import main; sys.exit(main())",
                "run", "--config", str(self.cartd_config)]

    def start_cartd(self) -> None:
        self._cartd_online.clear()
        with open(self.dir / "cartd.log", "ab") as logf:
            self.cartd = subprocess.Popen(self.cartd_cmd(), cwd=ROOT, stdout=logf, stderr=logf,
                                          start_new_session=True)

    def web_cmd(self, port: int) -> list[str]:
        return [sys.executable, "-m", "aggregator.web", "--config", str(self.cartd_config), "--port", str(port)]

    def start_web(self, port: int, timeout: float | None = None) -> None:
        """The staff page, once cartd is online (its database exists and is migrated by then): the
        page opens the database read-only and cannot create it."""
        wait_s = self.opts.cartd_online_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait_s
        db = self.cartd_db
        while not (self._cartd_online.is_set() and (db is None or db.exists())):
            if self.cartd is None or self.cartd.poll() is not None:
                raise ChildExited("cartd", self._exit_line("cartd", self.cartd, self.dir / "cartd.log"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"cartd is not online after {wait_s:g} s; "
                                   f"last line of {self.dir / 'cartd.log'}: {last_line(self.dir / 'cartd.log')}")
            self._cartd_online.wait(0.2)
        self.web_account = self._demo_account()
        with open(self.dir / "web.log", "ab") as logf:
            self.web = subprocess.Popen(self.web_cmd(port), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logf,
                                        start_new_session=True)

    def _demo_account(self) -> tuple[str, str]:
        """A supervisor account for the console (as `cartd user add` makes one), with a fresh
        password each run; also written to web-account.txt in the run's folder."""
        import secrets

        from ..config import load_config
        from ..console.accounts import Accounts
        from ..store import open_store
        password = secrets.token_urlsafe(9)
        store = open_store(load_config(self.cartd_config).storage)
        try:
            Accounts(store).add_user("demo", password, "supervisor", actor="demo")
        finally:
            store.close()
        (self.dir / "web-account.txt").write_text(f"demo {password}\n")
        return "demo", password

    def stop_web(self) -> None:
        """Stop the staff page on purpose (so it is not reported as an exit)."""
        if self.web is not None:
            self._reported.add(id(self.web))
            _stop(self.web)

    def start(self) -> None:
        self.broker.start()
        self.t0 = round(time.time() + self.opts.startup_s, 3)
        self._write_files()
        feed = self._feed()
        self._client = self._connect()
        for uid, path in self.unit_configs.items():
            with open(self.dir / uid / "shelfd.log", "ab") as logf:
                self.units[uid] = subprocess.Popen(
                    [sys.executable, "-c", "import sys; from daemon.cli import cli; sys.exit(cli())",
                     "run", "--config", str(path)], cwd=ROOT, stdout=logf, stderr=logf, start_new_session=True)
        self.start_cartd()
        self._feeder = threading.Thread(target=self._play, args=(feed,), name="storesim-feeder", daemon=True)
        self._feeder.start()
        if self.opts.web_port is not None:
            self.start_web(self.opts.web_port)

    def _connect(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"storesim-{self.store.store_id}",
                        protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.1, 1.0)  # type: ignore[arg-type]  # paho says int; it takes float seconds
        c.max_queued_messages_set(0)
        subs = [(f"{self.base}/_store/receipts/+", 1), (f"{self.base}/_store/cartd/status/+", 1)]
        if self.opts.watch_events or self.on_event:
            subs.append((f"{self.base}/+/events", 1))
        connected = threading.Event()

        def on_connect(cl: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if not rc.is_failure:
                cl.subscribe(subs)
                connected.set()

        c.on_connect = on_connect
        c.on_message = self._on_message
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = 3600  # receipts published while we reconnect are kept for us
        c.connect("127.0.0.1", self.broker.port, keepalive=10, clean_start=False, properties=props)
        c.loop_start()
        if not connected.wait(10):
            raise RuntimeError("store simulator could not connect to its broker")
        return c

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if "/_store/cartd/status/" in msg.topic:
            if isinstance(doc, dict) and doc.get("state") == "online":
                self._cartd_online.set()
            else:
                self._cartd_online.clear()
        elif "/_store/receipts/" in msg.topic:
            rid = doc.get("receipt_id") or msg.topic
            with self._lock:
                new = rid not in self.receipts
                self.receipts[rid] = doc
                self.receipt_seen_at.setdefault(rid, time.time())
                self._lock.notify_all()
            if new and self.on_receipt:
                self.on_receipt(doc)
        elif msg.topic.endswith("/events"):
            with self._lock:
                self.events.append(doc)
            if self.on_event:
                self.on_event(doc)

    def _play(self, feed: list[tuple[float, str, dict[str, Any], int]]) -> None:
        try:
            for off, topic, payload, qos in feed:
                wait = self.t0 + off - time.time()
                if wait > 0 and self._stop.wait(wait):
                    return
                self._client.publish(topic, json.dumps(payload), qos=qos)
                if self.on_gate and "/gates/" in topic:
                    self.on_gate(topic.rsplit("/", 1)[1], payload)
        except Exception as exc:  # reported by check_children like a child's exit
            self._feeder_error = f"{type(exc).__name__}: {exc}"
            log.exception("the feeder (gates and tracking) stopped")

    # ------------------------------------------------------------ watching the children

    def children(self) -> list[tuple[str, subprocess.Popen[bytes] | None, Path]]:
        """Every child process: (name, process, its log file)."""
        out: list[tuple[str, subprocess.Popen[bytes] | None, Path]] = [
            ("mosquitto", self.broker.proc, self.broker.dir / "mosquitto.log")]
        out += [(f"shelfd {uid}", p, self.dir / uid / "shelfd.log") for uid, p in self.units.items()]
        out.append(("cartd", self.cartd, self.dir / "cartd.log"))
        if self.web is not None:
            out.append(("staff page (aggregator.web)", self.web, self.dir / "web.log"))
        return out

    @staticmethod
    def _exit_line(name: str, proc: subprocess.Popen[bytes] | None, logf: Path) -> str:
        code = None if proc is None else proc.poll()
        return f"{name} exited with {exit_text(code)}; last line of {logf}: {last_line(logf) or '(empty)'}"

    def check_children(self) -> list[str]:
        """One line for each child (and the feeder thread) that stopped since the last look, unless
        :meth:`stop` stopped it; each is also passed to ``on_child_exit`` (else logged)."""
        if self._stopping:
            return []
        lines = []
        for name, proc, logf in self.children():
            if proc is None or proc.poll() is None or id(proc) in self._reported:
                continue
            self._reported.add(id(proc))
            lines.append(self._exit_line(name, proc, logf))
        feeder = self._feeder
        if feeder is not None and id(feeder) not in self._reported and not self._stop.is_set() and \
                (self._feeder_error is not None or not feeder.is_alive()):
            self._reported.add(id(feeder))
            if self._feeder_error is not None:
                lines.append(f"the feeder (gates and tracking) stopped: {self._feeder_error}")
        for line in lines:
            if self.on_child_exit is not None:
                self.on_child_exit(line)
            else:
                log.warning("%s", line)
        return lines

    # ------------------------------------------------------------ running

    def sessions_receipted(self) -> set[str | None]:
        with self._lock:
            return {r.get("session_id") for r in self.receipts.values()}

    def wait(self, timeout: float | None = None, tick: Callable[[], None] | None = None) -> bool:
        """Until every session has a receipt (True), or the plan's end plus the grace (False)."""
        want = {s.session_id for s in self.plan.sessions}
        deadline = self.t0 + self.plan.end_s + self.opts.receipt_grace_s
        if timeout is not None:
            deadline = min(deadline, time.time() + timeout)
        while time.time() < deadline:
            if want <= self.sessions_receipted():
                return True
            self.check_children()
            for uid, p in self.units.items():
                if p.poll() is not None:  # its shoppers' receipts can never be right
                    name = f"shelfd {uid}"
                    raise ChildExited(name, self._exit_line(name, p, self.dir / uid / "shelfd.log"))
            if tick:
                tick()
            with self._lock:
                self._lock.wait(0.5)
        return want <= self.sessions_receipted()

    def stored_receipts(self) -> list[dict[str, Any]]:
        """cartd's stored receipts (``cartd receipts``), the record behind what was published."""
        try:
            out = subprocess.run([sys.executable, "-c", "import sys; from aggregator.cli import main; sys.exit(main())",
                                  "receipts", "--config", str(self.cartd_config)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return []
        docs = []
        for line in out.stdout.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
        return docs

    def all_receipts(self) -> list[dict[str, Any]]:
        with self._lock:
            seen: dict[str | None, dict[str, Any]] = dict(self.receipts.items())
        for d in self.stored_receipts():
            seen.setdefault(d.get("receipt_id"), d)
        return list(seen.values())

    def stop(self) -> None:
        self.check_children()  # what died before we stop it all is still news
        self._stopping = True
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(5)
        _stop(self.web)
        for p in self.units.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.units.values():
            _stop(p)
        _stop(self.cartd)
        client = getattr(self, "_client", None)
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self.broker.stop()

    def __enter__(self) -> StoreRun:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
