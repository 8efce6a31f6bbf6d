"""``receipts``: every receipt and correction issued, the exact bytes published (``payload``), and
whether the broker has acknowledged it (``published``: unpublished ones are sent again at start)."""
from __future__ import annotations

from ..store import Store


def payload(store: Store, receipt_id: str) -> str | None:
    row = store.q1("SELECT payload FROM receipts WHERE receipt_id=?", (receipt_id,))
    return row[0] if row else None


def insert(store: Store, receipt_id: str, session_id: str, n: int, kind: str, issued_at: float, total: int,
           text: str) -> None:
    store.ex("INSERT INTO receipts (receipt_id, session_id, n, kind, issued_at, total, payload) VALUES (?,?,?,?,?,?,?)",
             (receipt_id, session_id, n, kind, issued_at, total, text))


def mark_published(store: Store, receipt_id: str) -> None:
    store.ex("UPDATE receipts SET published=1 WHERE receipt_id=?", (receipt_id,))


def unpublished(store: Store) -> list[tuple[str, str, str]]:
    """(receipt_id, session_id, payload), oldest first."""
    return store.q("SELECT receipt_id, session_id, payload FROM receipts WHERE published=0 ORDER BY issued_at")


def stored(store: Store, session_id: str | None = None) -> list[str]:
    """Payloads, oldest first (``cartd receipts``)."""
    sql = "SELECT payload FROM receipts" + (" WHERE session_id=?" if session_id else "") + " ORDER BY issued_at, n"
    return [p for (p,) in store.q(sql, (session_id,) if session_id else ())]
