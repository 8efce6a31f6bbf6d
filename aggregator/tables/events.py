"""``events``: every item event received, keyed by its ``event_id`` (the dedupe: a redelivered or
resent event inserts nothing). ``state`` is pending (waiting for tracking) | assigned | deadletter."""
from __future__ import annotations

from typing import Any, NamedTuple

from ..store import Store
from ._util import CHUNK, marks

_COLS = ("(event_id, unit_id, seq, shelf, type, sku, quantity, t_start, t_end, confidence, historical,"
         " received_at, state, payload, flags)")
_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


class NewEvent(NamedTuple):
    """An event row as inserted (state 'pending')."""
    event_id: str
    unit_id: str
    seq: int
    shelf: str
    type: str
    sku: str | None
    quantity: int
    t_start: float
    t_end: float
    confidence: float | None
    historical: int
    received_at: float
    payload: str
    flags: str | None = None  # the unit's own doubts, comma-separated (low_confidence, misplaced)


def insert_new(store: Store, rows: list[NewEvent]) -> set[str]:
    """Insert in multi-row statements; returns the event_ids that were new (ON CONFLICT DO NOTHING)."""
    new: set[str] = set()
    for i in range(0, len(rows), CHUNK):
        part = rows[i:i + CHUNK]
        params: list[Any] = []
        for r in part:
            params += (*r[:12], "pending", r.payload, r.flags)
        values = ",".join([_ROW] * len(part))
        new.update(x[0] for x in store.q(
            f"INSERT INTO events {_COLS} VALUES {values} ON CONFLICT (event_id) DO NOTHING RETURNING event_id", params))
    return new


def payloads(store: Store, event_ids: list[str]) -> dict[str, str]:
    """event_id → stored payload, for those known."""
    out: dict[str, str] = {}
    for j in range(0, len(event_ids), CHUNK):
        part = event_ids[j:j + CHUNK]
        out.update(store.q(f"SELECT event_id, payload FROM events WHERE event_id IN ({marks(len(part))})", part))
    return out


def mark_deadletter(store: Store, event_id: str) -> None:
    store.ex("UPDATE events SET state='deadletter' WHERE event_id=?", (event_id,))


def mark_assigned(store: Store, assigned: list[tuple[str, str]]) -> None:
    """(session_id, event_id) pairs: the events now have a cart line."""
    store.many("UPDATE events SET state='assigned', session_id=? WHERE event_id=?", assigned)


class Pending(NamedTuple):
    event_id: str
    unit_id: str
    shelf: str
    type: str
    sku: str | None
    quantity: int
    t_start: float
    t_end: float
    received_at: float
    flags: str | None


def pending(store: Store) -> list[Pending]:
    """Events waiting for tracking, oldest t_end first (SKIP LOCKED: another instance has them)."""
    return [Pending(*r) for r in store.q(
        "SELECT event_id, unit_id, shelf, type, sku, quantity, t_start, t_end, received_at, flags"
        " FROM events WHERE state='pending' ORDER BY t_end LIMIT 5000" + store.skip_locked())]


def any_pending_from(store: Store, t: float) -> bool:
    """Is an event that started at or before t still waiting for tracking?"""
    return store.q1("SELECT 1 FROM events WHERE state='pending' AND t_start <= ? LIMIT 1", (t,)) is not None


def seqs_after(store: Store, unit_id: str, seq: int) -> list[tuple[int, float]]:
    """(seq, t_end) of the unit's events above seq, in seq order (at most 20 000)."""
    return store.q("SELECT seq, t_end FROM events WHERE unit_id=? AND seq > ? ORDER BY seq LIMIT 20000", (unit_id, seq))
