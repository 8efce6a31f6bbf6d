"""``lines``: one cart line per associated item event (``event_id`` unique); qty is signed
(+ pick, − put_back, 0 unresolved). ``after_receipt`` is the session's receipt_n when the line was
added after a receipt: such a line makes a correction. ``review_state`` is NULL (nothing to
review), open (in the staff review queue), accepted, changed or removed (a person decided; a
removed line no longer counts in the cart)."""
from __future__ import annotations

from typing import NamedTuple

from ..store import Store
from ._util import marks

_INSERT = ("INSERT INTO lines (session_id, event_id, sku, qty, needs_review, reason, evidence, candidates,"
           " after_receipt, created_at, review_state) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (event_id) DO NOTHING")
_COUNTS = "COALESCE(review_state, '') <> 'removed'"  # a line a person removed is not in the cart


class LineRow(NamedTuple):
    session_id: str
    event_id: str
    sku: str | None
    qty: int
    needs_review: int
    reason: str | None
    evidence: str
    candidates: str  # JSON
    after_receipt: int
    created_at: float
    review_state: str | None = None


def insert(store: Store, rows: list[LineRow]) -> None:
    store.many(_INSERT, rows)


def insert_one(store: Store, row: LineRow) -> bool:
    """False when the event already has a line."""
    return bool(store.ex(_INSERT, row).rowcount)


def holding(store: Store, sku: str, session_ids: list[str]) -> dict[str, int]:
    """session → net quantity of sku in its cart (only sessions that have lines of it)."""
    return {r[0]: int(r[1] or 0) for r in store.q(
        f"SELECT session_id, SUM(qty) FROM lines WHERE sku=? AND session_id IN ({marks(len(session_ids))})"
        f" AND {_COUNTS} GROUP BY session_id", (sku, *session_ids))}


class CartLine(NamedTuple):
    event_id: str
    sku: str | None
    qty: int
    needs_review: int
    reason: str | None


def of_session(store: Store, session_id: str) -> list[CartLine]:
    return [CartLine(*r) for r in store.q(
        f"SELECT event_id, sku, qty, needs_review, reason FROM lines WHERE session_id=? AND {_COUNTS} ORDER BY id",
        (session_id,))]


def suspect_put_backs(store: Store, session_id: str) -> list[tuple[int, str]]:
    """(line id, sku) of the session's put-backs judged "not in the cart"."""
    return store.q("SELECT id, sku FROM lines WHERE session_id=? AND needs_review=1"
                   " AND reason='put_back_not_in_cart'", (session_id,))


def net_qty(store: Store, session_id: str, sku: str) -> int | None:
    row = store.q1(f"SELECT SUM(qty) FROM lines WHERE session_id=? AND sku=? AND {_COUNTS}", (session_id, sku))
    return None if row is None or row[0] is None else int(row[0])


def clear_review(store: Store, line_id: int) -> None:
    store.ex("UPDATE lines SET needs_review=0, reason=NULL, review_state=NULL WHERE id=?", (line_id,))


def added_after(store: Store, session_id: str, receipt_n: int) -> list[tuple[str, str | None]]:
    """(event_id, sku) of the lines added after receipt n."""
    return store.q("SELECT event_id, sku FROM lines WHERE session_id=? AND after_receipt=?", (session_id, receipt_n))


class ReviewLine(NamedTuple):
    """A line as a review decision needs it (locked)."""
    id: int
    session_id: str
    event_id: str
    sku: str | None
    qty: int
    review_state: str | None
    after_receipt: int


def for_review(store: Store, line_id: int) -> ReviewLine | None:
    row = store.q1("SELECT id, session_id, event_id, sku, qty, review_state, after_receipt FROM lines WHERE id=?"
                   + store.for_update(), (line_id,))
    return ReviewLine(*row) if row else None


def decide(store: Store, line_id: int, state: str, actor: str, now: float, *, session_id: str | None = None,
           sku: str | None = None, qty: int | None = None) -> None:
    """A person's decision: the line leaves the review queue (and may change product, shopper or
    quantity)."""
    store.ex("UPDATE lines SET needs_review=0, review_state=?, reviewed_by=?, reviewed_at=?,"
             " session_id=COALESCE(?, session_id), sku=COALESCE(?, sku), qty=COALESCE(?, qty) WHERE id=?",
             (state, actor, now, session_id, sku, qty, line_id))


def open_reviews(store: Store, session_id: str) -> int:
    row = store.q1("SELECT COUNT(*) FROM lines WHERE session_id=? AND review_state='open'", (session_id,))
    return int(row[0]) if row else 0
