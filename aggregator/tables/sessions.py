"""``sessions`` (one row per shopper visit: open → exited → receipted) and ``pending_exits`` (an
exit that arrived before its entry, applied when the entry comes).

Row locks (``FOR UPDATE``) are taken in session order everywhere, so two instances on PostgreSQL
never wait for each other in a cycle."""
from __future__ import annotations

from typing import Any, NamedTuple

from ..store import Store
from ._util import CHUNK, marks


class Span(NamedTuple):
    """When a session was inside the store (exited_at None: still inside)."""
    entered_at: float
    exited_at: float | None


def lock(store: Store, session_ids: list[str]) -> None:
    """Lock the existing rows of these sessions, sorted (PostgreSQL; nothing on SQLite)."""
    ids = sorted(session_ids)
    if ids:
        store.q(f"SELECT session_id FROM sessions WHERE session_id IN ({marks(len(ids))})"
                " ORDER BY session_id" + store.for_update(), ids)


def insert_entry(store: Store, session_id: str, t: float, gate: str | None, shopper_ref: str | None,
                 now: float) -> bool:
    """A new open session; False when the session is already known."""
    cur = store.ex("INSERT INTO sessions (session_id, entered_at, entry_gate, shopper_ref, state, last_change)"
                   " VALUES (?,?,?,?, 'open', ?) ON CONFLICT (session_id) DO NOTHING",
                   (session_id, t, gate, shopper_ref, now))
    return bool(cur.rowcount)


def entered_at(store: Store, session_id: str) -> float | None:
    row = store.q1("SELECT entered_at FROM sessions WHERE session_id=?", (session_id,))
    return row[0] if row else None


class ExitView(NamedTuple):
    state: str
    exited_at: float | None
    entered_at: float | None


def for_exit(store: Store, session_id: str) -> ExitView | None:
    """The session's row, locked, as an exit needs it; None when unknown."""
    row = store.q1("SELECT state, exited_at, entered_at FROM sessions WHERE session_id=?" + store.for_update(),
                   (session_id,))
    return ExitView(*row) if row else None


def apply_exit(store: Store, session_id: str, t: float, gate: str | None, received_at: float, now: float) -> None:
    store.ex("UPDATE sessions SET exited_at=?, exit_gate=?, exit_received_at=?, state='exited', last_change=?"
             " WHERE session_id=? AND state='open'", (t, gate, received_at, now, session_id))


def spans(store: Store, frm: float) -> dict[str, Span]:
    """session → Span for every session that had not left before frm."""
    return {sid: Span(ent, ex) for sid, ent, ex in store.q(
        "SELECT session_id, entered_at, exited_at FROM sessions WHERE entered_at IS NOT NULL"
        " AND (exited_at IS NULL OR exited_at >= ?)", (frm,))}


def lock_for_lines(store: Store, session_ids: list[str], now: float) -> dict[str, tuple[str, int]]:
    """Lock the sessions (sorted) that lines are about to be added to; session → (state, receipt_n)."""
    sids = sorted(session_ids)
    state: dict[str, tuple[str, int]] = {}
    for i in range(0, len(sids), CHUNK):
        part = sids[i:i + CHUNK]
        m = marks(len(part))
        for sid, st, n in store.q(f"SELECT session_id, state, receipt_n FROM sessions WHERE session_id IN ({m})"
                                  " ORDER BY session_id" + store.for_update(), part):
            state[sid] = (st, int(n))
        store.ex(f"UPDATE sessions SET last_change=? WHERE session_id IN ({m})", (now, *part))
    return state


def correction_due(store: Store, session_id: str, due: float) -> None:
    """A line arrived after the receipt: a correction is due (the earliest such time is kept)."""
    store.ex("UPDATE sessions SET correction_due = COALESCE(correction_due, ?) WHERE session_id=?", (due, session_id))


def awaiting_receipt(store: Store) -> list[tuple[str, float, float | None]]:
    """(session_id, exited_at, exit_received_at) of exited sessions, oldest exit first, locked
    with SKIP LOCKED (another instance is issuing those)."""
    return store.q("SELECT session_id, exited_at, exit_received_at FROM sessions WHERE state='exited'"
                   " AND entered_at IS NOT NULL ORDER BY exit_received_at LIMIT 500" + store.skip_locked())


def corrections_due(store: Store, now: float) -> list[str]:
    return [sid for (sid,) in store.q(
        "SELECT session_id FROM sessions WHERE state='receipted' AND correction_due IS NOT NULL"
        " AND correction_due <= ? LIMIT 500" + store.skip_locked(), (now,))]


class ReceiptView(NamedTuple):
    state: str
    receipt_n: int
    entered_at: float | None
    exited_at: float | None
    shopper_ref: str | None


def for_receipt(store: Store, session_id: str) -> ReceiptView | None:
    row = store.q1("SELECT state, receipt_n, entered_at, exited_at, shopper_ref FROM sessions WHERE session_id=?"
                   + store.for_update(), (session_id,))
    return ReceiptView(*row) if row else None


def mark_receipted(store: Store, session_id: str, n: int, n_prev: int) -> bool:
    """The atomic transition that issues receipt n: only the transaction whose UPDATE matched."""
    cur = store.ex("UPDATE sessions SET state='receipted', receipt_n=?, correction_due=NULL"
                   " WHERE session_id=? AND receipt_n=?", (n, session_id, n_prev))
    return int(cur.rowcount) == 1


def count(store: Store, state: str) -> int:
    row = store.q1("SELECT COUNT(*) FROM sessions WHERE state=?", (state,))
    return int(row[0]) if row else 0


class EarlyExit(NamedTuple):
    t: float
    gate: str | None
    received_at: float


def add_pending_exit(store: Store, session_id: str, t: float, gate: str | None, received_at: float) -> bool:
    cur = store.ex("INSERT INTO pending_exits (session_id, t, gate, received_at) VALUES (?,?,?,?)"
                   " ON CONFLICT (session_id) DO NOTHING", (session_id, t, gate, received_at))
    return bool(cur.rowcount)


def take_pending_exit(store: Store, session_id: str) -> EarlyExit | None:
    """The exit that came before this session's entry, removed; None when there is none."""
    row: Any = store.q1("SELECT t, gate, received_at FROM pending_exits WHERE session_id=?", (session_id,))
    if row is None:
        return None
    store.ex("DELETE FROM pending_exits WHERE session_id=?", (session_id,))
    return EarlyExit(*row)
