"""Helpers for the cartd tests: config files, a cartd subprocess, payload builders, a publisher."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from ulid import ULID

REPO = Path(__file__).resolve().parent.parent
PREFIX = "gondola/v1"
STORE = "store-1"
BASE = f"{PREFIX}/{STORE}"

CATALOGUE = {"items": [
    {"sku": "A", "name": "Apple juice", "price": 250, "currency": "USD"},
    {"sku": "B", "name": "Bagel", "price": 120, "currency": "USD"},
    {"sku": "C", "name": "Crisps", "price": 199, "currency": "USD"},
]}


def ts(t: float) -> str:
    from aggregator.messages import fmt_ts
    return fmt_ts(t)  # type: ignore[return-value]


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.3):
            pass
    except OSError:
        return False
    try:
        import psycopg
        psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=2).close()
    except Exception:  # noqa: BLE001 - any failure means no PostgreSQL here
        try:
            import psycopg
            psycopg.connect("host=127.0.0.1 port=5432 dbname=test", connect_timeout=2).close()
        except Exception:  # noqa: BLE001 - any failure means no PostgreSQL here
            return False
    return True


def pg_dsn() -> str:
    import psycopg
    for dsn in ("host=127.0.0.1 port=5432 dbname=test user=postgres", "host=127.0.0.1 port=5432 dbname=test"):
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return dsn
        except Exception:  # noqa: BLE001 - any failure means no PostgreSQL here
            continue
    raise RuntimeError("PostgreSQL at 127.0.0.1:5432 not reachable")


def write_config(tmp: Path, broker, *, name: str = "cartd", storage: dict | None = None, **over: Any) -> Path:
    (tmp / "catalogue.yaml").write_text(yaml.safe_dump(CATALOGUE))
    cfg: dict[str, Any] = {
        "version": 1, "store_id": STORE, "instance_id": name,
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "session_expiry_s": 600},
        "storage": storage or {"type": "sqlite", "path": str(tmp / "cartd.sqlite3")},
        "catalogue": str(tmp / "catalogue.yaml"),
        "units": [{"unit_id": "unit-a"}, {"unit_id": "unit-b"}],
        "receipts": {"deadline_s": 6.0, "correction_delay_s": 0.3},
        "resend": {"gap_wait_s": 0.5, "retry_s": 1.0, "max_attempts": 3},
        "tick_s": 0.1, "health_interval_s": 1.0,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


class Cartd:
    """``cartd run`` as a real subprocess."""

    def __init__(self, config: Path, log: Path):
        self.config = config
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Cartd:
        logf = open(self.log, "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "aggregator.cli", "run", "--config", str(self.config)],
                                     cwd=REPO, stdout=logf, stderr=logf, env=env)
        logf.close()
        return self

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Pub:
    """A paho publisher that waits for PUBACKs."""

    def __init__(self, broker, client_id: str = ""):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._infos: list = []

    def send(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self._infos.append(
            self.client.publish(topic if topic.startswith(PREFIX) else f"{BASE}/{topic}", data, qos=qos, retain=retain)
        )

    def flush(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for info in self._infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._infos = []

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def item_event(unit: str, seq: int, shelf: str, etype: str, sku: str | None, qty: int, t_start: float,
               t_end: float | None = None, **extra: Any) -> dict:
    t_end = t_end if t_end is not None else t_start + 1.0
    ev = {"schema": "gondola.item-event/1", "event_id": str(ULID()), "store_id": STORE, "unit_id": unit,
          "seq": seq, "shelf": shelf, "plates": [1], "type": etype, "sku": sku, "quantity": qty,
          "t_start": ts(t_start), "t_end": ts(t_end), "delta_g": -50.0 * qty if etype == "pick" else 50.0 * qty,
          "confidence": 0.97, "candidates": [{"sku": sku, "quantity": qty, "score": 0.97}]}
    ev.update(extra)
    return ev


def entry(session: str, t: float) -> dict:
    return {"schema": "gondola.gate-entry/1", "session_id": session, "t": ts(t), "gate": "g1"}


def exit_(session: str, t: float) -> dict:
    return {"schema": "gondola.gate-exit/1", "session_id": session, "t": ts(t), "gate": "g1"}


def tracking(t: float, obs: list[tuple[str, str, str | None, float]]) -> dict:
    return {"schema": "gondola.tracking/1", "t": ts(t),
            "observations": [{"session_id": s, "unit_id": u, "shelf": sh, "confidence": c} for s, u, sh, c in obs]}


def health(t: float, last_seq: int) -> dict:
    return {"t": ts(t), "outbox": {"depth": 0, "oldest_pending_age_s": None, "last_seq": last_seq}}


@cache
def schema(name: str) -> dict:
    return json.loads((REPO / "aggregator" / "schemas" / f"{name}.schema.json").read_text())


def validate(doc: dict, name: str) -> None:
    import jsonschema
    jsonschema.validate(doc, schema(name))


class UnitResponder:
    """Plays a unit's control endpoint: answers req/rebirth with fresh health, and req/resend from
    a dict of events it holds (republished with historical=true), like the daemon's outbox does."""

    def __init__(self, broker, unit: str, events: dict[int, dict] | None = None, last_seq: int = 0):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        self.unit = unit
        self.events = dict(events or {})
        self.last_seq = last_seq
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{BASE}/{unit}/req/+", qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def _on_message(self, c, _u, msg) -> None:
        req = json.loads(msg.payload)
        cmd = msg.topic.rsplit("/", 1)[1]
        with self._lock:
            self.requests.append((cmd, req))
        if cmd == "rebirth":
            c.publish(f"{BASE}/{self.unit}/health", json.dumps(health(time.time(), self.last_seq)), qos=1, retain=True)
            result: dict = {}
        elif cmd == "resend":
            n, missing = 0, []
            for s in range(req["from_seq"], req["to_seq"] + 1):
                ev = self.events.get(s)
                if ev is None:
                    missing.append([s, s])
                    continue
                c.publish(f"{BASE}/{self.unit}/events", json.dumps({**ev, "historical": True}), qos=1)
                n += 1
            result = {"resent": n, "missing": missing}
        else:
            return
        c.publish(f"{BASE}/{self.unit}/res/{cmd}", json.dumps({"txid": req.get("txid"), "command": cmd, "ok": True,
                                                                 "result": result}), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def scenario(n_sessions: int, events_per_session: int, now: float, seed: int = 1, units=("unit-a", "unit-b")):
    """A deterministic store visit log: entries, tracking, events (seq per unit), exits.

    Each shopper visits shelves one at a time (alone at a shelf at that moment, clean tracking),
    picks and sometimes puts back what they hold. Returns (messages in time order as (topic, doc)),
    expected {session: {sku: qty}}, {unit: last_seq}).
    """
    import random
    rng = random.Random(seed)
    skus = ["A", "B", "C"]
    msgs: list[tuple[float, str, dict]] = []
    expect: dict[str, dict[str, int]] = {}
    seq = {u: 0 for u in units}
    t_base = now - 10 - n_sessions * events_per_session * 1.0 - 30
    events: list[tuple[float, str, dict]] = []
    for i in range(n_sessions):
        sid = f"S{i:04d}"
        t = t_base + i * 0.7
        msgs.append((t, "_store/gates/entry", entry(sid, t)))
        cart: dict[str, int] = {}
        # each shopper gets a private shelf id so two shoppers are never at one shelf at once
        shelf = str(i)
        unit = units[i % len(units)]
        for k in range(events_per_session):
            ts0 = t + 2 + k * 1.0
            held = [s for s, q in cart.items() if q > 0]
            if held and rng.random() < 0.25:
                sku, etype = rng.choice(held), "put_back"
                cart[sku] -= 1
            else:
                sku, etype = rng.choice(skus), "pick"
                cart[sku] = cart.get(sku, 0) + 1
            msgs.append((ts0 - 0.2, "_store/tracking", tracking(ts0 - 0.2, [(sid, unit, shelf, 0.9)])))
            msgs.append((ts0 + 0.5, "_store/tracking", tracking(ts0 + 0.5, [(sid, unit, shelf, 0.9)])))
            events.append((ts0, unit, {"shelf": shelf, "etype": etype, "sku": sku}))
        t_exit = t + 2 + events_per_session * 1.0 + 2
        msgs.append((t_exit, "_store/gates/exit", exit_(sid, t_exit)))
        expect[sid] = {s: q for s, q in cart.items() if q > 0}
    for ts0, unit, e in sorted(events, key=lambda x: x[0]):
        seq[unit] += 1
        msgs.append(
            (
                ts0 + 0.8,
                f"{unit}/events",
                item_event(unit, seq[unit], e["shelf"], e["etype"], e["sku"], 1, ts0, ts0 + 0.6),
            )
        )
    msgs.sort(key=lambda m: m[0])
    return [(topic, doc) for _, topic, doc in msgs], expect, seq


def receipt_carts(payloads: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for p in payloads:
        d = json.loads(p) if isinstance(p, str) else p
        out[d["session_id"]] = {l["sku"]: l["quantity"] for l in d["lines"] if l["quantity"] > 0}
    return out
