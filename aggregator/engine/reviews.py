"""Review decisions: staff resolve the lines cartd was unsure of; cartd applies each decision in
its own transaction and, when the receipt already went out, issues a correction.

Why here and not in the console: the cart tables keep a single writer (this engine), so a decision
and a late event racing for the same session are serialised like any two messages, and the
decision lands in the same flush order as everything else. The console only queues decisions
(``tables/reviews.py``); ``applied_at`` / ``result`` tell it what became of each.
"""
from __future__ import annotations

import json
import logging

from ..tables import audit, events, reviews, sessions
from ..tables import lines as lines_t
from .base import EngineBase

log = logging.getLogger("aggregator.engine")


class Reviews(EngineBase):
    def _decisions(self, now: float) -> None:
        for d in reviews.todo(self.store):
            try:
                result = self._apply_decision(d, now)
            except _Refused as exc:
                result = f"refused: {exc}"
                self.counters["review_refused"] += 1
            reviews.applied(self.store, d.id, now, result)
            audit.add(self.store, now, d.actor, f"review.{d.action}", f"line {d.line_id}",
                      {"decision": d.id, "result": result, "sku": d.sku, "quantity": d.quantity,
                       "session_id": d.session_id})
            log.info("review decision %d by %s on line %d: %s → %s", d.id, d.actor, d.line_id, d.action, result)

    def _apply_decision(self, d: reviews.Decision, now: float) -> str:
        line = lines_t.for_review(self.store, d.line_id)
        if line is None:
            raise _Refused(f"no line {d.line_id}")
        touched = {line.session_id}
        if d.action == "accept":
            lines_t.decide(self.store, line.id, "accepted", d.actor, now)
            result = "accepted"
        elif d.action == "remove":
            lines_t.decide(self.store, line.id, "removed", d.actor, now)
            result = "removed"
        elif d.action == "product":
            if not d.sku or (self.catalogue.products and self.catalogue.get(d.sku) is None):
                raise _Refused(f"sku {d.sku!r} is not in the catalogue")
            qty = d.quantity if d.quantity is not None else abs(line.qty) or 1
            if not 1 <= qty <= reviews.MAX_QTY:
                raise _Refused(f"quantity must be 1..{reviews.MAX_QTY}, got {qty}")
            sign = (1 if line.qty > 0 else -1) if line.qty else self._direction(line.event_id)
            lines_t.decide(self.store, line.id, "changed", d.actor, now, sku=d.sku, qty=sign * qty)
            result = f"product {d.sku} × {qty}"
        elif d.action == "shopper":
            if not d.session_id or sessions.for_receipt(self.store, d.session_id) is None:
                raise _Refused(f"no session {d.session_id!r}")
            touched.add(d.session_id)
            sessions.lock(self.store, sorted(touched))
            lines_t.decide(self.store, line.id, "changed", d.actor, now, session_id=d.session_id)
            events.mark_assigned(self.store, [(d.session_id, line.event_id)])
            result = f"moved from {line.session_id} to {d.session_id}"
        else:
            raise _Refused(f"unknown action {d.action!r}")
        self.counters["review_decisions"] += 1
        if d.action == "accept":
            return result  # the cart is unchanged: no correction for the shopper to puzzle over
        for sid in sorted(touched):
            row = sessions.for_receipt(self.store, sid)
            if row is not None and row.state == "receipted":
                sessions.correction_due(self.store, sid, now)  # the receipt went out: correct it now
                result += f"; correction for {sid} due"
        return result

    def _direction(self, event_id: str) -> int:
        """+1 (pick) or -1 (put-back) for an unresolved line, from the event's weight change."""
        p = events.payloads(self.store, [event_id]).get(event_id)
        try:
            delta = float(json.loads(p)["delta_g"]) if p else -1.0
        except (ValueError, KeyError, TypeError):
            delta = -1.0
        return 1 if delta < 0 else -1


class _Refused(Exception):
    """A decision that cannot be applied as asked (the line or session is gone, an unknown SKU)."""
