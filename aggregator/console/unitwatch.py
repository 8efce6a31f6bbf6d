"""The units as the console sees them: their retained ``status``, ``health`` and ``state``
documents, kept from MQTT, and maintenance requests sent to them.

The broker is a trust boundary: a document is kept only when its topic names a plausible unit (in
cartd's ``units`` list when that list is set), it is at most ``MAX_DOC`` bytes and a JSON object;
anything else is counted in ``dropped`` and forgotten. At most ``MAX_UNITS`` units are kept.
Every message also pokes the page's snapshot (``on_change``), as the read-only page did.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import Config

log = logging.getLogger(__name__)

MAX_DOC = 256 * 1024
MAX_UNITS = 256
DOCS = ("status", "health", "state")


class UnitWatch:
    def __init__(self, cfg: Config, on_change: Callable[[], None], clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.base = cfg.base
        self.on_change = on_change
        self.clock = clock
        self.lock = threading.Lock()
        self.docs: dict[str, dict[str, Any]] = {}   # unit → {"status": {...}, "health": {...}, "state": {...}}
        self.seen: dict[str, dict[str, float]] = {}  # unit → kind → when received
        self.status_since: dict[str, tuple[str, float]] = {}  # unit → (state, when it became that)
        self.dropped: Counter[str] = Counter()
        self._replies: dict[str, dict[str, Any]] = {}
        self._reply_cv = threading.Condition(self.lock)
        self.connected = False
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        m = cfg.mqtt
        own = cfg.console.mqtt  # the console's own identity when it has one
        user, pw_file = (own.username, own.password_file) if own.username else (m.username, m.password_file)
        if user:
            c.username_pw_set(user, pw_file.read_text().strip() if pw_file else None)
        if m.tls:
            t = m.tls
            c.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                      certfile=str(t.cert_file) if t.cert_file else None,
                      keyfile=str(t.key_file) if t.key_file else None)
        c.reconnect_delay_set(1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def start(self) -> None:
        try:
            self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=30)
            self.client.loop_start()
        except (OSError, ValueError) as exc:
            log.warning("MQTT %s:%s unavailable (%s): unit health will be missing", self.cfg.mqtt.host,
                        self.cfg.mqtt.port, exc)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("MQTT connect refused: %s", rc)
            return
        self.connected = True
        b = self.base
        cl.subscribe([(f"{b}/+/status", 1), (f"{b}/+/health", 0), (f"{b}/+/state", 0), (f"{b}/+/res/maintenance", 1),
                      (f"{b}/+/events", 0), (f"{b}/_store/receipts/+", 0), (f"{b}/_store/cartd/deadletter", 0),
                      (f"{b}/_store/cartd/health/+", 0), (f"{b}/_store/gates/+", 0)])
        self.on_change()

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected = False

    def _unit_ok(self, unit: str) -> bool:
        if not unit or unit.startswith("_") or len(unit) > 64:
            return False
        if self.cfg.units:
            return any(u.unit_id == unit for u in self.cfg.units)
        return unit in self.docs or len(self.docs) < MAX_UNITS

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.on_change()
        rest = msg.topic[len(self.base) + 1:].split("/") if msg.topic.startswith(self.base + "/") else []
        if len(rest) == 2 and rest[1] in DOCS:
            unit, kind = rest
        elif len(rest) == 3 and rest[1:] == ["res", "maintenance"]:
            unit, kind = rest[0], "reply"
        else:
            return
        if not self._unit_ok(unit):
            self.dropped["unknown_unit"] += 1
            return
        if len(msg.payload) > MAX_DOC:
            self.dropped["too_large"] += 1
            return
        if not msg.payload:  # a cleared retained document
            with self.lock:
                self.docs.get(unit, {}).pop(kind, None)
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            self.dropped["not_json"] += 1
            return
        if not isinstance(doc, dict):
            self.dropped["not_object"] += 1
            return
        now = self.clock()
        with self.lock:
            if kind == "reply":
                txid = doc.get("txid")
                if isinstance(txid, str) and txid in self._replies:
                    self._replies[txid] = doc
                    self._reply_cv.notify_all()
                return
            self.docs.setdefault(unit, {})[kind] = doc
            self.seen.setdefault(unit, {})[kind] = now
            if kind == "status":
                state = str(doc.get("state", "?"))[:20]
                prev = self.status_since.get(unit)
                if prev is None or prev[0] != state:
                    self.status_since[unit] = (state, now)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {u: {**docs, "_seen": dict(self.seen.get(u, {})),
                        "_since": self.status_since.get(u)} for u, docs in self.docs.items()}

    def request(self, unit: str, command: str, args: dict[str, Any], identity: str, timeout_s: float = 5.0
                ) -> dict[str, Any]:
        """Send ``req/<command>`` to a unit and wait for its answer (``{"ok": ..., ...}``)."""
        if not self.connected:
            return {"ok": False, "error": "the console is not connected to the broker"}
        txid = uuid.uuid4().hex
        with self.lock:
            self._replies[txid] = {}
        try:
            payload = json.dumps({**args, "txid": txid, "identity": f"console:{identity}"})
            self.client.publish(f"{self.base}/{unit}/req/{command}", payload, qos=1)
            with self.lock:
                self._reply_cv.wait_for(lambda: bool(self._replies.get(txid)), timeout_s)
                reply = self._replies.get(txid) or {}
        finally:
            with self.lock:
                self._replies.pop(txid, None)
        return reply or {"ok": False, "error": f"{unit} did not answer within {timeout_s:g} s"}
