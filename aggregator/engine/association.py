"""Association: which shopper an item event belongs to, and the cart line it becomes.

Why apart: the rule itself is pure (aggregator/associate.py); this module feeds it — tracking
from memory or the database, who was inside, what each candidate holds — and stages the line.
Lines are written per burst (``_flush_lines``) after the burst's sessions are locked once, in
session order.
"""
from __future__ import annotations

import json

from .. import associate
from ..messages import fmt_ts
from ..tables import events, lines, sessions, tracking
from ..tables.sessions import Span
from .base import EngineBase, SpanCache, StagedLine


class Association(EngineBase):
    def _pending(self, now: float) -> None:
        """Associate the events that were waiting for tracking, when it has caught up."""
        rows = events.pending(self.store)
        tol = self.cfg.association.clock_tolerance_s
        lo_hint = min((r.t_start for r in rows), default=0.0) - tol
        for r in rows:
            if self._tracking_ready(r.t_end, r.received_at, now):
                mem = (self._tracker_t is not None
                       and self._tracker_t >= r.t_end + tol + self.cfg.association.context_after_s)
                self._associate(r.event_id, r.unit_id, r.shelf, r.type, r.sku, r.quantity, r.t_start, r.t_end,
                                f"{self.base}/{r.unit_id}/events", from_memory=mem, lo_hint=lo_hint,
                                flags=r.flags)
        self._flush_lines()

    def _tracking_ready(self, t_end: float, received_at: float, now: float) -> bool:
        if self._tracker_t is None:
            t = tracking.feed_t(self.store)
            if t is None:
                return True  # no tracker in this store: association uses who is inside
            self._tracker_t = t
        if self._tracker_t >= t_end + self.cfg.association.clock_tolerance_s + self.cfg.association.context_after_s:
            return True
        return now - received_at >= self.cfg.association.tracking_wait_s

    def _spans(self, frm: float) -> dict[str, Span]:
        """session → (entered_at, exited_at) for every session that had not left before frm.

        Read once per burst (from the burst's earliest event) and reused until a gate message is
        applied in the same transaction."""
        c = self._sessions
        if c is None or frm < c.frm:
            frm = min(frm, c.frm) if c is not None else frm
            c = self._sessions = SpanCache(frm, sessions.spans(self.store, frm))
        return c.spans

    def _associate(self, event_id: str, unit_id: str, shelf: str, etype: str, sku: str | None, qty: int,
                   t_start: float, t_end: float, topic: str, *, from_memory: bool = False,
                   lo_hint: float | None = None, flags: str | None = None) -> None:
        a = self.cfg.association
        lo, hi = t_start - a.clock_tolerance_s, t_end + a.clock_tolerance_s
        # Presence over the window widened by the context (associate.py: a sum, not the best sighting).
        w_lo, w_hi = lo - a.context_before_s, hi + a.context_after_s
        if from_memory and self.tracks.covers(w_lo):
            # Our own tracking view has passed t_end (see _tracking_ready): memory holds it all.
            seen = associate.presence(self.tracks.window(unit_id, shelf, w_lo, w_hi), shelf, rounded=True)
        else:
            self._flush_tracking()  # this transaction's own tracking, before reading it back
            seen = associate.presence(tracking.window(self.store, unit_id, shelf, w_lo, w_hi), shelf)
        spans = self._spans(lo if lo_hint is None else min(lo, lo_hint))

        def inside(sid: str) -> bool:
            sp = spans.get(sid)
            return sp is not None and sp.entered_at <= hi and (sp.exited_at is None or sp.exited_at >= lo)
        scores: dict[str, associate.Presence] = {}
        if seen:
            scores = {k: v for k, v in seen.items() if inside(k)}
            self.counters["tracking_outside_session"] += len(seen) - len(scores)
        evidence = "tracking"
        if not scores:
            in_store = [sid for sid in spans if inside(sid)][:2]
            if len(in_store) == 1:
                scores = {in_store[0]: associate.Presence(1.0, 1.0, 1)}
                evidence = "only_shopper"
            else:
                events.mark_deadletter(self.store, event_id)
                who = "nobody was in the store" if not in_store else "several shoppers inside and no tracking evidence"
                self._deadletter(
                    "no_session",
                    topic,
                    f"event {event_id} at {unit_id} shelf {shelf} {fmt_ts(t_start)}..{fmt_ts(t_end)}: {who}",
                    None,
                    event_id=event_id,
                    unit_id=unit_id,
                )
                return
        holding: dict[str, int] = {}
        if etype == "put_back" and sku is not None:
            ids = sorted(scores)
            holding = lines.holding(self.store, sku, ids)
            for sid in ids:  # lines decided earlier in this burst, not written yet
                if (sid, sku) in self._staged_qty:
                    holding[sid] = holding.get(sid, 0) + self._staged_qty[(sid, sku)]
        put_back = etype == "put_back" and sku is not None
        decision = associate.decide(scores, put_back=put_back, holding=holding if put_back else None, quantity=qty,
                                    min_confidence=a.min_confidence, ambiguity_margin=a.ambiguity_margin,
                                    not_holding_factor=a.not_holding_factor)
        assert decision is not None  # scores is never empty here
        best, reasons, ranked = decision.session_id, decision.reasons, decision.candidates
        if etype not in ("pick", "put_back") or sku is None:
            reasons.append("unresolved")
        reasons += [f for f in (flags or "").split(",") if f and f not in reasons]
        signed = qty if etype == "pick" else -qty if etype == "put_back" else 0
        if sku is not None and signed and self.catalogue.products and self.catalogue.get(sku) is None:
            self._deadletter("unpriced_sku", topic, f"sku {sku} of event {event_id} is not in the catalogue",
                             None, action="applied", event_id=event_id, unit_id=unit_id, session_id=best)
        self._add_line(StagedLine(best, event_id, sku, signed, reasons, evidence,
                                  [{"session_id": s, "score": round(v, 4)} for s, v in ranked[:5]]))

    def _add_line(self, line: StagedLine) -> None:
        """Stage a line; _flush_lines writes the burst's lines together (before the commit, and before
        anything in the same transaction reads lines or changes sessions)."""
        self._lines.append(line)
        if line.sku is not None and line.signed:
            k = (line.session_id, line.sku)
            self._staged_qty[k] = self._staged_qty.get(k, 0) + line.signed

    def _flush_lines(self) -> None:
        if not self._lines:
            return
        staged, self._lines, self._staged_qty = self._lines, [], {}
        now = self.clock()
        # Lock the sessions' rows (PostgreSQL; in a fixed order, so two instances cannot deadlock)
        # so a concurrent receipt either includes these lines or sees them as a correction, never
        # half of each.
        state = sessions.lock_for_lines(self.store, list({l.session_id for l in staged}), now)
        rows: list[lines.LineRow] = []
        late: list[lines.LineRow] = []
        for l in staged:
            st = state.get(l.session_id)
            after = st[1] if st and st[0] == "receipted" else 0
            # A line that changes a receipt already sent is always looked at by a person.
            reasons = [*l.reasons, "after_receipt"] if after and "after_receipt" not in l.reasons else l.reasons
            row = lines.LineRow(l.session_id, l.event_id, l.sku, l.signed, int(bool(reasons)),
                                ",".join(reasons) or None, l.evidence, json.dumps(l.candidates), after, now,
                                "open" if reasons else None)
            (late if after else rows).append(row)
            self.counters["lines"] += 1
            if reasons:
                self.counters["review_lines"] += 1
        lines.insert(self.store, rows)
        for row in late:  # after the receipt: this line makes a correction
            if lines.insert_one(self.store, row):
                sessions.correction_due(self.store, row.session_id, now + self.cfg.receipts.correction_delay_s)
                self.counters["late_lines"] += 1
        events.mark_assigned(self.store, [(l.session_id, l.event_id) for l in staged])
