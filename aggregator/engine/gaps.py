"""Seq gaps: find holes in each unit's seq, ask the unit to resend them, record them lost when it
cannot; and the per-unit watermarks that say how far a unit's events are known complete.

Why apart: receipts wait on watermarks, and watermarks rest on this bookkeeping (``units``,
``lost``, ``seq_notes``); one module owns the rules of both.
"""
from __future__ import annotations

import json
import logging
from typing import NamedTuple

from ulid import ULID

from ..messages import BadMessage, decode
from ..store import Store
from ..tables import events, seqs, units
from .base import EngineBase, Outbound

log = logging.getLogger("aggregator.engine")

LEADER_GAPS = 7302  # advisory lock key: one instance scans the gaps per tick (PostgreSQL)


class Watermark(NamedTuple):
    """How far a unit's events are known complete (None: not at all; +inf: stopped, nothing
    missing), already less ``receipts.unit_lag_s``; and the unit's last status."""
    t: float | None
    status: str | None


def watermarks(store: Store, unit_lag_s: float) -> dict[str, Watermark]:
    """unit → Watermark (read only: also used by the staff page's views)."""
    out: dict[str, Watermark] = {}
    for r in units.mark_rows(store):
        wm = r.contig_t_end
        drained = (
            r.health_last_seq is not None
            and r.contiguous_seq is not None
            and 0 <= r.health_last_seq <= r.contiguous_seq
        )
        if r.health_t is not None and drained:
            wm = r.health_t if wm is None else max(wm, r.health_t)
        if r.status == "stopped" and drained:
            wm = float("inf")
        out[r.unit_id] = Watermark(None if wm is None else wm - unit_lag_s, r.status)
    return out


class Gaps(EngineBase):
    def watermarks(self) -> dict[str, Watermark]:
        return watermarks(self.store, self.cfg.receipts.unit_lag_s)

    def _resend_reply(self, topic: str, unit_id: str, payload: bytes) -> None:
        data = decode(payload)
        if not isinstance(data, dict):
            raise BadMessage("schema_violation", "resend reply is not an object")
        if not data.get("ok"):
            self.counters["resend_refused"] += 1
            log.warning("unit %s refused resend %s: %s", unit_id, data.get("txid"), data.get("error"))
            return
        result = data.get("result") or {}
        self.counters["resend_replies"] += 1
        self.counters["resent_events"] += int(result.get("resent") or 0)
        for rng in result.get("missing") or []:
            try:
                a, b = int(rng[0]), int(rng[1])
            except (TypeError, ValueError, IndexError):
                continue
            if seqs.record_lost(self.store, unit_id, a, b, self.clock()):
                self._deadletter("events_lost", topic,
                                 f"unit {unit_id} no longer holds seq {a}..{b} in its outbox: those events are lost",
                                 payload, action="applied", unit_id=unit_id)

    def _scan_gaps(self, now: float) -> None:
        r = self.cfg.resend
        for unit, contig, contig_t, health_last, gap_since, resend_at, attempts in units.gap_states(self.store):
            got = events.seqs_after(self.store, unit, contig)
            # Seqs that need no event: recorded lost, or accounted for by a refused/conflicting one.
            lost = seqs.accounted_after(self.store, unit, contig)
            new_contig, new_t = contig, contig_t
            li = 0
            i = 0
            while True:
                if i < len(got) and got[i][0] <= new_contig:
                    i += 1
                    continue
                if i < len(got) and got[i][0] == new_contig + 1:
                    new_contig = got[i][0]
                    new_t = got[i][1] if new_t is None else max(new_t, got[i][1])
                    i += 1
                    continue
                if li < len(lost) and lost[li][0] <= new_contig + 1:
                    new_contig = max(new_contig, lost[li][1])
                    li += 1
                    continue
                break
            # The first seq we are missing, and the end of the hole: the next seq we hold, or the
            # unit's own last_seq (from its health) when nothing newer has arrived.
            held = ([got[i][0]] if i < len(got) else []) + ([lost[li][0]] if li < len(lost) else [])
            hole_end = min(held) - 1 if held else (health_last if health_last and health_last > new_contig else None)
            if hole_end is None:
                if new_contig != contig or gap_since is not None:
                    units.set_contiguous(self.store, unit, new_contig, new_t, None)
                continue
            if gap_since is None or new_contig != contig:
                units.set_contiguous(self.store, unit, new_contig, new_t, now)
                continue
            if now - gap_since < r.gap_wait_s or (resend_at is not None and now < resend_at):
                continue
            lo, hi = new_contig + 1, min(hole_end, new_contig + 1000)
            if attempts >= r.max_attempts:
                seqs.record_lost(self.store, unit, lo, hi, now)
                self._deadletter(
                    "events_lost",
                    f"{self.base}/{unit}/events",
                    f"unit {unit} did not resend seq {lo}..{hi} after {attempts} requests: recorded as lost",
                    None,
                    action="applied",
                    unit_id=unit,
                )
                units.gap_recorded_lost(self.store, unit, now)
                continue
            txid = str(ULID())
            self._out.append(Outbound(f"{self.base}/{unit}/req/resend",
                                      json.dumps({"txid": txid, "from_seq": lo, "to_seq": hi})))
            units.resend_asked(self.store, unit, now + r.retry_s)
            self.counters["resend_requests"] += 1
            log.info("seq gap on %s: asking for %d..%d (attempt %d)", unit, lo, hi, attempts + 1)

    def _rebirth(self, unit: str, now: float) -> None:
        """Ask a lagging unit to republish its status and health (at most every rebirth_interval_s)."""
        exists, last = units.last_rebirth(self.store, unit)
        if last is not None and now - last < self.cfg.receipts.rebirth_interval_s:
            return
        if not exists:
            units.ensure(self.store, unit)
        units.rebirth_asked(self.store, unit, now)
        self._out.append(Outbound(f"{self.base}/{unit}/req/rebirth", json.dumps({"txid": str(ULID())})))
        self.counters["rebirth_requests"] += 1
