"""The aggregator's logic: messages in, database rows and outgoing messages out.

No MQTT here: ``handle_batch`` takes (topic, payload) pairs and ``tick`` runs the timed work; both
run one transaction and return the messages to publish *after* the commit. The service acknowledges
the incoming messages only after that commit, so a crash anywhere replays them, and every write is
idempotent (event_id primary key, ON CONFLICT DO NOTHING, state transitions guarded by WHERE).
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError
from ulid import ULID

from . import __version__
from .catalogue import Catalogue
from .config import Config
from .messages import (BadMessage, GateEntry, GateExit, ItemEvent, Tracking, decode, fmt_ts,
                       health_fields, validate)
from .store import RetryTransaction, Store
from .trackindex import TrackIndex
from . import associate

log = logging.getLogger(__name__)

_LEADER_GAPS = 7302
TRACK_WINDOW_S = 300.0   # tracking kept in memory for association; older questions go to the database
_CHUNK = 500             # rows per multi-row INSERT (SQLite allows 32766 parameters)
_RETRIES_BURST = 6       # deadlocks in a row before a burst is applied in halves
_RETRIES_ONE = 40        # ... and for a single message (≈ 15 s of back-off) before it is dead-lettered


@dataclass
class Outbound:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = False
    kind: str | None = None  # "receipt" | "deadletter": mark published on PUBACK
    ref: str | None = None


class Engine:
    def __init__(self, cfg: Config, store: Store, catalogue: Catalogue,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.store = store
        self.catalogue = catalogue
        self.clock = clock
        self.base = cfg.base
        self.units_cfg = {u.unit_id: set(u.shelves) for u in cfg.units}
        self.counters: Counter[str] = Counter()
        self.deadletter_counts: Counter[str] = Counter()
        self._out: list[Outbound] = []
        self._tracker_t: float | None = None
        self._unit_seqs: dict[str, tuple[int, int]] = {}
        # Recent tracking in memory (see trackindex.py); loaded from the database at start.
        self.tracks = TrackIndex(TRACK_WINDOW_S)
        self._tracks_dirty = True
        self._next_prune = 0.0
        # Per transaction: lines decided but not yet written (written per burst, see _flush_lines),
        # and a cache of the sessions inside the store (dropped whenever a gate message is applied).
        self._lines: list[tuple] = []
        self._staged_qty: dict[tuple[str, str], int] = {}
        self._sessions: tuple[float, dict[str, tuple[float, float | None]]] | None = None
        # Per transaction, written at its end in one fixed order (see _run_tx): tracking rows and
        # the tracker's time, the newest unit health and status per unit.
        self._track_rows: list[tuple] = []
        self._feed_t: float | None = None
        self._unit_health: dict[str, tuple[float, int | None, Any]] = {}
        self._unit_status: dict[str, str] = {}
        # Per transaction: the highest seq believed per unit (see _plausible_seq).
        self._seq_refs: dict[str, int | None] = {}
        self._warned_health: dict[str, float] = {}

    # ================================================================ batches

    def handle_batch(self, msgs: list[tuple[str, bytes]]) -> list[Outbound]:
        """Apply messages in one transaction; returns what to publish after the commit.

        When this returns, *every* message of msgs is committed (applied, or kept as a dead letter):
        the service acknowledges them all to the broker next, and an acknowledged message is never
        delivered again. A deadlock or serialization failure between instances retries the burst;
        a burst that keeps hitting them is applied in halves (smaller transactions, fewer locks
        held), down to one message, which is retried longer. An unexpected fault in one message is
        isolated by replaying the burst one message per transaction and dead-lettering the culprit.
        """
        if self.store.pg and len(msgs) > 1:
            # Several instances: the messages every instance receives (gates, tracking, unit
            # documents) are committed in their own short transaction before the burst's item
            # events, so the events' transaction never holds a session row while it waits for a
            # shared row another instance is writing (or the reverse): no deadlock between them.
            shared = [m for m in msgs if not self._is_event_topic(m[0])]
            if shared and len(shared) < len(msgs):
                events = [m for m in msgs if self._is_event_topic(m[0])]
                return self.handle_batch(shared) + self.handle_batch(events)
        tries = _RETRIES_BURST if len(msgs) > 1 else _RETRIES_ONE
        last: BaseException | None = None
        for attempt in range(tries):
            try:
                return self._run_tx(lambda: self._apply(msgs))
            except RetryTransaction as exc:
                last = exc
                log.debug("batch of %d, retry %d: %s", len(msgs), attempt, exc)
                self.counters["tx_retries"] += 1
                # Growing, jittered back-off: instances that deadlocked together do not retry in step.
                time.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * (0.5 + random.random()))
            except Exception as exc:
                last = exc
                if len(msgs) == 1:
                    break
                log.exception("fault in a batch of %d messages; applying them one by one", len(msgs))
                out: list[Outbound] = []
                for m in msgs:
                    out += self.handle_batch([m])
                return out
        else:
            if len(msgs) > 1:
                # Contention, not a bad message. (This used to dead-letter msgs[0] and return, and
                # the service then acknowledged the rest of the burst unapplied: events lost.)
                self.counters["tx_splits"] += 1
                log.warning("a burst of %d messages hit %d deadlocks in a row (%s); applying it in halves",
                            len(msgs), tries, last)
                mid = len(msgs) // 2
                return self.handle_batch(msgs[:mid]) + self.handle_batch(msgs[mid:])
        # One message that keeps failing: keep it as a dead letter and move on (never a crash loop).
        topic, payload = msgs[0]
        self.counters["internal_errors"] += 1
        log.error("cannot apply a message on %s (%s); kept as dead letter internal_error", topic,
                  f"{type(last).__name__}: {last}" if last else "?", exc_info=last)
        return self._run_tx(lambda: self._deadletter("internal_error", topic, "the aggregator failed on this message (see its log)", payload))

    def _is_event_topic(self, topic: str) -> bool:
        pre = self.base + "/"
        if not (topic.startswith(pre) and topic.endswith("/events")):
            return False
        unit = topic[len(pre):-len("/events")]
        return bool(unit) and "/" not in unit and not unit.startswith("_")

    def _reset_tx(self) -> None:
        self._out = []
        self._unit_seqs = {}
        self._lines, self._staged_qty, self._sessions = [], {}, None
        self._track_rows, self._feed_t = [], None
        self._unit_health, self._unit_status = {}, {}
        self._seq_refs = {}

    def _run_tx(self, fn: Callable[[], Any]) -> list[Outbound]:
        self._reset_tx()
        self.store.begin()
        try:
            if self._tracks_dirty:
                self._load_tracks()
            fn()
            # Shared rows are written last and always in this order — sessions (sorted), units
            # (sorted), tracking rows (sorted by key), the tracking feed — so two instances'
            # transactions take their row locks in the same order and cannot deadlock. Writes
            # another instance already made are skipped (UPDATE ... WHERE value < new), so they
            # take no lock at all.
            self._flush_lines()
            self._flush_unit_docs()
            self._flush_units()
            self._flush_tracking()
            self.store.commit()
        except BaseException:
            self.store.rollback()
            self._reset_tx()
            # Tracking added to memory by this transaction is not in the database: reload.
            self._tracks_dirty = True
            self._tracker_t = None
            raise
        out, self._out = self._out, []
        return out

    def _load_tracks(self) -> None:
        now = self.clock()
        frm = now - TRACK_WINDOW_S
        self.tracks.load(self.store.q("SELECT unit_id, shelf, t, session_id, confidence FROM tracking WHERE t >= ?",
                                      (frm,)), frm)
        self._tracks_dirty = False
        self._next_prune = now + 30.0

    def _apply(self, msgs: list[tuple[str, bytes]]) -> None:
        """Apply a burst in order; runs of item events are applied together (one INSERT per run)."""
        run: list[tuple[str, str, bytes]] = []
        ev_prefix = self.base + "/"
        limit = self.cfg.limits.max_payload_bytes
        if any(len(p) > limit for _, p in msgs):
            for topic, payload in msgs:
                if len(payload) > limit:
                    self._too_large(topic, payload)
            msgs = [m for m in msgs if len(m[1]) <= limit]
        if self.store.pg:
            self._lock_gate_sessions(msgs)
        for topic, payload in msgs:
            if topic.startswith(ev_prefix) and topic.endswith("/events"):
                unit = topic[len(ev_prefix):-len("/events")]
                if unit and "/" not in unit and not unit.startswith("_"):
                    run.append((topic, unit, payload))
                    continue
            if run:
                self._events(run)
                run = []
            self._handle(topic, payload)
        if run:
            self._events(run)

    def _lock_gate_sessions(self, msgs: list[tuple[str, bytes]]) -> None:
        """PostgreSQL: lock the existing sessions the burst's gate messages name, sorted, before
        applying them in message order (an exit locks its session; unsorted, two instances' bursts
        could take two sessions in opposite orders)."""
        gate_prefix = f"{self.base}/_store/gates/"
        sids = set()
        for topic, payload in msgs:
            if topic.startswith(gate_prefix):
                try:
                    d = json.loads(payload)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(d, dict) and isinstance(d.get("session_id"), str):
                    sids.add(d["session_id"])
        if sids:
            ids = sorted(sids)
            self.store.q(f"SELECT session_id FROM sessions WHERE session_id IN ({','.join('?' * len(ids))})"
                         " ORDER BY session_id" + self.store.for_update(), ids)

    def _flush_units(self) -> None:
        if not self._unit_seqs:
            return
        items = sorted(self._unit_seqs.items())
        # A missing row is created; an existing one is only touched when this burst advances it
        # (with several instances the other one often already has): a skipped UPDATE locks nothing.
        self.store.many("INSERT INTO units (unit_id, contiguous_seq, max_seq) VALUES (?,?,?) ON CONFLICT (unit_id) DO NOTHING",
                        [(u, lo - 1, hi) for u, (lo, hi) in items])
        self.store.many("UPDATE units SET max_seq=? WHERE unit_id=? AND max_seq < ?", [(hi, u, hi) for u, (lo, hi) in items])
        self.store.many("UPDATE units SET contiguous_seq=? WHERE unit_id=? AND contiguous_seq < 0",
                        [(lo - 1, u) for u, (lo, hi) in items])
        self._unit_seqs = {}

    def _flush_unit_docs(self) -> None:
        """The newest health and the last status per unit seen in this transaction, in unit order."""
        if not self._unit_health and not self._unit_status:
            return
        health, status = self._unit_health, self._unit_status
        self._unit_health, self._unit_status = {}, {}
        for unit in sorted(set(health) | set(status)):
            self._ensure_unit(unit)
            if unit in health:
                t, last, depth = health[unit]
                # Keep the newest (t, last_seq) pair; a fresh unit row starts its seq baseline
                # here (we do not ask for history from before cartd knew the unit). The daemon's
                # last_seq is the last seq *issued*; the `depth` events still in its outbox are on
                # their way, not history, so the baseline stops before them and a hole among them
                # is asked for.
                self.store.ex("UPDATE units SET health_t=?, health_last_seq=? WHERE unit_id=?"
                              " AND (health_t IS NULL OR health_t < ?)", (t, last, unit, t))
                if last is not None:
                    if isinstance(depth, int) and not isinstance(depth, bool) and 0 < depth <= last:
                        last -= depth
                    self.store.ex("UPDATE units SET contiguous_seq=? WHERE unit_id=? AND contiguous_seq < 0", (last, unit))
            if unit in status:
                self.store.ex("UPDATE units SET status=?, status_t=? WHERE unit_id=? AND (status IS NULL OR status <> ?)",
                              (status[unit], self.clock(), unit, status[unit]))

    def _flush_tracking(self) -> None:
        if self._track_rows:
            rows, self._track_rows = sorted(self._track_rows), []
            self.store.many("INSERT INTO tracking (unit_id, shelf, t, session_id, confidence) VALUES (?,?,?,?,?)"
                            " ON CONFLICT DO NOTHING", rows)
        if self._feed_t is not None:
            t, self._feed_t = self._feed_t, None
            # Only an advance is written (every instance receives the same tracking).
            if self.store.ex("UPDATE feeds SET t=? WHERE name='tracking' AND t < ?", (t, t)).rowcount == 0:
                self.store.ex("INSERT INTO feeds (name, t) VALUES ('tracking', ?) ON CONFLICT (name) DO NOTHING", (t,))

    def _handle(self, topic: str, payload: bytes) -> None:
        self.counters["messages"] += 1
        if not topic.startswith(self.base + "/"):
            self._deadletter("unexpected_topic", topic, "topic outside this store's tree", payload)
            return
        parts = topic[len(self.base) + 1:].split("/")
        try:
            if parts[0] == "_store":
                if parts[1:2] == ["gates"]:
                    self._flush_lines()
                    self._sessions = None  # a gate changes who is inside
                if parts[1:] == ["gates", "entry"]:
                    self._entry(topic, payload)
                elif parts[1:] == ["gates", "exit"]:
                    self._exit(topic, payload)
                elif parts[1:] == ["tracking"]:
                    self._tracking(topic, payload)
                else:
                    self._deadletter("unexpected_topic", topic, "not a topic cartd consumes", payload)
            elif len(parts) == 2 and parts[1] == "events":
                self._events([(topic, parts[0], payload)])
            elif len(parts) == 2 and parts[1] == "health":
                self._health(parts[0], payload)
            elif len(parts) == 2 and parts[1] == "status":
                self._status(parts[0], payload)
            elif len(parts) == 3 and parts[1:] == ["res", "resend"]:
                self._resend_reply(topic, parts[0], payload)
            else:
                self._deadletter("unexpected_topic", topic, "not a topic cartd consumes", payload)
        except BadMessage as bad:
            self._deadletter(bad.reason, topic, bad.detail, payload)

    # ================================================================ dead letters

    def _too_large(self, topic: str, payload: bytes) -> None:
        """Dead letter for an oversized message: topic, size and digest only, never the payload."""
        import hashlib
        self.counters["messages"] += 1
        pre = self.base + "/"
        unit = None
        if topic.startswith(pre):
            first = topic[len(pre):].split("/", 1)[0]
            unit = first if first and not first.startswith("_") else None
        digest = hashlib.sha256(payload).hexdigest()[:16]
        self._deadletter("payload_too_large", topic,
                         f"{len(payload)} bytes (limit {self.cfg.limits.max_payload_bytes}), sha256 {digest}…:"
                         " not parsed, not stored", None, unit_id=unit)

    def _deadletter(self, reason: str, topic: str, detail: str, payload: bytes | str | None = None, *,
                    action: str = "kept", event_id: str | None = None, unit_id: str | None = None,
                    session_id: str | None = None) -> None:
        now = self.clock()
        if isinstance(payload, bytes):
            try:
                text: str | None = payload[:16384].decode("utf-8")
            except UnicodeDecodeError:
                import base64
                text = base64.b64encode(payload[:12288]).decode()
        else:
            text = payload[:16384] if payload else None
        # The id derives from what was received, so a redelivered message (after a crash, or seen
        # by every instance on a plain subscription) does not make a second dead letter.
        import hashlib
        key = f"{reason}\x00{topic}\x00{event_id or ''}\x00{unit_id or ''}\x00{session_id or ''}\x00{detail if payload is None else text}"
        dl_id = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:26].upper()
        doc = {"schema": "gondola.deadletter/1", "id": dl_id, "t": fmt_ts(now), "reason": reason,
               "action": action, "topic": topic, "detail": detail, "event_id": event_id,
               "unit_id": unit_id, "session_id": session_id, "payload": text}
        cur = self.store.ex("INSERT INTO deadletters (id, t, reason, action, topic, detail, event_id, unit_id, session_id, payload)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
                            (dl_id, now, reason, action, topic, detail, event_id, unit_id, session_id, text))
        if cur.rowcount == 0:
            self.counters["duplicate_deadletters"] += 1
            return
        self.deadletter_counts[reason] += 1
        log.warning("dead letter %s (%s) on %s: %s", reason, action, topic, detail)
        self._out.append(Outbound(f"{self.base}/_store/cartd/deadletter", json.dumps(doc), kind="deadletter", ref=dl_id))

    # ================================================================ gates

    def _not_future(self, what: str, t: float) -> None:
        """Refuse a time beyond the clock tolerance in the future (it would move a watermark)."""
        ahead = t - self.clock()
        if ahead > self.cfg.association.max_clock_skew_s:
            raise BadMessage("clock_skew", f"{what} time {fmt_ts(t)} is {ahead:.1f} s ahead of cartd's clock"
                                           f" (tolerance {self.cfg.association.max_clock_skew_s:g} s): refused")

    def _entry(self, topic: str, payload: bytes) -> None:
        m = validate(GateEntry, decode(payload))
        if m.store_id not in (None, self.cfg.store_id):
            raise BadMessage("wrong_store", f"entry for store {m.store_id!r}, this is {self.cfg.store_id!r}")
        self._not_future(f"entry of session {m.session_id}", m.t)
        now = self.clock()
        cur = self.store.ex("INSERT INTO sessions (session_id, entered_at, entry_gate, shopper_ref, state, last_change)"
                            " VALUES (?,?,?,?, 'open', ?) ON CONFLICT (session_id) DO NOTHING",
                            (m.session_id, m.t, m.gate, m.shopper_ref, now))
        if cur.rowcount == 0:
            row = self.store.q1("SELECT entered_at FROM sessions WHERE session_id=?", (m.session_id,))
            if row and row[0] is not None and abs(row[0] - m.t) > 1e-3:
                self._deadletter("duplicate_entry_conflict", topic,
                                 f"session {m.session_id} entered again at {fmt_ts(m.t)} (first entry {fmt_ts(row[0])} kept)",
                                 payload, session_id=m.session_id)
            else:
                self.counters["duplicates"] += 1
            return
        self.counters["sessions"] += 1
        early = self.store.q1("SELECT t, gate, received_at FROM pending_exits WHERE session_id=?", (m.session_id,))
        if early:  # the exit came first (out-of-order delivery, or a gate clock problem)
            self.store.ex("DELETE FROM pending_exits WHERE session_id=?", (m.session_id,))
            self._apply_exit(m.session_id, early[0], early[1], early[2])

    def _exit(self, topic: str, payload: bytes) -> None:
        m = validate(GateExit, decode(payload))
        if m.store_id not in (None, self.cfg.store_id):
            raise BadMessage("wrong_store", f"exit for store {m.store_id!r}, this is {self.cfg.store_id!r}")
        self._not_future(f"exit of session {m.session_id}", m.t)
        row = self.store.q1("SELECT state, exited_at, entered_at FROM sessions WHERE session_id=?" + self.store.for_update(),
                            (m.session_id,))
        if row is None:
            cur = self.store.ex("INSERT INTO pending_exits (session_id, t, gate, received_at) VALUES (?,?,?,?)"
                                " ON CONFLICT (session_id) DO NOTHING", (m.session_id, m.t, m.gate, self.clock()))
            if cur.rowcount:
                self._deadletter("exit_without_entry", topic,
                                 f"exit of unknown session {m.session_id} at {fmt_ts(m.t)}; kept, applied if the entry arrives",
                                 payload, session_id=m.session_id)
            else:
                self.counters["duplicates"] += 1
            return
        if row[1] is not None:
            if abs(row[1] - m.t) > 1e-3:
                self._deadletter("duplicate_exit", topic,
                                 f"session {m.session_id} exited again at {fmt_ts(m.t)} (first exit {fmt_ts(row[1])} kept)",
                                 payload, session_id=m.session_id)
            else:
                self.counters["duplicates"] += 1
            return
        if row[2] is not None and m.t < row[2] - self.cfg.association.clock_tolerance_s:
            self._deadletter("clock_skew", topic,
                             f"session {m.session_id} exits at {fmt_ts(m.t)}, before its entry {fmt_ts(row[2])}",
                             payload, action="applied", session_id=m.session_id)
        self._apply_exit(m.session_id, m.t, m.gate, self.clock())

    def _apply_exit(self, session_id: str, t: float, gate: str | None, received_at: float) -> None:
        self.store.ex("UPDATE sessions SET exited_at=?, exit_gate=?, exit_received_at=?, state='exited', last_change=?"
                      " WHERE session_id=? AND state='open'", (t, gate, received_at, self.clock(), session_id))
        self.counters["exits"] += 1

    # ================================================================ tracking and unit documents

    def _tracking(self, topic: str, payload: bytes) -> None:
        m = validate(Tracking, decode(payload))
        self._not_future("tracking", m.t)
        rows = [(o.unit_id, o.shelf or "", m.t, o.session_id, o.confidence) for o in m.observations]
        # Written at the end of the transaction, sorted (_flush_tracking).
        self._track_rows += rows
        self._feed_t = m.t if self._feed_t is None else max(self._feed_t, m.t)
        # This instance's own view: tracking is delivered in order to every instance, so when our
        # tracker_t passes an event's t_end we have committed every observation up to it.
        self._tracker_t = max(self._tracker_t or m.t, m.t)
        for r in rows:
            self.tracks.add(*r)
        now = self.clock()
        if now >= self._next_prune:
            self.tracks.prune(now)
            self._next_prune = now + 30.0
        self.counters["tracking"] += 1
        self.counters["observations"] += len(rows)

    def _ensure_unit(self, unit_id: str) -> None:
        self.store.ex("INSERT INTO units (unit_id, contiguous_seq) VALUES (?, -1) ON CONFLICT (unit_id) DO NOTHING", (unit_id,))

    def _health(self, unit_id: str, payload: bytes) -> None:
        depth = None
        try:
            data = decode(payload)
            t, last = health_fields(data)
            ob = data.get("outbox") if isinstance(data, dict) else None
            depth = ob.get("depth") if isinstance(ob, dict) else None
        except BadMessage:
            t = last = None
        if t is None:
            self.counters["unit_health_unusable"] += 1
            return
        now = self.clock()
        if t > now + self.cfg.association.max_clock_skew_s:
            # The document cannot describe a moment after we received it: clamp, so a unit clock
            # running ahead never moves its watermark ahead of time.
            self.counters["unit_health_clamped"] += 1
            if now - self._warned_health.get(unit_id, float("-inf")) >= 60.0:
                self._warned_health[unit_id] = now
                log.warning("unit %s health time %s is %.1f s ahead of cartd's clock: taken as now (check its NTP)",
                            unit_id, fmt_ts(t), t - now)
            t = now
        # Applied at the end of the transaction (_flush_unit_docs): the newest per unit.
        prev = self._unit_health.get(unit_id)
        if prev is None or t > prev[0]:
            self._unit_health[unit_id] = (t, last, depth)
        if last is not None and unit_id in self._seq_refs:
            self._seq_refs[unit_id] = max(self._seq_refs[unit_id] or 0, last)
        self.counters["unit_health"] += 1

    def _status(self, unit_id: str, payload: bytes) -> None:
        try:
            data = decode(payload)
        except BadMessage:
            data = None
        if not payload:
            return  # a cleared retained status
        state = data.get("state") if isinstance(data, dict) else None
        if state not in ("online", "degraded", "stopped", "offline"):
            self.counters["unit_status_unusable"] += 1
            return
        self._unit_status[unit_id] = state  # applied at the end of the transaction (_flush_unit_docs)

    def _resend_reply(self, topic: str, unit_id: str, payload: bytes) -> None:
        data = decode(payload)
        if not isinstance(data, dict):
            raise BadMessage("schema_violation", "resend reply is not an object")
        if not data.get("ok"):
            self.counters["resend_refused"] += 1
            log.warning("unit %s refused resend %s: %s", unit_id, data.get("txid"), data.get("error"))
            return
        result = data.get("result") or {}
        self.counters["resend_replies"] += 1
        self.counters["resent_events"] += int(result.get("resent") or 0)
        for rng in result.get("missing") or []:
            try:
                a, b = int(rng[0]), int(rng[1])
            except (TypeError, ValueError, IndexError):
                continue
            cur = self.store.ex("INSERT INTO lost (unit_id, from_seq, to_seq, recorded_at) VALUES (?,?,?,?)"
                                " ON CONFLICT DO NOTHING", (unit_id, a, b, self.clock()))
            if cur.rowcount:
                self._deadletter("events_lost", topic,
                                 f"unit {unit_id} no longer holds seq {a}..{b} in its outbox: those events are lost",
                                 payload, action="applied", unit_id=unit_id)

    # ================================================================ item events

    def _events(self, run: list[tuple[str, str, bytes]]) -> None:
        """A run of item events: validate each, insert them all at once (the primary key on event_id
        dedupes, RETURNING says which were new), then associate the new ones in order.

        Refused before anything is stored (dead letter, kept): a unit_id or store_id that differs
        from the topic's, a t_end beyond the clock tolerance in the future, a seq implausibly far
        above the unit's. A known event_id with different content is a conflict, not a duplicate."""
        evs: list[tuple[str, ItemEvent, bytes]] = []
        seen: dict[str, bytes] = {}
        now = self.clock()
        skew = self.cfg.association.max_clock_skew_s
        for topic, topic_unit, payload in run:
            self.counters["messages"] += 1
            try:
                try:
                    # Fast path: pydantic parses the JSON itself (no dict of Python objects first).
                    ev = ItemEvent.model_validate_json(payload)
                except ValidationError:
                    # The usual path says precisely what is wrong (malformed_json / schema_violation).
                    ev = validate(ItemEvent, decode(payload))  # type: ignore[assignment]
                problem = ev.check()
                if problem:
                    raise BadMessage("schema_violation", problem)
            except BadMessage as bad:
                self._deadletter(bad.reason, topic, bad.detail, payload)
                continue
            ids = {"event_id": ev.event_id, "unit_id": topic_unit}
            if ev.unit_id != topic_unit:
                self._deadletter("topic_mismatch", topic, f"unit_id {ev.unit_id!r} differs from the topic's unit"
                                 f" {topic_unit!r}: refused", payload, **ids)
                continue
            if ev.store_id != self.cfg.store_id:
                self._deadletter("wrong_store", topic, f"store_id {ev.store_id!r} differs from the topic's store"
                                 f" {self.cfg.store_id!r}: refused", payload, **ids)
                continue
            if ev.t_end > now + skew:
                # Refused, never clamped: a wrong time would also pick the wrong shopper. Its seq is
                # accounted for (seq_notes), so it is not asked for again and again.
                self._deadletter("clock_skew", topic, f"unit {ev.unit_id} event t_end {fmt_ts(ev.t_end)} is"
                                 f" {ev.t_end - now:.1f} s ahead of cartd's clock (tolerance {skew:g} s): refused",
                                 payload, **ids)
                if self._plausible_seq(ev.unit_id, ev.seq):
                    self._seq_note(ev.unit_id, ev.seq, "clock_skew", now)
                continue
            if not self._plausible_seq(ev.unit_id, ev.seq):
                ref = self._seq_refs.get(ev.unit_id)
                self._deadletter("seq_implausible", topic, f"unit {ev.unit_id} seq {ev.seq} is {ev.seq - (ref or 0)}"
                                 f" above its highest known seq {ref} (limit {self.cfg.limits.max_seq_jump}):"
                                 " refused; seqs in between are not marked missing", payload, **ids)
                continue
            first = seen.get(ev.event_id)
            if first is not None:  # twice in one burst
                if self._same_event(first, payload):
                    self.counters["duplicates"] += 1
                else:
                    self._conflict(topic, ev, payload, now)
                continue
            seen[ev.event_id] = payload
            self._seq_refs[ev.unit_id] = max(self._seq_refs.get(ev.unit_id) or 0, ev.seq)
            evs.append((topic, ev, payload))
        if not evs:
            return
        new: set[str] = set()
        cols = "(event_id, unit_id, seq, shelf, type, sku, quantity, t_start, t_end, confidence, historical, received_at, state, payload)"
        for i in range(0, len(evs), _CHUNK):
            part = evs[i:i + _CHUNK]
            params: list[Any] = []
            for _, ev, payload in part:
                params += (ev.event_id, ev.unit_id, ev.seq, ev.shelf, ev.type, ev.sku, ev.quantity, ev.t_start, ev.t_end,
                           ev.confidence, int(ev.historical), now, "pending", payload.decode("utf-8"))
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(part))
            new.update(r[0] for r in self.store.q(
                f"INSERT INTO events {cols} VALUES {values} ON CONFLICT (event_id) DO NOTHING RETURNING event_id", params))
        if len(new) < len(evs):
            # Already known event_ids: a redelivery (same content; a resend adds "historical") is a
            # duplicate; anything else is a conflict, kept for people to look at.
            old = [ev.event_id for _, ev, _ in evs if ev.event_id not in new]
            stored: dict[str, str] = {}
            for j in range(0, len(old), _CHUNK):
                part = old[j:j + _CHUNK]
                stored.update(self.store.q(f"SELECT event_id, payload FROM events WHERE event_id IN"
                                           f" ({','.join('?' * len(part))})", part))
            for topic, ev, payload in evs:
                if ev.event_id in new:
                    continue
                prev = stored.get(ev.event_id)
                if prev is not None and not self._same_event(prev.encode("utf-8"), payload):
                    self._conflict(topic, ev, payload, now)
        lo_all = min(ev.t_start for _, ev, _ in evs) - self.cfg.association.clock_tolerance_s
        for topic, ev, payload in evs:
            if ev.event_id not in new:
                self.counters["duplicates"] += 1
                continue
            self._new_event(topic, ev, payload, now, lo_all)
        self._flush_lines()

    @staticmethod
    def _same_event(a: bytes, b: bytes) -> bool:
        if a == b:
            return True
        try:
            da, db = json.loads(a), json.loads(b)
        except ValueError:
            return False
        if isinstance(da, dict) and isinstance(db, dict):
            da.pop("historical", None)
            db.pop("historical", None)
        return da == db

    def _conflict(self, topic: str, ev: ItemEvent, payload: bytes, now: float) -> None:
        """Same event_id, different content: the first one stays; this one is kept as a dead letter
        and its seq is accounted for (not asked for again, never recorded as lost)."""
        self.counters["conflicts"] += 1
        self._deadletter("duplicate_event_conflict", topic,
                         f"event_id {ev.event_id} already received with different content (unit {ev.unit_id}"
                         f" seq {ev.seq}): the first one stands, this one is not applied", payload,
                         event_id=ev.event_id, unit_id=ev.unit_id)
        self._seq_note(ev.unit_id, ev.seq, "duplicate_event_conflict", now)

    def _seq_note(self, unit: str, seq: int, reason: str, now: float) -> None:
        self.store.ex("INSERT INTO seq_notes (unit_id, seq, reason, recorded_at) VALUES (?,?,?,?)"
                      " ON CONFLICT DO NOTHING", (unit, seq, reason, now))

    def _plausible_seq(self, unit: str, seq: int) -> bool:
        """Is seq within ``limits.max_seq_jump`` of the highest seq known for the unit? The reference
        is what cartd has received or been told by the unit's own health (which, under the broker
        ACL, only the unit can publish); a unit cartd knows nothing about yet has none (any seq)."""
        if unit not in self._seq_refs:
            ref: int | None = None
            row = self.store.q1("SELECT contiguous_seq, max_seq, health_last_seq FROM units WHERE unit_id=?", (unit,))
            if row is not None:
                known = [v for v in (row[0] if row[0] is not None and row[0] >= 0 else None,
                                     row[1] if row[1] else None, row[2]) if v is not None]
                ref = max(known) if known else None
            h = self._unit_health.get(unit)
            if h is not None and h[1] is not None:
                ref = max(ref or 0, h[1])
            self._seq_refs[unit] = ref
        ref = self._seq_refs[unit]
        return ref is None or seq <= ref + self.cfg.limits.max_seq_jump

    def _new_event(self, topic: str, ev: ItemEvent, payload: bytes, now: float, lo_all: float) -> None:
        self.counters["events"] += 1
        if ev.historical:
            self.counters["historical"] += 1
        # Unit seq bookkeeping once per unit per batch (flushed by _flush_units before commit).
        lo_hi = self._unit_seqs.get(ev.unit_id)
        self._unit_seqs[ev.unit_id] = (min(lo_hi[0], ev.seq), max(lo_hi[1], ev.seq)) if lo_hi else (ev.seq, ev.seq)
        reason = None
        if self.units_cfg and ev.unit_id not in self.units_cfg:
            reason, detail = "unknown_unit", f"unit {ev.unit_id} is not in cartd's units list"
        elif self.units_cfg.get(ev.unit_id) and ev.shelf not in self.units_cfg[ev.unit_id]:
            reason, detail = "unknown_shelf", f"unit {ev.unit_id} has no shelf {ev.shelf!r} in cartd's config"
        if reason:
            self.store.ex("UPDATE events SET state='deadletter' WHERE event_id=?", (ev.event_id,))
            self._deadletter(reason, topic, detail, payload, event_id=ev.event_id, unit_id=ev.unit_id)
            return
        if self._tracking_ready(ev.t_end, now, now):
            self._associate(ev.event_id, ev.unit_id, ev.shelf, ev.type, ev.sku, ev.quantity, ev.t_start, ev.t_end, topic,
                            from_memory=True, lo_hint=lo_all)
        else:
            self.counters["waiting_for_tracking"] += 1

    def _tracking_ready(self, t_end: float, received_at: float, now: float) -> bool:
        if self._tracker_t is None:
            row = self.store.q1("SELECT t FROM feeds WHERE name='tracking'")
            if row is None:
                return True  # no tracker in this store: association uses who is inside
            self._tracker_t = row[0]
        if self._tracker_t >= t_end + self.cfg.association.clock_tolerance_s + self.cfg.association.context_after_s:
            return True
        return now - received_at >= self.cfg.association.tracking_wait_s

    def _spans(self, frm: float) -> dict[str, tuple[float, float | None]]:
        """session → (entered_at, exited_at) for every session that had not left before frm.

        Read once per burst (from the burst's earliest event) and reused until a gate message is
        applied in the same transaction."""
        c = self._sessions
        if c is None or frm < c[0]:
            frm = min(frm, c[0]) if c is not None else frm
            c = self._sessions = (frm, {sid: (ent, ex) for sid, ent, ex in self.store.q(
                "SELECT session_id, entered_at, exited_at FROM sessions WHERE entered_at IS NOT NULL"
                " AND (exited_at IS NULL OR exited_at >= ?)", (frm,))})
        return c[1]

    def _associate(self, event_id: str, unit_id: str, shelf: str, etype: str, sku: str | None, qty: int,
                   t_start: float, t_end: float, topic: str, *, from_memory: bool = False,
                   lo_hint: float | None = None) -> None:
        a = self.cfg.association
        lo, hi = t_start - a.clock_tolerance_s, t_end + a.clock_tolerance_s
        # Presence over the window widened by the context (associate.py: a sum, not the best sighting).
        w_lo, w_hi = lo - a.context_before_s, hi + a.context_after_s
        if from_memory and self.tracks.covers(w_lo):
            # Our own tracking view has passed t_end (see _tracking_ready): memory holds it all.
            seen = associate.presence(self.tracks.window(unit_id, shelf, w_lo, w_hi), shelf, rounded=True)
        else:
            self._flush_tracking()  # this transaction's own tracking, before reading it back
            seen = associate.presence(self.store.q(
                "SELECT session_id, shelf, t, confidence FROM tracking WHERE unit_id=? AND shelf IN (?, '')"
                " AND t >= ? AND t <= ?", (unit_id, shelf, w_lo, w_hi)), shelf)
        spans = self._spans(lo if lo_hint is None else min(lo, lo_hint))

        def inside(sid: str) -> bool:
            sp = spans.get(sid)
            return sp is not None and sp[0] <= hi and (sp[1] is None or sp[1] >= lo)
        scores: dict[str, associate.Presence] = {}
        if seen:
            scores = {k: v for k, v in seen.items() if inside(k)}
            self.counters["tracking_outside_session"] += len(seen) - len(scores)
        evidence = "tracking"
        if not scores:
            in_store = [sid for sid in spans if inside(sid)][:2]
            if len(in_store) == 1:
                scores = {in_store[0]: associate.Presence(1.0, 1.0, 1)}
                evidence = "only_shopper"
            else:
                self.store.ex("UPDATE events SET state='deadletter' WHERE event_id=?", (event_id,))
                who = "nobody was in the store" if not in_store else "several shoppers inside and no tracking evidence"
                self._deadletter("no_session", topic,
                                 f"event {event_id} at {unit_id} shelf {shelf} {fmt_ts(t_start)}..{fmt_ts(t_end)}: {who}",
                                 None, event_id=event_id, unit_id=unit_id)
                return
        holding: dict[str, int] = {}
        if etype == "put_back" and sku is not None:
            ids = sorted(scores)
            marks = ",".join("?" * len(ids))
            holding = {r[0]: int(r[1] or 0) for r in self.store.q(
                f"SELECT session_id, SUM(qty) FROM lines WHERE sku=? AND session_id IN ({marks}) GROUP BY session_id",
                (sku, *ids))}
            for sid in ids:  # lines decided earlier in this burst, not written yet
                if (sid, sku) in self._staged_qty:
                    holding[sid] = holding.get(sid, 0) + self._staged_qty[(sid, sku)]
        put_back = etype == "put_back" and sku is not None
        decision = associate.decide(scores, put_back=put_back, holding=holding if put_back else None, quantity=qty,
                                    min_confidence=a.min_confidence, ambiguity_margin=a.ambiguity_margin,
                                    not_holding_factor=a.not_holding_factor)
        assert decision is not None  # scores is never empty here
        best, reasons, ranked = decision.session_id, decision.reasons, decision.candidates
        if etype not in ("pick", "put_back") or sku is None:
            reasons.append("unresolved")
        signed = qty if etype == "pick" else -qty if etype == "put_back" else 0
        if sku is not None and signed and self.catalogue.products and self.catalogue.get(sku) is None:
            self._deadletter("unpriced_sku", topic, f"sku {sku} of event {event_id} is not in the catalogue",
                             None, action="applied", event_id=event_id, unit_id=unit_id, session_id=best)
        self._add_line(best, event_id, sku, signed, reasons, evidence,
                       [{"session_id": s, "score": round(v, 4)} for s, v in ranked[:5]])

    def _add_line(self, session_id: str, event_id: str, sku: str | None, signed: int, reasons: list[str],
                  evidence: str, candidates: list[dict]) -> None:
        """Stage a line; _flush_lines writes the burst's lines together (before the commit, and before
        anything in the same transaction reads lines or changes sessions)."""
        self._lines.append((session_id, event_id, sku, signed, reasons, evidence, candidates))
        if sku is not None and signed:
            k = (session_id, sku)
            self._staged_qty[k] = self._staged_qty.get(k, 0) + signed

    def _flush_lines(self) -> None:
        if not self._lines:
            return
        lines, self._lines, self._staged_qty = self._lines, [], {}
        now = self.clock()
        sids = sorted({l[0] for l in lines})
        # Lock the sessions' rows (PostgreSQL; in a fixed order, so two instances cannot deadlock)
        # so a concurrent receipt either includes these lines or sees them as a correction, never
        # half of each.
        state: dict[str, tuple[str, int]] = {}
        for i in range(0, len(sids), _CHUNK):
            part = sids[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for sid, st, n in self.store.q(f"SELECT session_id, state, receipt_n FROM sessions WHERE session_id IN ({marks})"
                                           f" ORDER BY session_id" + self.store.for_update(), part):
                state[sid] = (st, int(n))
            self.store.ex(f"UPDATE sessions SET last_change=? WHERE session_id IN ({marks})", (now, *part))
        rows, late = [], []
        for session_id, event_id, sku, signed, reasons, evidence, candidates in lines:
            st = state.get(session_id)
            after = st[1] if st and st[0] == "receipted" else 0
            row = (session_id, event_id, sku, signed, int(bool(reasons)), ",".join(reasons) or None, evidence,
                   json.dumps(candidates), after, now)
            (late if after else rows).append(row)
            self.counters["lines"] += 1
            if reasons:
                self.counters["review_lines"] += 1
        ins = ("INSERT INTO lines (session_id, event_id, sku, qty, needs_review, reason, evidence, candidates,"
               " after_receipt, created_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (event_id) DO NOTHING")
        self.store.many(ins, rows)
        for row in late:  # after the receipt: this line makes a correction
            if self.store.ex(ins, row).rowcount:
                self.store.ex("UPDATE sessions SET correction_due = COALESCE(correction_due, ?) WHERE session_id=?",
                              (now + self.cfg.receipts.correction_delay_s, row[0]))
                self.counters["late_lines"] += 1
        self.store.many("UPDATE events SET state='assigned', session_id=? WHERE event_id=?",
                        [(l[0], l[1]) for l in lines])

    # ================================================================ timed work

    def tick(self) -> list[Outbound]:
        for attempt in range(6):
            try:
                return self._run_tx(self._tick)
            except RetryTransaction:
                self.counters["tx_retries"] += 1
                time.sleep(0.01 * (attempt + 1))
        return []

    def _tick(self) -> None:
        now = self.clock()
        self._pending(now)
        if self.store.try_leader(_LEADER_GAPS):
            self._scan_gaps(now)
        self._receipts(now)
        self._corrections(now)

    def _pending(self, now: float) -> None:
        rows = self.store.q("SELECT event_id, unit_id, shelf, type, sku, quantity, t_start, t_end, received_at"
                            " FROM events WHERE state='pending' ORDER BY t_end LIMIT 5000" + self.store.skip_locked())
        tol = self.cfg.association.clock_tolerance_s
        lo_hint = min((r[6] for r in rows), default=0.0) - tol
        for eid, unit, shelf, etype, sku, qty, ts, te, rec in rows:
            if self._tracking_ready(te, rec, now):
                mem = self._tracker_t is not None and self._tracker_t >= te + tol + self.cfg.association.context_after_s
                self._associate(eid, unit, shelf, etype, sku, qty, ts, te, f"{self.base}/{unit}/events",
                                from_memory=mem, lo_hint=lo_hint)
        self._flush_lines()

    def _scan_gaps(self, now: float) -> None:
        r = self.cfg.resend
        for unit, contig, contig_t, health_last, gap_since, resend_at, attempts in self.store.q(
                "SELECT unit_id, contiguous_seq, contig_t_end, health_last_seq, gap_since, resend_at, resend_attempts"
                " FROM units WHERE contiguous_seq >= 0 ORDER BY unit_id"):
            seqs = self.store.q("SELECT seq, t_end FROM events WHERE unit_id=? AND seq > ? ORDER BY seq LIMIT 20000", (unit, contig))
            # Seqs that need no event: recorded lost, or accounted for by a refused/conflicting one.
            lost = sorted(self.store.q("SELECT from_seq, to_seq FROM lost WHERE unit_id=? AND to_seq > ?", (unit, contig))
                          + self.store.q("SELECT seq, seq FROM seq_notes WHERE unit_id=? AND seq > ?", (unit, contig)))
            new_contig, new_t = contig, contig_t
            li = 0
            i = 0
            while True:
                if i < len(seqs) and seqs[i][0] <= new_contig:
                    i += 1
                    continue
                if i < len(seqs) and seqs[i][0] == new_contig + 1:
                    new_contig = seqs[i][0]
                    new_t = seqs[i][1] if new_t is None else max(new_t, seqs[i][1])
                    i += 1
                    continue
                if li < len(lost) and lost[li][0] <= new_contig + 1:
                    new_contig = max(new_contig, lost[li][1])
                    li += 1
                    continue
                break
            # The first seq we are missing, and the end of the hole: the next seq we hold, or the
            # unit's own last_seq (from its health) when nothing newer has arrived.
            held = ([seqs[i][0]] if i < len(seqs) else []) + ([lost[li][0]] if li < len(lost) else [])
            hole_end = min(held) - 1 if held else (health_last if health_last and health_last > new_contig else None)
            if hole_end is None:
                if new_contig != contig or gap_since is not None:
                    self.store.ex("UPDATE units SET contiguous_seq=?, contig_t_end=?, gap_since=NULL, resend_at=NULL,"
                                  " resend_attempts=0 WHERE unit_id=?", (new_contig, new_t, unit))
                continue
            if gap_since is None or new_contig != contig:
                self.store.ex("UPDATE units SET contiguous_seq=?, contig_t_end=?, gap_since=?, resend_at=NULL, resend_attempts=0"
                              " WHERE unit_id=?", (new_contig, new_t, now, unit))
                continue
            if now - gap_since < r.gap_wait_s or (resend_at is not None and now < resend_at):
                continue
            lo, hi = new_contig + 1, min(hole_end, new_contig + 1000)
            if attempts >= r.max_attempts:
                self.store.ex("INSERT INTO lost (unit_id, from_seq, to_seq, recorded_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                              (unit, lo, hi, now))
                self._deadletter("events_lost", f"{self.base}/{unit}/events",
                                 f"unit {unit} did not resend seq {lo}..{hi} after {attempts} requests: recorded as lost",
                                 None, action="applied", unit_id=unit)
                self.store.ex("UPDATE units SET resend_attempts=0, resend_at=NULL, gap_since=? WHERE unit_id=?", (now, unit))
                continue
            txid = str(ULID())
            self._out.append(Outbound(f"{self.base}/{unit}/req/resend",
                                      json.dumps({"txid": txid, "from_seq": lo, "to_seq": hi})))
            self.store.ex("UPDATE units SET resend_at=?, resend_attempts=resend_attempts+1 WHERE unit_id=?", (now + r.retry_s, unit))
            self.counters["resend_requests"] += 1
            log.info("seq gap on %s: asking for %d..%d (attempt %d)", unit, lo, hi, attempts + 1)

    def watermarks(self) -> dict[str, tuple[float | None, str | None]]:
        """unit → (watermark or None, status); +inf for a unit that stopped cleanly with nothing missing."""
        lag = self.cfg.receipts.unit_lag_s
        out: dict[str, tuple[float | None, str | None]] = {}
        for unit, contig, contig_t, h_t, h_last, status in self.store.q(
                "SELECT unit_id, contiguous_seq, contig_t_end, health_t, health_last_seq, status FROM units"):
            wm = contig_t
            drained = h_last is not None and contig is not None and 0 <= h_last <= contig
            if h_t is not None and drained:
                wm = h_t if wm is None else max(wm, h_t)
            if status == "stopped" and drained:
                wm = float("inf")
            out[unit] = (None if wm is None else wm - lag, status)
        return out

    def _expected_units(self, marks: dict[str, tuple[float | None, str | None]]) -> list[str]:
        if self.units_cfg:
            return sorted(self.units_cfg)
        return sorted(u for u, (_, st) in marks.items() if st in ("online", "degraded"))

    def _receipts(self, now: float) -> None:
        rows = self.store.q("SELECT session_id, exited_at, exit_received_at FROM sessions WHERE state='exited'"
                            " AND entered_at IS NOT NULL ORDER BY exit_received_at LIMIT 500" + self.store.skip_locked())
        if not rows:
            return
        tol = self.cfg.association.clock_tolerance_s
        marks = self.watermarks()
        expected = self._expected_units(marks)
        lagging_all: set[str] = set()
        for sid, exited_at, exit_rx in rows:
            target = exited_at + tol
            lagging = [u for u in expected if (marks.get(u, (None, None))[0] or float("-inf")) < target]
            pending = self.store.q1("SELECT 1 FROM events WHERE state='pending' AND t_start <= ? LIMIT 1", (target,))
            overdue = now >= (exit_rx or now) + self.cfg.receipts.deadline_s
            if (lagging or pending) and not overdue:
                lagging_all.update(lagging)
                continue
            self._issue(sid, now, complete=not lagging and not pending, waited_for=lagging)
        for u in sorted(lagging_all):
            self._rebirth(u, now)

    def _rebirth(self, unit: str, now: float) -> None:
        row = self.store.q1("SELECT last_rebirth FROM units WHERE unit_id=?", (unit,))
        if row is not None and row[0] is not None and now - row[0] < self.cfg.receipts.rebirth_interval_s:
            return
        if row is None:
            self._ensure_unit(unit)
        self.store.ex("UPDATE units SET last_rebirth=? WHERE unit_id=?", (now, unit))
        self._out.append(Outbound(f"{self.base}/{unit}/req/rebirth", json.dumps({"txid": str(ULID())})))
        self.counters["rebirth_requests"] += 1

    def _corrections(self, now: float) -> None:
        for (sid,) in self.store.q("SELECT session_id FROM sessions WHERE state='receipted' AND correction_due IS NOT NULL"
                                   " AND correction_due <= ? LIMIT 500" + self.store.skip_locked(), (now,)):
            self._issue(sid, now, complete=True, waited_for=[])

    # ================================================================ receipts

    def cart(self, session_id: str) -> tuple[list[dict], list[dict], dict[str, list[str]]]:
        """(receipt lines, unresolved, sku → event ids per after_receipt) for a session's cart."""
        per: dict[str, dict[str, Any]] = {}
        unresolved: list[dict] = []
        for eid, sku, qty, review, reason in self.store.q(
                "SELECT event_id, sku, qty, needs_review, reason FROM lines WHERE session_id=? ORDER BY id", (session_id,)):
            if sku is None or qty == 0:
                unresolved.append({"event_id": eid, "sku": sku, "reason": reason or "unresolved"})
                continue
            d = per.setdefault(sku, {"qty": 0, "review": False, "events": []})
            d["qty"] += qty
            d["review"] = d["review"] or bool(review)
            d["events"].append(eid)
        lines = []
        for sku in sorted(per):
            d = per[sku]
            p = self.catalogue.get(sku)
            q = max(0, d["qty"])
            if q == 0 and d["qty"] == 0 and not d["review"]:
                continue  # picked and put back
            price = p.price if p else None
            lines.append({"sku": sku, "name": p.name if p else None, "quantity": q, "unit_price": price,
                          "amount": q * price if price is not None else 0,
                          "needs_review": d["review"] or d["qty"] < 0, "events": d["events"]})
        return lines, unresolved, {}

    def _issue(self, session_id: str, now: float, complete: bool, waited_for: list[str]) -> None:
        row = self.store.q1("SELECT state, receipt_n, entered_at, exited_at, shopper_ref FROM sessions WHERE session_id=?"
                            + self.store.for_update(), (session_id,))
        if row is None or row[0] not in ("exited", "receipted"):
            return
        state, n_prev, entered, exited, ref = row
        # A put-back judged "not in the cart" may have raced its own pick (several instances, or a
        # resend that filled a gap): with the whole visit known, clear the flag when the cart
        # holds enough of that SKU after all.
        for line_id, sku in self.store.q("SELECT id, sku FROM lines WHERE session_id=? AND needs_review=1"
                                         " AND reason='put_back_not_in_cart'", (session_id,)):
            net = self.store.q1("SELECT SUM(qty) FROM lines WHERE session_id=? AND sku=?", (session_id, sku))
            if net and net[0] is not None and net[0] >= 0:
                self.store.ex("UPDATE lines SET needs_review=0, reason=NULL WHERE id=?", (line_id,))
                self.counters["review_cleared"] += 1
        lines, unresolved, _ = self.cart(session_id)
        n = int(n_prev) + 1
        doc: dict[str, Any] = {
            "schema": "gondola.receipt/1", "receipt_id": f"{session_id}/{n}", "session_id": session_id,
            "store_id": self.cfg.store_id, "kind": "receipt" if n == 1 else "correction", "n": n,
            "corrects": f"{session_id}/{n_prev}" if n_prev else None, "issued_at": fmt_ts(now),
            "entered_at": fmt_ts(entered), "exited_at": fmt_ts(exited), "complete": complete,
            "currency": self.cfg.receipts.currency, "shopper_ref": ref, "lines": lines,
            "total": sum(l["amount"] for l in lines), "unresolved": unresolved}
        if waited_for:
            doc["waited_for"] = waited_for
        if n > 1:
            prev = self.store.q1("SELECT payload FROM receipts WHERE receipt_id=?", (f"{session_id}/{n_prev}",))
            prev_doc = json.loads(prev[0]) if prev else {"lines": [], "total": 0}
            before = {l["sku"]: l for l in prev_doc["lines"]}
            after = {l["sku"]: l for l in lines}
            late = defaultdict(list)
            for eid, sku in self.store.q("SELECT event_id, sku FROM lines WHERE session_id=? AND after_receipt=?",
                                         (session_id, n_prev)):
                late[sku].append(eid)
            adj = []
            for sku in sorted(set(before) | set(after)):
                b, a_ = before.get(sku), after.get(sku)
                dq = (a_["quantity"] if a_ else 0) - (b["quantity"] if b else 0)
                da = (a_["amount"] if a_ else 0) - (b["amount"] if b else 0)
                if dq or da or late.get(sku):
                    p = self.catalogue.get(sku)
                    adj.append({"sku": sku, "name": p.name if p else None, "quantity_delta": dq,
                                "amount_delta": da, "events": late.get(sku, [])})
            doc["adjustments"] = adj
            doc["total_delta"] = doc["total"] - int(prev_doc.get("total", 0))
        text = json.dumps(doc, separators=(",", ":"))
        # Atomic transition: only the transaction whose UPDATE matched issues receipt n.
        cur = self.store.ex("UPDATE sessions SET state='receipted', receipt_n=?, correction_due=NULL WHERE session_id=? AND receipt_n=?",
                            (n, session_id, n_prev))
        if cur.rowcount != 1:
            raise RetryTransaction(f"receipt {session_id}/{n} raced")
        self.store.ex("INSERT INTO receipts (receipt_id, session_id, n, kind, issued_at, total, payload) VALUES (?,?,?,?,?,?,?)",
                      (doc["receipt_id"], session_id, n, doc["kind"], now, doc["total"], text))
        self.counters["receipts" if n == 1 else "corrections"] += 1
        log.info("%s %s: %d lines, total %d %s%s", doc["kind"], doc["receipt_id"], len(lines), doc["total"],
                 doc["currency"], "" if complete else f" (deadline; no word from {', '.join(waited_for)})")
        self._out.append(Outbound(f"{self.base}/_store/receipts/{session_id}", text, kind="receipt", ref=doc["receipt_id"]))

    # ================================================================ publication bookkeeping

    def mark_published(self, refs: list[tuple[str, str]]) -> None:
        if not refs:
            return
        self._run_tx(lambda: [self.store.ex(
            "UPDATE receipts SET published=1 WHERE receipt_id=?" if k == "receipt" else
            "UPDATE deadletters SET published=1 WHERE id=?", (r,)) for k, r in refs])

    def unpublished(self) -> list[Outbound]:
        out = [Outbound(f"{self.base}/_store/receipts/{sid}", p, kind="receipt", ref=rid) for rid, sid, p in self.store.q(
            "SELECT receipt_id, session_id, payload FROM receipts WHERE published=0 ORDER BY issued_at")]
        for dl_id, t, reason, action, topic, detail, eid, uid, sid, payload in self.store.q(
                "SELECT id, t, reason, action, topic, detail, event_id, unit_id, session_id, payload FROM deadletters"
                " WHERE published=0 ORDER BY t LIMIT 1000"):
            doc = {"schema": "gondola.deadletter/1", "id": dl_id, "t": fmt_ts(t), "reason": reason, "action": action,
                   "topic": topic, "detail": detail, "event_id": eid, "unit_id": uid, "session_id": sid, "payload": payload}
            out.append(Outbound(f"{self.base}/_store/cartd/deadletter", json.dumps(doc), kind="deadletter", ref=dl_id))
        self.store.end_read()
        return out

    def health(self) -> dict[str, Any]:
        try:
            open_n = self.store.q1("SELECT COUNT(*) FROM sessions WHERE state='open'")[0]
            waiting = self.store.q1("SELECT COUNT(*) FROM sessions WHERE state='exited'")[0]
            units = {}
            for u, contig, mx, status in self.store.q("SELECT unit_id, contiguous_seq, max_seq, status FROM units"):
                units[u] = {"contiguous_seq": contig, "last_seq": mx, "status": status}
            for u, (wm, _) in self.watermarks().items():
                if u in units:
                    units[u]["watermark"] = None if wm is None else ("inf" if wm == float("inf") else fmt_ts(wm))
        finally:
            self.store.end_read()
        c = dict(self.counters)
        c["deadletters"] = dict(self.deadletter_counts)
        return {"t": fmt_ts(self.clock()), "instance": self.cfg.instance_id, "version": __version__,
                "counters": c, "open_sessions": open_n, "awaiting_receipt": waiting, "units": units}
