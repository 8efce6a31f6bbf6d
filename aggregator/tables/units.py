"""``units``: per shelf unit, the seq bookkeeping (contiguous_seq: every seq up to it received or
recorded lost; max_seq), its last health and status, and the resend state of a seq gap.

Writes to existing rows are conditional (``WHERE max_seq < ?`` …): with several instances the
other one often made the same write already, and an UPDATE whose condition is false takes no lock."""
from __future__ import annotations

from typing import NamedTuple

from ..store import Store


def ensure(store: Store, unit_id: str) -> None:
    store.ex("INSERT INTO units (unit_id, contiguous_seq) VALUES (?, -1) ON CONFLICT (unit_id) DO NOTHING", (unit_id,))


class SeqSpan(NamedTuple):
    """The lowest and highest seq of a unit's new events in one transaction."""
    lo: int
    hi: int


def advance_seqs(store: Store, spans: list[tuple[str, SeqSpan]]) -> None:
    """(unit, SeqSpan) sorted by unit: create missing rows, raise max_seq, start a fresh baseline."""
    store.many("INSERT INTO units (unit_id, contiguous_seq, max_seq) VALUES (?,?,?) ON CONFLICT (unit_id) DO NOTHING",
               [(u, s.lo - 1, s.hi) for u, s in spans])
    store.many("UPDATE units SET max_seq=? WHERE unit_id=? AND max_seq < ?", [(s.hi, u, s.hi) for u, s in spans])
    store.many("UPDATE units SET contiguous_seq=? WHERE unit_id=? AND contiguous_seq < 0",
               [(s.lo - 1, u) for u, s in spans])


def newer_health(store: Store, unit_id: str, t: float, last_seq: int | None) -> None:
    """Keep the newest (health_t, health_last_seq) pair."""
    store.ex("UPDATE units SET health_t=?, health_last_seq=? WHERE unit_id=? AND (health_t IS NULL OR health_t < ?)",
             (t, last_seq, unit_id, t))


def baseline(store: Store, unit_id: str, seq: int) -> None:
    """A fresh unit row (contiguous_seq < 0) starts its seq baseline at seq."""
    store.ex("UPDATE units SET contiguous_seq=? WHERE unit_id=? AND contiguous_seq < 0", (seq, unit_id))


def changed_status(store: Store, unit_id: str, status: str, now: float) -> None:
    store.ex("UPDATE units SET status=?, status_t=? WHERE unit_id=? AND (status IS NULL OR status <> ?)",
             (status, now, unit_id, status))


class SeqRef(NamedTuple):
    contiguous_seq: int | None
    max_seq: int | None
    health_last_seq: int | None


def seq_ref(store: Store, unit_id: str) -> SeqRef | None:
    row = store.q1("SELECT contiguous_seq, max_seq, health_last_seq FROM units WHERE unit_id=?", (unit_id,))
    return SeqRef(*row) if row else None


class GapState(NamedTuple):
    unit_id: str
    contiguous_seq: int
    contig_t_end: float | None
    health_last_seq: int | None
    gap_since: float | None
    resend_at: float | None
    resend_attempts: int


def gap_states(store: Store) -> list[GapState]:
    """Units with a seq baseline, in unit order."""
    return [GapState(*r) for r in store.q(
        "SELECT unit_id, contiguous_seq, contig_t_end, health_last_seq, gap_since, resend_at, resend_attempts"
        " FROM units WHERE contiguous_seq >= 0 ORDER BY unit_id")]


def set_contiguous(store: Store, unit_id: str, seq: int, t_end: float | None, gap_since: float | None) -> None:
    """New contiguous seq; gap_since None = no hole, else the hole seen since then. Resends reset."""
    store.ex("UPDATE units SET contiguous_seq=?, contig_t_end=?, gap_since=?, resend_at=NULL, resend_attempts=0"
             " WHERE unit_id=?", (seq, t_end, gap_since, unit_id))


def gap_recorded_lost(store: Store, unit_id: str, now: float) -> None:
    """The hole was recorded lost: start over for whatever hole comes next."""
    store.ex("UPDATE units SET resend_attempts=0, resend_at=NULL, gap_since=? WHERE unit_id=?", (now, unit_id))


def resend_asked(store: Store, unit_id: str, next_at: float) -> None:
    store.ex("UPDATE units SET resend_at=?, resend_attempts=resend_attempts+1 WHERE unit_id=?", (next_at, unit_id))


class MarkRow(NamedTuple):
    unit_id: str
    contiguous_seq: int | None
    contig_t_end: float | None
    health_t: float | None
    health_last_seq: int | None
    status: str | None


def mark_rows(store: Store) -> list[MarkRow]:
    """What a unit's watermark is computed from."""
    return [MarkRow(*r) for r in store.q(
        "SELECT unit_id, contiguous_seq, contig_t_end, health_t, health_last_seq, status FROM units")]


def last_rebirth(store: Store, unit_id: str) -> tuple[bool, float | None]:
    """(row exists, last rebirth request time)."""
    row = store.q1("SELECT last_rebirth FROM units WHERE unit_id=?", (unit_id,))
    return (row is not None, row[0] if row else None)


def rebirth_asked(store: Store, unit_id: str, now: float) -> None:
    store.ex("UPDATE units SET last_rebirth=? WHERE unit_id=?", (now, unit_id))


def summaries(store: Store) -> list[tuple[str, int, int, str | None]]:
    """(unit_id, contiguous_seq, max_seq, status) for health documents."""
    return store.q("SELECT unit_id, contiguous_seq, max_seq, status FROM units")
