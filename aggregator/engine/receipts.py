"""Receipts: when a session that left may be receipted (every expected unit's watermark has
passed its exit, or the deadline), the receipt document, and corrections for late lines.

Why apart: a receipt is the one thing cartd promises the store; its document (schema
gondola.receipt/1) is built in one place, from the cart as ``cart`` reads it.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, TypedDict

from ..catalogue import Catalogue
from ..messages import fmt_ts
from ..money import fmt_money
from ..store import RetryTransaction, Store
from ..tables import events, receipts, sessions
from ..tables import lines as lines_t
from .base import EngineBase, Outbound
from .gaps import Watermark

log = logging.getLogger("aggregator.engine")


class ReceiptLine(TypedDict):
    """One line of a receipt (schema gondola.receipt/1, ``lines``)."""
    sku: str
    name: str | None
    quantity: int
    unit_price: int | None
    amount: int
    needs_review: bool
    events: list[str]


class UnresolvedLine(TypedDict):
    """A cart line without a product or a quantity (schema gondola.receipt/1, ``unresolved``)."""
    event_id: str
    sku: str | None
    reason: str


class _Tally(TypedDict):
    qty: int
    review: bool
    events: list[str]


def cart(store: Store, catalogue: Catalogue, session_id: str) -> tuple[list[ReceiptLine], list[UnresolvedLine]]:
    """(receipt lines, unresolved lines) of a session's cart (read only: also the staff page's)."""
    per: dict[str, _Tally] = {}
    unresolved: list[UnresolvedLine] = []
    for eid, sku, qty, review, reason in lines_t.of_session(store, session_id):
        if sku is None or qty == 0:
            unresolved.append({"event_id": eid, "sku": sku, "reason": reason or "unresolved"})
            continue
        d = per.setdefault(sku, _Tally(qty=0, review=False, events=[]))
        d["qty"] += qty
        d["review"] = d["review"] or bool(review)
        d["events"].append(eid)
    out: list[ReceiptLine] = []
    for sku in sorted(per):
        d = per[sku]
        p = catalogue.get(sku)
        q = max(0, d["qty"])
        if q == 0 and d["qty"] == 0 and not d["review"]:
            continue  # picked and put back
        price = p.price if p else None
        out.append({"sku": sku, "name": p.name if p else None, "quantity": q, "unit_price": price,
                    "amount": q * price if price is not None else 0,
                    "needs_review": d["review"] or d["qty"] < 0, "events": d["events"]})
    return out, unresolved


class Receipts(EngineBase):
    def cart(self, session_id: str) -> tuple[list[ReceiptLine], list[UnresolvedLine]]:
        return cart(self.store, self.catalogue, session_id)

    def _expected_units(self, marks: dict[str, Watermark]) -> list[str]:
        if self.units_cfg:
            return sorted(self.units_cfg)
        return sorted(u for u, m in marks.items() if m.status in ("online", "degraded"))

    def _receipts(self, now: float) -> None:
        rows = sessions.awaiting_receipt(self.store)
        if not rows:
            return
        tol = self.cfg.association.clock_tolerance_s
        marks = self.watermarks()
        expected = self._expected_units(marks)
        lagging_all: set[str] = set()
        for sid, exited_at, exit_rx in rows:
            target = exited_at + tol
            lagging = [u for u in expected if ((marks[u].t if u in marks else None) or float("-inf")) < target]
            pending = events.any_pending_from(self.store, target)
            overdue = now >= (exit_rx or now) + self.cfg.receipts.deadline_s
            if (lagging or pending) and not overdue:
                lagging_all.update(lagging)
                continue
            hold = self.cfg.review.hold_receipt_s
            if hold and now < (exit_rx or now) + hold and lines_t.open_reviews(self.store, sid):
                continue  # staff are to look at a line first (review.hold_receipt_s)
            self._issue(sid, now, complete=not lagging and not pending, waited_for=lagging)
        for u in sorted(lagging_all):
            self._rebirth(u, now)

    def _corrections(self, now: float) -> None:
        for sid in sessions.corrections_due(self.store, now):
            self._issue(sid, now, complete=True, waited_for=[])

    def _issue(self, session_id: str, now: float, complete: bool, waited_for: list[str]) -> None:
        row = sessions.for_receipt(self.store, session_id)
        if row is None or row.state not in ("exited", "receipted"):
            return
        n_prev = row.receipt_n
        # A put-back judged "not in the cart" may have raced its own pick (several instances, or a
        # resend that filled a gap): with the whole visit known, clear the flag when the cart
        # holds enough of that SKU after all.
        for line_id, sku in lines_t.suspect_put_backs(self.store, session_id):
            net = lines_t.net_qty(self.store, session_id, sku)
            if net is not None and net >= 0:
                lines_t.clear_review(self.store, line_id)
                self.counters["review_cleared"] += 1
        lines, unresolved = self.cart(session_id)
        n = int(n_prev) + 1
        doc: dict[str, Any] = {
            "schema": "gondola.receipt/1", "receipt_id": f"{session_id}/{n}", "session_id": session_id,
            "store_id": self.cfg.store_id, "kind": "receipt" if n == 1 else "correction", "n": n,
            "corrects": f"{session_id}/{n_prev}" if n_prev else None, "issued_at": fmt_ts(now),
            "entered_at": fmt_ts(row.entered_at), "exited_at": fmt_ts(row.exited_at), "complete": complete,
            "currency": self.cfg.receipts.currency, "shopper_ref": row.shopper_ref, "lines": lines,
            "total": sum(l["amount"] for l in lines), "unresolved": unresolved}
        if waited_for:
            doc["waited_for"] = waited_for
        if n > 1:
            self._adjustments(doc, session_id, n_prev, lines)
        text = json.dumps(doc, separators=(",", ":"))
        # Atomic transition: only the transaction whose UPDATE matched issues receipt n.
        if not sessions.mark_receipted(self.store, session_id, n, n_prev):
            raise RetryTransaction(f"receipt {session_id}/{n} raced")
        receipts.insert(self.store, doc["receipt_id"], session_id, n, doc["kind"], now, doc["total"], text)
        self.counters["receipts" if n == 1 else "corrections"] += 1
        log.info("%s %s: %d lines, total %s%s", doc["kind"], doc["receipt_id"], len(lines),
                 fmt_money(doc["total"], doc["currency"]),
                 "" if complete else f" (deadline; no word from {', '.join(waited_for)})")
        self._out.append(
            Outbound(f"{self.base}/_store/receipts/{session_id}", text, kind="receipt", ref=doc["receipt_id"])
        )

    def _adjustments(self, doc: dict[str, Any], session_id: str, n_prev: int, lines: list[ReceiptLine]) -> None:
        """A correction's difference to the previous receipt, per SKU, with the late events."""
        prev = receipts.payload(self.store, f"{session_id}/{n_prev}")
        prev_doc: dict[str, Any] = json.loads(prev) if prev else {"lines": [], "total": 0}  # a stored receipt
        before = {l["sku"]: l for l in prev_doc["lines"]}
        after = {l["sku"]: l for l in lines}
        late: defaultdict[str | None, list[str]] = defaultdict(list)
        for eid, sku in lines_t.added_after(self.store, session_id, n_prev):
            late[sku].append(eid)
        adj: list[dict[str, object]] = []
        for sku in sorted(set(before) | set(after)):
            b, a_ = before.get(sku), after.get(sku)
            dq = (a_["quantity"] if a_ else 0) - (b["quantity"] if b else 0)
            da = (a_["amount"] if a_ else 0) - (b["amount"] if b else 0)
            if dq or da or late.get(sku):
                p = self.catalogue.get(sku)
                adj.append({"sku": sku, "name": p.name if p else None, "quantity_delta": dq,
                            "amount_delta": da, "events": late.get(sku, [])})
        doc["adjustments"] = adj
        doc["total_delta"] = doc["total"] - int(prev_doc.get("total", 0))
