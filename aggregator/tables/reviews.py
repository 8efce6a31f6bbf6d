"""``review_decisions``: what staff decided about lines in the review queue. The console (and
``cartd review decide``) only inserts a decision; cartd applies it in its own transaction, so the
cart tables keep one writer, and records when and with what result (``applied_at``, ``result``)."""
from __future__ import annotations

from typing import NamedTuple

from ..store import Store

ACTIONS = ("accept", "product", "shopper", "remove")
MAX_QTY = 1000  # a product decision's quantity is 1..MAX_QTY


class Decision(NamedTuple):
    id: int
    line_id: int
    action: str
    sku: str | None
    quantity: int | None
    session_id: str | None
    actor: str
    decided_at: float


def add(store: Store, line_id: int, action: str, actor: str, now: float, *, sku: str | None = None,
        quantity: int | None = None, session_id: str | None = None) -> int:
    """Queue a decision for cartd; returns its id."""
    row = store.q1("INSERT INTO review_decisions (line_id, action, sku, quantity, session_id, actor, decided_at)"
                   " VALUES (?,?,?,?,?,?,?) RETURNING id", (line_id, action, sku, quantity, session_id, actor, now))
    assert row is not None  # INSERT ... RETURNING always returns the row
    return int(row[0])


def todo(store: Store, limit: int = 200) -> list[Decision]:
    """Decisions not applied yet, oldest first (SKIP LOCKED: another instance is applying those)."""
    return [Decision(*r) for r in store.q(
        "SELECT id, line_id, action, sku, quantity, session_id, actor, decided_at FROM review_decisions"
        " WHERE applied_at IS NULL ORDER BY id LIMIT ?" + store.skip_locked(), (limit,))]


def applied(store: Store, decision_id: int, now: float, result: str) -> None:
    store.ex("UPDATE review_decisions SET applied_at=?, result=? WHERE id=?", (now, result, decision_id))


def outcome(store: Store, decision_id: int) -> tuple[float | None, str | None] | None:
    """(applied_at, result) of a decision; None when unknown."""
    row = store.q1("SELECT applied_at, result FROM review_decisions WHERE id=?", (decision_id,))
    return (row[0], row[1]) if row else None
