"""``cartd run``: the MQTT side. Receive → apply in one transaction → commit → acknowledge.

paho runs its network loop in its own thread and only queues what it gets (``manual_ack=True``:
nothing is acknowledged by paho). One worker thread owns the database: it drains bursts of up to
``batch.max_messages``, hands them to the engine, commits, then sends the PUBACKs, and publishes
what the engine produced. A message acknowledged is a message committed; a message not committed
is redelivered by the broker from our persistent session (MQTT 5, clean_start=False, session
expiry), and re-applying it is a no-op (dedupe by event_id).

PUBACKs carry the packet id of *one* connection: after a reconnect the broker redelivers everything
unacknowledged with new ids, so acks for messages of an older connection are dropped, not sent.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.publish.mqtt import configure_auth

from . import __version__
from .catalogue import Catalogue
from .config import Config
from .engine import Engine, Outbound
from .messages import fmt_ts
from .mqttio import FastClient
from .store import open_store

log = logging.getLogger(__name__)


# What paho's network thread hands the worker thread (one queue, in arrival order). ``gen`` is the
# connection generation: a message or PUBACK of an older connection carries ids that mean nothing now.
class Incoming(NamedTuple):
    gen: int
    topic: str
    payload: bytes
    mid: int
    qos: int


class PubAck(NamedTuple):
    gen: int
    mid: int


class Connected(NamedTuple):
    gen: int


class Wake(NamedTuple):
    """Only wakes the worker (stop())."""


QueueItem = Incoming | PubAck | Connected | Wake


class Published(NamedTuple):
    """A receipt or dead letter in flight: marked published when its PUBACK comes."""
    kind: str
    ref: str


class Service:
    def __init__(self, cfg: Config, catalogue: Catalogue, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.store = open_store(cfg.storage)
        self.store.migrate()
        self.engine = Engine(cfg, self.store, catalogue, clock)
        self.base = cfg.base
        # SimpleQueue: C-implemented, a fraction of queue.Queue's cost per put/get at 10k msg/s.
        self._q: queue.SimpleQueue[QueueItem] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._gen = 0
        self._connected = threading.Event()
        self._inflight_pub: dict[tuple[int, int], Published] = {}  # (gen, mid) →
        self._pub_lock = threading.Lock()
        self.status_topic = f"{self.base}/_store/cartd/status/{cfg.instance_id}"
        self.health_topic = f"{self.base}/_store/cartd/health/{cfg.instance_id}"
        self.client = self._make_client()

    # ------------------------------------------------------------ MQTT client

    def _make_client(self) -> FastClient:
        m = self.cfg.mqtt
        c = FastClient(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=paho.MQTTv5,
                        manual_ack=True)
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type]  # paho says int; it takes float seconds
        c.will_set(self.status_topic, json.dumps({"state": "offline", "instance": self.cfg.instance_id,
                                                   "version": __version__}), qos=1, retain=True)
        configure_auth(c, m)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return c

    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        b, g = self.base, self.cfg.mqtt.shared_group
        # Item events are the volume: instances share them. Gates and tracking go to every
        # instance, so each one has seen (and committed) the entries and tracking that precede an
        # event before it associates it; applying them twice is idempotent. Retained unit
        # documents and replies too (shared subscriptions get no retained messages).
        shared = [f"$share/{g}/{b}/+/events" if g else f"{b}/+/events"]
        plain = [f"{b}/_store/gates/+", f"{b}/_store/tracking", f"{b}/+/status", f"{b}/+/health", f"{b}/+/res/resend"]
        return [(t, SubscribeOptions(qos=1)) for t in shared + plain]

    def _on_connect(self, c: paho.Client, _u: Any, flags: paho.ConnectFlags, rc: ReasonCode,
                    _p: Properties | None) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        self._gen += 1
        c.subscribe(self._subscriptions())
        c.publish(self.status_topic, json.dumps({"state": "online", "since": fmt_ts(self.clock()),
                                                  "instance": self.cfg.instance_id, "version": __version__}),
                  qos=1, retain=True)
        log.info("connected to %s:%d as %s (session present: %s)", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 self.cfg.client_id, flags.session_present)
        self._connected.set()
        self._q.put(Connected(self._gen))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: paho.DisconnectFlags, rc: ReasonCode,
                       _p: Properties | None) -> None:
        self._connected.clear()
        self._gen += 1  # acks of the old connection are now meaningless
        if not self._stop.is_set():
            log.warning("lost the broker connection (%s); reconnecting", rc)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        # A received payload is bytes (paho types it bytes | bytearray for outgoing ones too), and
        # bytes() of bytes is that same object: no copy.
        self._q.put(Incoming(self._gen, msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: ReasonCode, _p: Properties) -> None:
        self._q.put(PubAck(self._gen, mid))

    # ------------------------------------------------------------ running

    def run(self) -> None:
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = m.session_expiry_s
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()
        try:
            self._work()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(Wake())

    def _work(self) -> None:
        b = self.cfg.batch
        next_tick = time.monotonic()
        next_health = time.monotonic() + 1.0
        while not self._stop.is_set():
            timeout = max(0.0, min(next_tick, next_health) - time.monotonic())
            items: list[QueueItem] = []
            try:
                items.append(self._q.get(timeout=timeout))
                deadline = time.monotonic() + b.max_wait_ms / 1000.0
                while len(items) < b.max_messages:
                    try:
                        items.append(self._q.get_nowait())
                    except queue.Empty:
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(0.0005)
            except queue.Empty:
                pass
            msgs = [it for it in items if isinstance(it, Incoming)]
            acks = [it for it in items if isinstance(it, PubAck)]
            if any(isinstance(it, Connected) for it in items):
                self._publish(self.engine.unpublished())
            if msgs:
                out = self.engine.handle_batch([(m.topic, m.payload) for m in msgs])
                gen = self._gen
                # One write for the burst's PUBACKs (mqttio.FastClient); QoS 0 needs none, and
                # acks of an older connection are meaningless (redelivered with new ids).
                self.client.ack_many([m.mid for m in msgs if m.qos == 1 and m.gen == gen])
                for m in msgs:
                    if m.qos == 2 and m.gen == gen:
                        self.client.ack(m.mid, 2)
                self.engine.counters["batches"] += 1
                self._publish(out)
            if acks:
                done: list[Published] = []
                with self._pub_lock:
                    for a in acks:
                        ref = self._inflight_pub.pop((a.gen, a.mid), None)
                        if ref:
                            done.append(ref)
                self.engine.mark_published(done)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.cfg.tick_s
                self._publish(self.engine.tick())
            if now >= next_health:
                next_health = now + self.cfg.health_interval_s
                self._publish_health()

    def _publish(self, out: list[Outbound]) -> None:
        for o in out:
            with self._pub_lock:
                info = self.client.publish(o.topic, o.payload, qos=o.qos, retain=o.retain)
                if o.kind and info.rc == paho.MQTT_ERR_SUCCESS:
                    self._inflight_pub[(self._gen, info.mid)] = Published(o.kind, o.ref or "")

    def _publish_health(self) -> None:
        try:
            doc = self.engine.health()
        except Exception:
            log.exception("cannot compute health")
            return
        self.client.publish(self.health_topic, json.dumps(doc), qos=1, retain=True)

    def _shutdown(self) -> None:
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, json.dumps({
                "state": "stopped", "since": fmt_ts(self.clock()), "instance": self.cfg.instance_id,
                "version": __version__}), qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
        log.info("cartd stopped")
