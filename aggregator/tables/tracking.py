"""``tracking`` (one row per observation: session seen at unit/shelf at t; shelf '' = unknown) and
``feeds`` (how far the tracker's feed has come)."""
from __future__ import annotations

from typing import NamedTuple

from ..associate import Sighting
from ..store import Store


class TrackRow(NamedTuple):
    unit_id: str
    shelf: str
    t: float
    session_id: str
    confidence: float


def since(store: Store, frm: float) -> list[TrackRow]:
    return [TrackRow(*r) for r in store.q(
        "SELECT unit_id, shelf, t, session_id, confidence FROM tracking WHERE t >= ?", (frm,))]


def insert(store: Store, rows: list[TrackRow]) -> None:
    """Idempotent (a redelivered observation inserts nothing); callers pass rows sorted."""
    store.many("INSERT INTO tracking (unit_id, shelf, t, session_id, confidence) VALUES (?,?,?,?,?)"
               " ON CONFLICT DO NOTHING", rows)


def window(store: Store, unit_id: str, shelf: str, lo: float, hi: float) -> list[Sighting]:
    """Sightings at the unit's shelf or shelf unknown, lo ≤ t ≤ hi."""
    return [
        Sighting(*r)
        for r in store.q(
            "SELECT session_id, shelf, t, confidence FROM tracking WHERE unit_id=? AND shelf IN (?, '')"
            " AND t >= ? AND t <= ?",
            (unit_id, shelf, lo, hi),
        )
    ]


def advance_feed(store: Store, t: float) -> None:
    """Only an advance is written (every instance receives the same tracking)."""
    if store.ex("UPDATE feeds SET t=? WHERE name='tracking' AND t < ?", (t, t)).rowcount == 0:
        store.ex("INSERT INTO feeds (name, t) VALUES ('tracking', ?) ON CONFLICT (name) DO NOTHING", (t,))


def feed_t(store: Store) -> float | None:
    """The tracker's time; None when no tracking was ever received (a store without a tracker)."""
    row = store.q1("SELECT t FROM feeds WHERE name='tracking'")
    return None if row is None else row[0]
