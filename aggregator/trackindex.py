"""In-memory index of recent tracking observations, one per cartd instance.

Association asks "who was seen at (unit, shelf) between lo and hi, and how confidently?" for every
item event. Asked of the database that is a GROUP BY query per event, the largest cost per event
(and a network round trip on PostgreSQL). Every instance receives *all* tracking on a plain
subscription and writes it to the database anyway, so it can keep the last ``window_s`` seconds in
memory too and answer from there.

The database stays the truth: the index is loaded from it at start, and any question that reaches
back before ``covers_from`` (a historical replay, an event older than the window) goes to the
database. Only the best confidence per session counts, so an observation added twice (a redelivered
message, a batch retried after a deadlock) changes nothing.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from .associate import Sighting


class TrackIndex:
    def __init__(self, window_s: float = 300.0):
        self.window_s = window_s
        self.covers_from = float("inf")  # nothing is known until load()
        # (unit, shelf) → (exact times for bisect, the sightings in the same order)
        self._by: dict[tuple[str, str], tuple[list[float], list[Sighting]]] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def load(self, rows: Iterable[tuple[str, str, float, str, float]], covers_from: float) -> None:
        """Replace the content with rows (unit_id, shelf, t, session_id, confidence) from the database."""
        self._by = {}
        self._n = 0
        for unit, shelf, t, sid, conf in sorted(rows, key=lambda r: r[2]):
            self.add(unit, shelf, t, sid, conf)
        self.covers_from = covers_from

    def add(self, unit: str, shelf: str, t: float, sid: str, conf: float) -> None:
        ts, vals = self._by.setdefault((unit, shelf), ([], []))
        # vals keep t rounded to the millisecond, the instant key of associate.presence (rounded
        # once here instead of once per event that looks at it); ts keeps it exact for bisect.
        v = Sighting(sid, shelf, round(t, 3), conf)
        if not ts or t >= ts[-1]:
            ts.append(t)
            vals.append(v)
        else:  # out of order (a late tracker message): keep the lists sorted
            i = bisect_right(ts, t)
            ts.insert(i, t)
            vals.insert(i, v)
        self._n += 1

    def covers(self, lo: float) -> bool:
        return lo >= self.covers_from

    def window(self, unit: str, shelf: str, lo: float, hi: float) -> list[Sighting]:
        """Every observation [(session_id, shelf, t, confidence)] at (unit, shelf) and (unit, '') in
        [lo, hi], for presence over time (associate.py dedupes a repeated (session, t)); t is
        rounded to the millisecond (associate.presence(..., rounded=True))."""
        out: list[Sighting] = []
        for sh in (shelf, "") if shelf != "" else ("",):
            entry = self._by.get((unit, sh))
            if entry:
                ts, vals = entry
                out += vals[bisect_left(ts, lo):bisect_right(ts, hi)]
        return out

    def prune(self, now: float) -> None:
        """Forget what is older than the window; questions about it go to the database."""
        cut = now - self.window_s
        if cut <= self.covers_from:
            return
        n = 0
        for key in list(self._by):
            ts, vals = self._by[key]
            i = bisect_left(ts, cut)
            if i:
                del ts[:i]
                del vals[:i]
            if not ts:
                del self._by[key]
            else:
                n += len(ts)
        self._n = n
        self.covers_from = cut

