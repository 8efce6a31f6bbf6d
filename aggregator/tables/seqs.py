"""``lost`` (seq ranges a unit no longer holds: recorded, never asked for again) and ``seq_notes``
(single seqs accounted for without an event row: refused for clock skew, or a conflicting
duplicate). Gap detection skips both."""
from __future__ import annotations

from ..store import Store


def record_lost(store: Store, unit_id: str, from_seq: int, to_seq: int, now: float) -> bool:
    """False when that range was already recorded."""
    cur = store.ex("INSERT INTO lost (unit_id, from_seq, to_seq, recorded_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                   (unit_id, from_seq, to_seq, now))
    return bool(cur.rowcount)


def note(store: Store, unit_id: str, seq: int, reason: str, now: float) -> None:
    store.ex("INSERT INTO seq_notes (unit_id, seq, reason, recorded_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
             (unit_id, seq, reason, now))


def accounted_after(store: Store, unit_id: str, seq: int) -> list[tuple[int, int]]:
    """Sorted (from, to) ranges above seq that need no event: recorded lost, or noted."""
    return sorted(store.q("SELECT from_seq, to_seq FROM lost WHERE unit_id=? AND to_seq > ?", (unit_id, seq))
                  + store.q("SELECT seq, seq FROM seq_notes WHERE unit_id=? AND seq > ?", (unit_id, seq)))
