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
from ..store import Store
from ..tables import audit, reviews
from .accounts import Staff

MAX_QTY = 1000


class DeskError(ValueError):
    """A decision the console refuses (400), with the reason in one line."""


class Desk:
    def __init__(self, store: Store, catalogue: Catalogue, lock: Any, clock: Callable[[], float] = time.time):
        self.store, self.catalogue, self.lock, self.clock = store, catalogue, lock, clock

    def decide(self, who: Staff, line_id: int, body: dict[str, Any]) -> int:
        """Queue a decision; returns its id."""
        action = body.get("action")
        if action not in reviews.ACTIONS:
            raise DeskError(f"action: expected one of {', '.join(reviews.ACTIONS)}, got {str(action)[:40]!r}")
        sku = body.get("sku")
        qty = body.get("quantity")
        sid = body.get("session_id")
        with self.lock:
            try:
                line = self.store.q1("SELECT l.session_id, e.payload, l.candidates, e.t_start, e.t_end FROM lines l"
                                     " JOIN events e ON e.event_id = l.event_id WHERE l.id=?", (line_id,))
                if line is None:
                    raise DeskError(f"no line {line_id}")
                if action == "product":
                    if not isinstance(sku, str) or not sku or len(sku) > 64:
                        raise DeskError("sku: a product is needed")
                    if self.catalogue.products and self.catalogue.get(sku) is None:
                        raise DeskError(f"sku {sku!r} is not in the catalogue")
                    if qty is not None and (not isinstance(qty, int) or isinstance(qty, bool)
                                            or not 1 <= qty <= MAX_QTY):
                        raise DeskError(f"quantity: a whole number 1..{MAX_QTY}")
                elif action == "shopper":
                    if not isinstance(sid, str) or not sid or len(sid) > 128:
                        raise DeskError("session_id: a shopper is needed")
                    if sid == line[0]:
                        raise DeskError(f"the line is already {sid}'s")
                    inside = self.store.q1(
                        "SELECT 1 FROM sessions WHERE session_id=? AND entered_at <= ?"
                        " AND (exited_at IS NULL OR exited_at >= ?)", (sid, line[4] + 60, line[3] - 60))
                    if inside is None:
                        raise DeskError(f"session {sid} was not in the store at the time of this event")
            finally:
                self.store.end_read()
            now = self.clock()
            self.store.begin()
            try:
                did = reviews.add(self.store, line_id, action, who.username, now,
                                  sku=sku if action == "product" else None,
                                  quantity=qty if action == "product" else None,
                                  session_id=sid if action == "shopper" else None)
                audit.add(self.store, now, who.username, "review.decided", f"line {line_id}",
                          {"decision": did, "action": action, "sku": sku, "quantity": qty, "session_id": sid})
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise
        return did

    def outcome(self, decision_id: int) -> tuple[float | None, str | None] | None:
        with self.lock:
            try:
                return reviews.outcome(self.store, decision_id)
            finally:
                self.store.end_read()

    def restock_ack(self, who: Staff, unit_id: str, shelf: str, sku: str) -> None:
        for name, v in (("unit_id", unit_id), ("shelf", shelf), ("sku", sku)):
            if not v or len(v) > 64:
                raise DeskError(f"{name}: expected a short string")
        with self.lock:
            self.store.begin()
            try:
                audit.add(self.store, self.clock(), who.username, "restock.ack", f"{unit_id}/{shelf}/{sku}")
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise

    def note(self, who: str, action: str, target: str, detail: dict[str, Any]) -> None:
        """An audit entry for something done elsewhere (a maintenance request sent to a unit)."""
        with self.lock:
            self.store.begin()
            try:
                audit.add(self.store, self.clock(), who, action, target, detail)
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise
