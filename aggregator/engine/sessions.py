"""Sessions: the gates' entry and exit messages open and close a shopper's visit.

Why apart: a session row is the lock that keeps a cart's lines and its receipt from interleaving
(PostgreSQL ``FOR UPDATE``), so everything that changes who is inside lives here.
"""
from __future__ import annotations

import json

from ..messages import BadMessage, GateEntry, GateExit, decode, fmt_ts, validate
from ..tables import sessions
from .base import EngineBase, Message


class Sessions(EngineBase):
    def _lock_gate_sessions(self, msgs: list[Message]) -> None:
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
        sessions.lock(self.store, list(sids))

    def _entry(self, topic: str, payload: bytes) -> None:
        m = validate(GateEntry, decode(payload))
        if m.store_id not in (None, self.cfg.store_id):
            raise BadMessage("wrong_store", f"entry for store {m.store_id!r}, this is {self.cfg.store_id!r}")
        self._not_future(f"entry of session {m.session_id}", m.t)
        if not sessions.insert_entry(self.store, m.session_id, m.t, m.gate, m.shopper_ref, self.clock()):
            first = sessions.entered_at(self.store, m.session_id)
            if first is not None and abs(first - m.t) > 1e-3:
                self._deadletter(
                    "duplicate_entry_conflict",
                    topic,
                    f"session {m.session_id} entered again at {fmt_ts(m.t)} (first entry {fmt_ts(first)} kept)",
                    payload,
                    session_id=m.session_id,
                )
            else:
                self.counters["duplicates"] += 1
            return
        self.counters["sessions"] += 1
        early = sessions.take_pending_exit(self.store, m.session_id)
        if early:  # the exit came first (out-of-order delivery, or a gate clock problem)
            self._apply_exit(m.session_id, early.t, early.gate, early.received_at)

    def _exit(self, topic: str, payload: bytes) -> None:
        m = validate(GateExit, decode(payload))
        if m.store_id not in (None, self.cfg.store_id):
            raise BadMessage("wrong_store", f"exit for store {m.store_id!r}, this is {self.cfg.store_id!r}")
        self._not_future(f"exit of session {m.session_id}", m.t)
        row = sessions.for_exit(self.store, m.session_id)
        if row is None:
            if sessions.add_pending_exit(self.store, m.session_id, m.t, m.gate, self.clock()):
                self._deadletter(
                    "exit_without_entry",
                    topic,
                    f"exit of unknown session {m.session_id} at {fmt_ts(m.t)}; kept, applied if the entry arrives",
                    payload,
                    session_id=m.session_id,
                )
            else:
                self.counters["duplicates"] += 1
            return
        if row.exited_at is not None:
            if abs(row.exited_at - m.t) > 1e-3:
                self._deadletter(
                    "duplicate_exit",
                    topic,
                    f"session {m.session_id} exited again at {fmt_ts(m.t)} (first exit {fmt_ts(row.exited_at)} kept)",
                    payload,
                    session_id=m.session_id,
                )
            else:
                self.counters["duplicates"] += 1
            return
        if row.entered_at is not None and m.t < row.entered_at - self.cfg.association.clock_tolerance_s:
            self._deadletter(
                "clock_skew",
                topic,
                f"session {m.session_id} exits at {fmt_ts(m.t)}, before its entry {fmt_ts(row.entered_at)}",
                payload,
                action="applied",
                session_id=m.session_id,
            )
        self._apply_exit(m.session_id, m.t, m.gate, self.clock())

    def _apply_exit(self, session_id: str, t: float, gate: str | None, received_at: float) -> None:
        sessions.apply_exit(self.store, session_id, t, gate, received_at, self.clock())
        self.counters["exits"] += 1
