"""What staff write from the console: review decisions and restock acknowledgements.

A decision is checked here against what the line's evidence offers (a product among the event's
candidates or in the catalogue, a shopper among the association's candidates or inside the store
at the time), queued for cartd (tables/reviews.py) and written to the audit log in the same
transaction. cartd applies it on its next tick (engine/reviews.py), then issues the receipt or a
correction. One-line ``DeskError`` messages go back to the browser as they are.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..catalogue import Catalogue
from ..tables import audit, reviews
from .accounts import Staff
from .guarded import GuardedStore


class DeskError(ValueError):
    """A decision the console refuses (400), with the reason in one line."""


class Desk:
    def __init__(self, db: GuardedStore, catalogue: Catalogue, clock: Callable[[], float] = time.time):
        self.db, self.store, self.catalogue, self.clock = db, db.store, catalogue, clock

    def decide(self, who: Staff, line_id: int, body: dict[str, Any]) -> int:
        """Queue a decision; returns its id."""
        action = body.get("action")
        if action not in reviews.ACTIONS:
            raise DeskError(f"action: expected one of {', '.join(reviews.ACTIONS)}, got {str(action)[:40]!r}")
        sku = body.get("sku")
        qty = body.get("quantity")
        sid = body.get("session_id")
        with self.db.lock:  # checked and queued under one lock: nothing changes in between
            self.db.read(lambda: self._check(line_id, action, sku, qty, sid))
            now = self.clock()

            def write() -> int:
                did = reviews.add(self.store, line_id, action, who.username, now,
                                  sku=sku if action == "product" else None,
                                  quantity=qty if action == "product" else None,
                                  session_id=sid if action == "shopper" else None)
                audit.add(self.store, now, who.username, "review.decided", f"line {line_id}",
                          {"decision": did, "action": action, "sku": sku, "quantity": qty, "session_id": sid})
                return did
            return self.db.tx(write)

    def _check(self, line_id: int, action: str, sku: Any, qty: Any, sid: Any) -> None:
        """DeskError when the decision cannot be right for this line (read inside the lock)."""
        line = self.store.q1("SELECT l.session_id, e.t_start, e.t_end FROM lines l"
                             " JOIN events e ON e.event_id = l.event_id WHERE l.id=?", (line_id,))
        if line is None:
            raise DeskError(f"no line {line_id}")
        owner, t_start, t_end = line
        if action == "product":
            if not isinstance(sku, str) or not sku or len(sku) > 64:
                raise DeskError("sku: a product is needed")
            if self.catalogue.products and self.catalogue.get(sku) is None:
                raise DeskError(f"sku {sku!r} is not in the catalogue")
            if qty is not None and (not isinstance(qty, int) or isinstance(qty, bool)
                                    or not 1 <= qty <= reviews.MAX_QTY):
                raise DeskError(f"quantity: a whole number 1..{reviews.MAX_QTY}")
        elif action == "shopper":
            if not isinstance(sid, str) or not sid or len(sid) > 128:
                raise DeskError("session_id: a shopper is needed")
            if sid == owner:
                raise DeskError(f"the line is already {sid}'s")
            inside = self.store.q1("SELECT 1 FROM sessions WHERE session_id=? AND entered_at <= ?"
                                   " AND (exited_at IS NULL OR exited_at >= ?)", (sid, t_end + 60, t_start - 60))
            if inside is None:
                raise DeskError(f"session {sid} was not in the store at the time of this event")

    def outcome(self, decision_id: int) -> tuple[float | None, str | None] | None:
        return self.db.read(lambda: reviews.outcome(self.store, decision_id))

    def restock_ack(self, who: Staff, unit_id: str, shelf: str, sku: str) -> None:
        for name, v in (("unit_id", unit_id), ("shelf", shelf), ("sku", sku)):
            if not v or len(v) > 64:
                raise DeskError(f"{name}: expected a short string")
        self.note(who.username, "restock.ack", f"{unit_id}/{shelf}/{sku}")

    def note(self, who: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """An audit entry for a write with no row of its own (a restock acknowledged, a
        maintenance request sent to a unit)."""
        now = self.clock()
        self.db.tx(lambda: audit.add(self.store, now, who, action, target, detail))
