"""MQTT publisher: drains the durable outbox to the broker with QoS 1, never losing an event.

One sender thread owns everything that talks to paho: it reads ``outbox.pending_records()`` in
seq order, keeps at most ``window`` events unacknowledged, and marks an event sent only when its
PUBACK arrives. Other threads only put small messages on a queue (``notify``, ``set_status``,
``publish_health``, ``publish_state``), so nothing here can block the sample pipeline.

Why a fresh paho client per connection: paho keeps unacknowledged QoS 1 messages in memory and
retransmits them itself after a reconnect, with the payload frozen at first send (so no
``historical`` flag) and on top of what the outbox resends. The outbox is the source of truth, so
each connection gets a new client with an empty in-memory queue and the sender resends every
unacknowledged event from the outbox, same ``event_id`` and ``seq``, ``historical`` where old.

Topics under ``cfg.topic_base``: ``events`` (QoS 1, not retained), ``status``/``health``/``state``
(QoS 1, retained; republished after every reconnect). The last will sets ``status`` offline.

Requests arrive on ``req/<command>`` and are answered on ``res/<command>`` with the request's
``txid`` (see ``daemon.control``); separate ``req``/``res`` subtrees let a broker ACL give a store
back-end write access to one and read access to the other. The publisher answers two commands
itself: ``resend`` (a consumer saw a ``seq`` gap: republish a range from the outbox, flagged
``historical``) and ``rebirth`` (republish the retained documents).

Requests are untrusted input and never cost the unit its events: at most ``MAX_PENDING_REQUESTS``
wait in the sender's queue (more are dropped and counted, their payloads never parsed); each
command has a token bucket (:meth:`Commands.admit`) checked before parsing; parsing has size and
depth limits; refusals are answered on ``res/<command>`` with the ``txid`` when it can be read,
but at most ``ERROR_REPLIES_PER_S`` a second (a flood gets some answers, not an amplifier).
``resend`` ranges are merged into one backlog (overlapping requests cost nothing twice, at most
``MAX_RESEND_BACKLOG`` seqs) that the sender drains after live events, at most
``RESEND_RATE`` events a second and ``RESEND_INFLIGHT`` unacknowledged, so live events never
queue behind a resend. Counters are in ``health.requests``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from daemon import __version__
from daemon.config import BrokerConnection, Config
from daemon.control import (
    MAX_REQUEST_BYTES,
    CommandError,
    Commands,
    Request,
    RequestRefused,
    TokenBucket,
    parse_request,
    recover_txid,
)
from daemon.publish.outbox import Outbox, OutboxRecord
from daemon.timefmt import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

STATES = ("online", "degraded", "stopped", "offline")
_STABLE_CONNECTION_S = 10.0  # a connection shorter than this counts as flapping (back off)
MAX_RESEND = 1000  # events per resend request; a consumer asks again for the rest
MAX_RESEND_BACKLOG = 5000    # seqs waiting to be republished, all requests together
RESEND_RECENT_S = 10.0       # seqs republished this recently are not queued again
RESEND_RATE = 200.0          # republished events a second
RESEND_INFLIGHT = 20         # republished events awaiting PUBACK
MAX_PENDING_REQUESTS = 256   # requests received but not yet looked at by the sender thread
ERROR_REPLIES_PER_S = (20.0, 40)  # refusals answered a second (rate, burst); the rest only counted


def configure_auth(client: paho.Client, m: BrokerConnection) -> None:
    """Username/password file and TLS from the config (shelf units and cartd alike)."""
    if m.username is not None:
        password = None
        if m.password_file is not None:
            # Files written by editors or `echo` end in a newline that is not part of the secret.
            password = m.password_file.read_text().rstrip("\r\n")
        client.username_pw_set(m.username, password)
    if m.tls is not None:
        client.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                       certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                       keyfile=str(m.tls.key_file) if m.tls.key_file else None)
        if m.tls.insecure:
            client.tls_insecure_set(True)


def publish_status_once(cfg: Config, state: str, reason: str, timeout: float = 3.0) -> bool:
    """Publish the retained ``status`` once, from a unit that will not run (e.g. exit 73), so the
    store sees why it is dark. True when the broker acknowledged it within ``timeout``; never
    raises (no broker, bad credentials: the log line is all there is)."""
    c = None
    try:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True,
                        protocol=paho.MQTTv311)
        configure_auth(c, cfg.mqtt)
        c.connect_timeout = min(timeout, 5.0)
        connected = threading.Event()

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure:
                connected.set()

        c.on_connect = on_connect
        c.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=max(5, int(timeout) + 5))
        c.loop_start()
        if not connected.wait(timeout):
            return False
        doc = {"state": state, "since": rfc3339(time.time()), "reason": reason, "version": __version__}
        info = c.publish(f"{cfg.topic_base}/status", json.dumps(doc), qos=1, retain=True)
        info.wait_for_publish(timeout)
        return info.is_published()
    except Exception as exc:  # noqa: BLE001 - best effort by design
        log.debug("could not publish status %s: %s", state, exc)
        return False
    finally:
        if c is not None:
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:  # noqa: BLE001
                pass


class Publisher:
    """Publishes outbox events and the unit's retained status/health/state over MQTT."""

    def __init__(
        self,
        cfg: Config,
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        *,
        window: int = 20,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        prune_interval_s: float = 600.0,
        commands: Commands | None = None,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._clock = clock
        self._window = max(1, window)
        self._backoff = (reconnect_min_s, max(reconnect_min_s, reconnect_max_s))
        self._prune_interval_s = prune_interval_s
        base = cfg.topic_base
        self.topics = {k: f"{base}/{k}" for k in ("events", "status", "health", "state")}
        self.topics["req"] = f"{base}/req/+"
        self._res_base = f"{base}/res/"
        self.commands = commands if commands is not None else Commands()
        self.commands.register("resend", self._cmd_resend, in_pipeline=False)
        self.commands.register("rebirth", self._cmd_rebirth, in_pipeline=False)
        self._broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"

        self._q: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._lock = threading.Lock()  # guards the retained documents and counters below
        self._status: dict[str, Any] = {"state": "online", "since": rfc3339(clock()), "reason": None,
                                         "version": __version__}
        self._health: dict[str, Any] | None = None
        self._state: dict[str, Any] | None = None
        self._dirty: set[str] = set()
        self._stats = {"connects": 0, "disconnects": 0, "published": 0, "acked": 0, "republished": 0,
                       "historical": 0, "connect_failures": 0, "resent": 0}
        self._outbox_depth: int | None = None
        # requests: counted by paho's thread (intake) and the sender thread (the rest)
        self._req_lock = threading.Lock()
        self._req_pending = 0
        self._req_stats = {"dropped_backlog": 0, "oversize": 0, "error_replies_suppressed": 0,
                           "resend_requested": 0, "resend_coalesced": 0, "resend_republished": 0,
                           "resend_refused_backlog": 0, "intake_faults": 0}
        self._error_replies = TokenBucket(*ERROR_REPLIES_PER_S)
        # resend backlog: sorted, disjoint, inclusive [lo, hi] ranges (sender thread only)
        self._resend_ranges: list[list[int]] = []
        self._resend_recent: list[list[int]] = []  # republished lately (cleared RESEND_RECENT_S after the last)
        self._resend_recent_until = 0.0
        self._resend_inflight: set[int] = set()
        self._resend_bucket = TokenBucket(RESEND_RATE, int(RESEND_INFLIGHT))

        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._connected = False

        # Sender-thread state (only the sender thread touches these).
        self._client: paho.Client | None = None
        self._gen = 0
        self._inflight: dict[int, OutboxRecord] = {}
        self._sent_upto = 0
        self._max_seq_published = 0
        self._connected_at = 0.0
        self._recreate_at: float | None = None
        self._flap_delay = 0.0
        self._outage_logged = False
        self._status_info: paho.MQTTMessageInfo | None = None

    # ------------------------------------------------------------ public API (any thread)

    def start(self) -> None:
        """Start the sender thread; returns at once, connected or not."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """New events are in the outbox: wake the sender (never blocks)."""
        self._q.put(("wake",))

    def set_status(self, state: str, reason: str | None = None) -> None:
        """Set the retained ``status`` document; ``since`` changes only when state or reason does."""
        if state not in STATES:
            raise ValueError(f"status must be one of {', '.join(STATES)}, got {state!r}")
        with self._lock:
            if self._status["state"] != state or self._status["reason"] != reason:
                self._status = {"state": state, "since": rfc3339(self._clock()), "reason": reason,
                                "version": __version__}
            self._dirty.add("status")
        self._q.put(("wake",))

    def publish_health(self, health: dict[str, Any]) -> None:
        """Publish ``health`` (retained); outbox depth and oldest pending age are added at send time."""
        with self._lock:
            self._health = dict(health)
            self._dirty.add("health")
        self._q.put(("wake",))

    def publish_state(self, state: dict[str, Any]) -> None:
        """Publish the per-plate inventory document on ``state`` (retained)."""
        with self._lock:
            self._state = dict(state)
            self._dirty.add("state")
        self._q.put(("wake",))

    def stop(self, timeout: float = 5.0) -> None:
        """Publish status ``stopped``, flush pending events for up to ``timeout`` s, disconnect cleanly.

        A clean DISCONNECT means the broker does not send the last will. Events not acknowledged
        by then stay in the outbox for the next start.
        """
        if self._thread is None:
            return
        self.set_status("stopped")
        self._stop_deadline = time.monotonic() + max(0.0, timeout)
        self._stopping.set()
        self._q.put(("wake",))
        self._thread.join(timeout + 10.0)
        if self._thread.is_alive():
            log.error("MQTT sender did not stop within %.1f s", timeout + 10.0)
        self._thread = None

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["outbox_depth"] = self._outbox_depth
        out["connected"] = self._connected
        out["inflight"] = len(self._inflight)
        out["status"] = self._status["state"]
        return out

    # ------------------------------------------------------------ client lifecycle (sender thread)

    def _new_client(self) -> None:
        self._gen += 1
        gen = self._gen
        m = self._cfg.mqtt
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self._cfg.client_id, clean_session=True,
                        protocol=paho.MQTTv311)
        # Paho may hold a little more than our event window: retained documents and republished
        # events share the session, and must never make a live event wait for a free slot.
        c.max_inflight_messages_set(self._window + RESEND_INFLIGHT + 8)
        c.reconnect_delay_set(self._backoff[0], self._backoff[1])  # type: ignore[arg-type]
        c.will_set(self.topics["status"], self._will_payload(), qos=1, retain=True)
        configure_auth(c, m)
        # Callbacks run on paho's network thread: they only enqueue, tagged with the generation so
        # late callbacks from a discarded client are ignored.
        c.on_connect = lambda _c, _u, _f, rc, _p: self._q.put(("connect", gen, rc))
        c.on_connect_fail = lambda _c, _u: self._q.put(("connect_fail", gen))
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self._q.put(("disconnect", gen, rc))
        c.on_publish = lambda _c, _u, mid, rc, _p: self._q.put(("ack", gen, mid, rc))
        c.on_message = lambda _c, _u, m: self._intake(gen, m.topic, m.payload)
        c.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        c.loop_start()
        self._client = c

    def _try_new_client(self) -> None:
        try:
            self._new_client()
        except Exception as exc:  # noqa: BLE001 - unreadable password/TLS files etc.: keep the daemon alive
            if not self._outage_logged:
                log.error("cannot set up the MQTT client for %s (%s), keeping events in the outbox",
                          self._broker, exc)
                self._outage_logged = True
            self._client = None
            self._recreate_at = time.monotonic() + self._backoff[1]

    def _drop_client(self) -> None:
        c, self._client = self._client, None
        self._gen += 1  # anything still queued from the old client is now stale
        self._connected = False
        self._inflight.clear()
        self._resend_inflight.clear()  # their PUBACKs will not come; the backlog stays
        self._sent_upto = 0
        if c is not None:
            c.disconnect()  # ends paho's retry loop; a clean DISCONNECT if still connected
            c.loop_stop()
            # loop_stop leaves the socket open: an old connection (one given up on a busy
            # machine) would otherwise stay half-alive until the process exits, and the broker
            # would then publish its last will over the "stopped" retained since. Close it now.
            sock = c.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _will_payload(self) -> str:
        # The broker sends this when we vanish, so "since" would be a guess: the consumer takes
        # the time it received the message.
        return json.dumps({"state": "offline", "reason": "connection lost", "version": __version__})

    # ------------------------------------------------------------ sender loop

    def _run(self) -> None:
        next_prune = time.monotonic() + self._prune_interval_s
        self._try_new_client()
        while True:
            try:
                self._step()
                if self._stopping.is_set() and self._ready_to_stop():
                    break
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self._prune_interval_s
                    self._outbox.prune()
            except Exception:  # the sender must never die silently: log, pause, carry on
                log.exception("MQTT sender error; retrying in 1 s")
                time.sleep(1.0)
                if self._stopping.is_set() and time.monotonic() >= self._stop_deadline:
                    break
        self._shutdown()

    def _step(self) -> None:
        timeout = 0.05 if self._stopping.is_set() or (self._resend_ranges and self._connected) else 1.0
        msgs: list[tuple[Any, ...]] = []
        try:
            msgs.append(self._q.get(timeout=timeout))
            while True:
                msgs.append(self._q.get_nowait())
        except queue.Empty:
            pass
        acked: list[str] = []
        for msg in msgs:
            self._handle(msg, acked)
        if acked:
            self._outbox.mark_sent_many(acked)
            with self._lock:
                self._stats["acked"] += len(acked)
        if self._client is None and self._recreate_at is not None and time.monotonic() >= self._recreate_at:
            self._recreate_at = None
            self._try_new_client()
        if self._connected:
            self._publish_dirty()
            self._fill_window()
            self._drain_resends()  # after live events: they never wait behind a resend
        depth = self._outbox.depth()
        with self._lock:
            self._outbox_depth = depth

    def _handle(self, msg: tuple[Any, ...], acked: list[str]) -> None:
        kind = msg[0]
        if kind == "reply":
            self._publish_reply(msg[1], msg[2])
            return
        if kind == "wake" or msg[1] != self._gen:
            return
        if kind == "request":
            self._on_request(msg[2], msg[3], msg[4] if len(msg) > 4 else None)
            return
        if kind == "ack":
            rec = self._inflight.pop(msg[2], None)
            if rec is not None:
                acked.append(rec.event_id)
            else:
                self._resend_inflight.discard(msg[2])
        elif kind == "connect":
            rc = msg[2]
            if rc.is_failure:
                if not self._outage_logged:
                    log.warning("broker %s refused the connection (%s), keeping events in the outbox",
                                self._broker, rc)
                    self._outage_logged = True
                return
            self._connected = True
            self._connected_at = time.monotonic()
            self._outage_logged = False
            self._inflight.clear()
            self._sent_upto = 0
            self._client.subscribe(self.topics["req"], qos=1)  # type: ignore[union-attr]
            with self._lock:
                self._stats["connects"] += 1
                # Retained documents may have changed (or been lost with a broker restart).
                self._dirty.update(("status", "health", "state"))  # None documents are skipped
            log.info("connected to broker %s as %s; %d events pending", self._broker,
                     self._cfg.client_id, self._outbox.depth())
        elif kind == "connect_fail":
            with self._lock:
                self._stats["connect_failures"] += 1
            if not self._outage_logged:
                log.warning("broker %s unreachable, keeping events in the outbox", self._broker)
                self._outage_logged = True
        elif kind == "disconnect":
            if not self._connected:
                return  # a refused or failed attempt: paho's own loop retries with back-off
            lasted = time.monotonic() - self._connected_at
            with self._lock:
                self._stats["disconnects"] += 1
            if not self._stopping.is_set():
                log.warning("lost connection to broker %s (%s), keeping events in the outbox", self._broker, msg[2])
                self._outage_logged = True
            self._drop_client()
            # Reconnect at once after a stable connection; back off when connections keep dropping
            # (e.g. two units configured with the same client id kicking each other off).
            if lasted >= _STABLE_CONNECTION_S:
                self._flap_delay = 0.0
            else:
                self._flap_delay = min(max(self._flap_delay * 2, self._backoff[0]), self._backoff[1])
            self._recreate_at = time.monotonic() + self._flap_delay

    def _publish_dirty(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            docs = {"status": dict(self._status), "health": self._health, "state": self._state}
        for key in ("status", "state", "health"):
            doc = docs[key]
            if key not in dirty or doc is None:
                continue
            if key == "health":
                doc = self._health_doc(doc)
            info = self._client.publish(self.topics[key], json.dumps(doc), qos=1, retain=True)  # type: ignore[union-attr]
            if key == "status":
                self._status_info = info
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                with self._lock:  # publish again after the reconnect
                    self._dirty.add(key)

    def _health_doc(self, health: dict[str, Any]) -> dict[str, Any]:
        doc = dict(health)
        age = self._outbox.oldest_pending_age()
        outbox = dict(doc.get("outbox") or {})
        outbox.update({"depth": self._outbox.depth(),
                       "oldest_pending_age_s": None if age is None else round(age, 3),
                       "last_seq": self._outbox.last_seq()})
        lost = getattr(self._outbox, "lost", None)
        if lost:
            outbox["lost"] = dict(lost)
        doc["outbox"] = outbox
        doc.setdefault("t", rfc3339(self._clock()))
        doc.setdefault("version", __version__)
        doc["mqtt"] = {k: v for k, v in self.stats().items() if k not in ("outbox_depth", "status")}
        doc["requests"] = self.request_stats()
        return doc

    def request_stats(self) -> dict[str, Any]:
        """``health.requests``: what came in over MQTT and what was refused, dropped or coalesced."""
        out: dict[str, Any] = dict(self.commands.stats())
        with self._req_lock:
            out.update(self._req_stats)
            out["pending"] = self._req_pending
        out["resend_backlog"] = sum(hi - lo + 1 for lo, hi in list(self._resend_ranges))
        return out

    def _fill_window(self) -> None:
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        for rec in self._outbox.pending_records(limit=room, after_seq=self._sent_upto):
            payload = self._payload(rec)
            info = self._client.publish(self.topics["events"], json.dumps(payload, separators=(",", ":")),  # type: ignore[union-attr]
                                        qos=1, retain=False)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The connection just went; the disconnect callback will reset and resend.
                return
            self._inflight[info.mid] = rec
            self._sent_upto = rec.seq
            with self._lock:
                self._stats["published"] += 1
                if rec.seq <= self._max_seq_published:
                    self._stats["republished"] += 1
                if payload.get("historical"):
                    self._stats["historical"] += 1
            self._max_seq_published = max(self._max_seq_published, rec.seq)

    def _payload(self, rec: OutboxRecord) -> dict[str, Any]:
        """The event as stored, plus ``historical`` when it is old at send time.

        Age is measured from ``t_end`` when that clock agrees with the outbox's (live sensing),
        else from when it was stored: a recording replayed through ``run`` carries t_end from
        years ago, which says nothing about delivery delay.
        """
        ev = dict(rec.event)
        limit = self._cfg.mqtt.historical_after_s
        ref = rec.stored_at
        t_end = parse_rfc3339(ev.get("t_end"))
        if t_end is not None and rec.stored_at - limit <= t_end <= rec.stored_at + 1.0:
            ref = t_end
        if self._clock() - ref > limit:
            ev["historical"] = True
        return ev

    # ------------------------------------------------------------ requests (sender thread)

    def _intake(self, gen: int, topic: str, payload: bytes | bytearray) -> None:
        """paho's network thread: queue a request for the sender, or drop it when too many wait.
        An oversize payload is cut to its head here (enough to find a txid), never kept whole."""
        try:
            size = None
            if len(payload) > MAX_REQUEST_BYTES:
                size = len(payload)
                payload = bytes(payload[:4096])
            with self._req_lock:
                if size is not None:
                    self._req_stats["oversize"] += 1
                if self._req_pending >= MAX_PENDING_REQUESTS:
                    self._req_stats["dropped_backlog"] += 1
                    return
                self._req_pending += 1
            self._q.put(("request", gen, topic, payload, size))
        except Exception:  # noqa: BLE001 - paho's thread must keep reading whatever arrives
            with self._req_lock:
                self._req_stats["intake_faults"] += 1

    def _on_request(self, topic: str, payload: bytes, oversize: int | None = None) -> None:
        with self._req_lock:
            self._req_pending = max(0, self._req_pending - 1)
        command = topic.rsplit("/", 1)[-1]
        try:
            refusal = self.commands.admit(command)
            if refusal is not None:
                self._refuse(command, refusal, recover_txid(payload[:4096]))
                return
            if oversize is not None:
                self.commands.count_malformed()
                self._refuse(command, f"payload is {oversize} bytes; requests are at most {MAX_REQUEST_BYTES}",
                             recover_txid(payload))
                return
            try:
                req = parse_request(command, payload, "mqtt")
            except CommandError as exc:
                self.commands.count_malformed()
                txid = exc.txid if isinstance(exc, RequestRefused) else None
                self._refuse(command, str(exc), txid)
                return
            # The reply may come from the sample thread (queued commands): route it through our queue.
            def reply(doc: dict[str, Any], c: str = command) -> None:
                self._q.put(("reply", c, doc))

            self.commands.submit(req, reply)
        except Exception:  # whatever a request does, the sender keeps sending events
            log.exception("request on %s could not be handled", topic)
            with self._req_lock:
                self._req_stats["intake_faults"] += 1

    def _refuse(self, command: str, error: str, txid: str | None) -> None:
        """A one-line error on res/<command>, unless refusals are already coming too fast."""
        if not self._error_replies.take():
            with self._req_lock:
                self._req_stats["error_replies_suppressed"] += 1
            return
        log.info("%s request refused (txid %s): %s", command, txid, error)
        self._publish_reply(command, {"txid": txid, "command": command, "ok": False, "error": error})

    def _publish_reply(self, command: str, doc: dict[str, Any]) -> None:
        if self._client is None or not self._connected:
            log.info("reply to %s (txid %s) dropped: not connected", command, doc.get("txid"))
            return
        self._client.publish(self._res_base + command, json.dumps(doc, separators=(",", ":")), qos=1, retain=False)

    def _cmd_resend(self, req: Request) -> dict[str, Any]:
        """Queue a range for republishing; the reply says what will go out. ``resent``: stored,
        acknowledged events of the range that will be republished (``coalesced`` of them were
        already queued by an earlier request); ``pending``: not yet acknowledged, they come
        through the normal window; ``missing``: pruned ranges; ``queued``: the whole backlog."""
        a = req.args
        lo, hi = a.get("from_seq"), a.get("to_seq")
        if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
            raise CommandError("from_seq and to_seq must be integers")
        if lo < 1 or hi < lo:
            raise CommandError(f"need 1 <= from_seq <= to_seq, got {lo}..{hi}")
        hi = min(hi, lo + MAX_RESEND - 1, self._outbox.last_seq())
        if self._client is None or not self._connected:
            raise CommandError("not connected")
        found = self._outbox.seqs_between(lo, hi) if hi >= lo else []
        sent = [s for s, acked in found if acked]
        pending = len(found) - len(sent)
        if self._resend_recent and time.monotonic() >= self._resend_recent_until:
            self._resend_recent = []
        # what is queued or was republished moments ago is not queued again
        pieces = _subtract(self._resend_recent, lo, hi) if hi >= lo else []
        already = sum(1 for s in sent if _covered(self._resend_ranges, s) or _covered(self._resend_recent, s))
        backlog = sum(b - a_ + 1 for a_, b in self._resend_ranges)
        new = sum(_span_outside(self._resend_ranges, a_, b) for a_, b in pieces)
        if backlog + new > MAX_RESEND_BACKLOG:
            with self._req_lock:
                self._req_stats["resend_refused_backlog"] += 1
            raise CommandError(f"resend backlog full ({backlog} seqs queued, at most {MAX_RESEND_BACKLOG}); "
                               f"ask again later")
        for a_, b in pieces:
            _merge(self._resend_ranges, a_, b)
        with self._req_lock:
            self._req_stats["resend_requested"] += len(sent)
            self._req_stats["resend_coalesced"] += already
        have = {s for s, _ in found}
        missing: list[list[int]] = []
        if len(have) < hi - lo + 1:
            for s in range(lo, hi + 1):
                if s in have:
                    continue
                if missing and missing[-1][1] == s - 1:
                    missing[-1][1] = s
                else:
                    missing.append([s, s])
        log.info("resend %d..%d for %s: %d queued (%d already), %d pending, %d ranges pruned", lo, hi,
                 req.txid, len(sent), already, pending, len(missing))
        return {"from_seq": lo, "to_seq": hi, "resent": len(sent), "coalesced": already, "pending": pending,
                "missing": missing, "queued": backlog + new, "last_seq": self._outbox.last_seq()}

    def _drain_resends(self) -> None:
        """Republish from the backlog: at most RESEND_INFLIGHT unacknowledged, RESEND_RATE a second."""
        if not self._resend_ranges:
            return
        room = RESEND_INFLIGHT - len(self._resend_inflight)
        if room <= 0:
            return
        budget = self._resend_bucket.take_up_to(room)
        done = 0
        failed = False
        while budget > 0 and self._resend_ranges and not failed:
            lo, hi = self._resend_ranges[0]
            recs = self._outbox.records_between(lo, hi, limit=budget)
            upto = hi if len(recs) < budget else recs[-1].seq
            for rec in recs:
                if rec.sent_at is None:
                    continue  # still pending: the normal window sends it
                ev = dict(rec.event)
                ev["historical"] = True
                info = self._client.publish(self.topics["events"], json.dumps(ev, separators=(",", ":")),  # type: ignore[union-attr]
                                            qos=1, retain=False)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    upto, failed = rec.seq - 1, True  # the connection went: the rest stays queued
                    break
                self._resend_inflight.add(info.mid)
                budget -= 1
                done += 1
            if upto >= lo:
                _merge(self._resend_recent, lo, min(upto, hi))
                self._resend_recent_until = time.monotonic() + RESEND_RECENT_S
            if upto >= hi:
                self._resend_ranges.pop(0)
            elif upto >= lo:
                self._resend_ranges[0][0] = upto + 1
        self._resend_bucket.tokens += budget  # unspent: keep them
        if done:
            with self._lock:
                self._stats["resent"] += done
            with self._req_lock:
                self._req_stats["resend_republished"] += done

    def _cmd_rebirth(self, req: Request) -> dict[str, Any]:
        with self._lock:
            self._dirty.update(("status", "health", "state"))
        return {"republished": ["status", "health", "state"]}

    # ------------------------------------------------------------ stopping

    def _ready_to_stop(self) -> bool:
        if time.monotonic() >= self._stop_deadline:
            return True
        if not self._connected:
            # Known outage: leave now, the outbox keeps everything. Still on the first attempt
            # (a short replay run stopping right after start): give it until the deadline.
            return self._outage_logged or self._outbox.depth() == 0
        with self._lock:
            status_pending = "status" in self._dirty
        return not status_pending and not self._inflight and self._outbox.depth() == 0

    def _shutdown(self) -> None:
        if self._connected and self._status_info is not None:
            # Give the "stopped" status its PUBACK so it is retained before we leave.
            remaining = max(0.5, self._stop_deadline - time.monotonic())
            try:
                self._status_info.wait_for_publish(timeout=remaining)
            except (RuntimeError, ValueError):
                pass
        left = self._outbox.depth()
        if left:
            log.info("MQTT publisher stopping with %d events kept in the outbox", left)
        c = self._client
        if c is not None and self._connected:
            # Wait for the DISCONNECT to be on the wire: stopping paho's loop first can close the
            # socket with the packet still queued (a busy machine), and the broker then publishes
            # the last will ("offline") over the "stopped" just retained.
            gone = threading.Event()
            c.on_disconnect = lambda *_a: gone.set()
            c.disconnect()
            gone.wait(2.0)
        self._drop_client()


# ---------------------------------------------------------------- resend backlog (sorted ranges)


def _covered(ranges: list[list[int]], s: int) -> bool:
    return any(lo <= s <= hi for lo, hi in ranges)


def _span_outside(ranges: list[list[int]], lo: int, hi: int) -> int:
    """How many seqs of lo..hi no range covers yet."""
    n = hi - lo + 1
    for a, b in ranges:
        n -= max(0, min(b, hi) - max(a, lo) + 1)
    return n


def _subtract(ranges: list[list[int]], lo: int, hi: int) -> list[list[int]]:
    """The parts of lo..hi that no range covers."""
    out: list[list[int]] = []
    cur = lo
    for a, b in ranges:
        if b < cur or a > hi:
            continue
        if a > cur:
            out.append([cur, a - 1])
        cur = max(cur, b + 1)
        if cur > hi:
            break
    if cur <= hi:
        out.append([cur, hi])
    return out


def _merge(ranges: list[list[int]], lo: int, hi: int) -> None:
    """Add lo..hi to sorted disjoint ranges, joining what overlaps or touches."""
    out: list[list[int]] = []
    placed = False
    for a, b in ranges:
        if b < lo - 1:
            out.append([a, b])
        elif a > hi + 1:
            if not placed:
                out.append([lo, hi])
                placed = True
            out.append([a, b])
        else:
            lo, hi = min(lo, a), max(hi, b)
    if not placed:
        out.append([lo, hi])
    ranges[:] = out
