"""``deadletters``: what cartd could not (or would not) apply, kept for staff. The id derives from
the content, so a message seen twice (redelivered, or by every instance) is one row."""
from __future__ import annotations

from typing import NamedTuple

from ..store import Store


class DeadLetter(NamedTuple):
    id: str
    t: float
    reason: str
    action: str
    topic: str
    detail: str
    event_id: str | None
    unit_id: str | None
    session_id: str | None
    payload: str | None


_COLS = "id, t, reason, action, topic, detail, event_id, unit_id, session_id, payload"


def insert(store: Store, dl: DeadLetter) -> bool:
    """False when the same dead letter is already stored."""
    cur = store.ex(f"INSERT INTO deadletters ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING", dl)
    return bool(cur.rowcount)


def mark_published(store: Store, dl_id: str) -> None:
    store.ex("UPDATE deadletters SET published=1 WHERE id=?", (dl_id,))


def unpublished(store: Store) -> list[DeadLetter]:
    return [DeadLetter(*r) for r in store.q(f"SELECT {_COLS} FROM deadletters WHERE published=0 ORDER BY t LIMIT 1000")]
