"""Read-only queries for the staff page (and anything else that wants to look, never write).

    v = Views.open("cartd.yaml")     # SQLite opened with mode=ro; PostgreSQL with a read-only session
    v.shelves(); v.open_carts(); v.receipts(); v.review_lines(); v.deadletters(); v.units(); v.summary()

Every result is plain JSON-able data; times are RFC 3339 strings, money integer minor units.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .catalogue import Catalogue
from .config import Config, load_config
from .engine import cart, watermarks
from .messages import fmt_ts
from .store import Store, open_store


class Views:
    def __init__(self, cfg: Config, store: Store, catalogue: Catalogue):
        self.cfg = cfg
        self.store = store
        self.catalogue = catalogue

    @classmethod
    def open(cls, config: str | Path) -> Views:
        return cls.from_config(load_config(config))

    @classmethod
    def from_config(cls, cfg: Config) -> Views:
        return cls(cfg, open_store(cfg.storage, readonly=True), Catalogue.load(cfg.catalogue, cfg.receipts.currency))

    def close(self) -> None:
        self.store.close()

    def name(self, sku: str | None) -> str | None:
        """The product's name from the catalogue (None when unknown)."""
        p = self.catalogue.get(sku)
        return p.name if p else None

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.store.q(sql, params)
        finally:
            self.store.end_read()

    def shelves(self, limit: int = 5) -> list[dict[str, Any]]:
        """Each (unit, shelf) that has published events, with its last ``limit`` events."""
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        rows = self._q(
            "SELECT e.unit_id, e.shelf, e.event_id, e.type, e.sku, e.quantity, e.t_end, e.session_id, e.state,"
            " l.needs_review, e.historical FROM events e LEFT JOIN lines l ON l.event_id = e.event_id"
            " ORDER BY e.unit_id, e.shelf, e.t_end DESC")
        for unit, shelf, eid, etype, sku, qty, t_end, sid, state, review, hist in rows:
            evs = out.setdefault((unit, shelf), [])
            if len(evs) < limit:
                evs.append({"event_id": eid, "type": etype, "sku": sku, "name": self.name(sku), "quantity": qty,
                            "t_end": fmt_ts(t_end), "session_id": sid, "state": state,
                            "needs_review": bool(review), "historical": bool(hist)})
        return [{"unit_id": u, "shelf": s, "last_events": evs} for (u, s), evs in sorted(out.items())]

    def open_carts(self) -> list[dict[str, Any]]:
        """Sessions without a receipt yet (in the store, or exited and awaiting the receipt)."""
        out = []
        sessions = self._q("SELECT session_id, state, entered_at, exited_at FROM sessions"
                           " WHERE state IN ('open', 'exited') ORDER BY entered_at")
        for sid, state, entered, exited in sessions:
            try:
                lines, unresolved = cart(self.store, self.catalogue, sid)
            finally:
                self.store.end_read()
            out.append({"session_id": sid, "state": state, "entered_at": fmt_ts(entered), "exited_at": fmt_ts(exited),
                        "lines": lines, "unresolved": unresolved, "total": sum(l["amount"] for l in lines),
                        "currency": self.cfg.receipts.currency})
        return out

    def receipts(self, limit: int = 50, session_id: str | None = None) -> list[dict[str, Any]]:
        """Stored receipts and corrections (gondola.receipt/1 documents), newest first."""
        if session_id:
            rows = self._q(
                "SELECT payload FROM receipts WHERE session_id=? ORDER BY n DESC LIMIT ?", (session_id, limit)
            )
        else:
            rows = self._q("SELECT payload FROM receipts ORDER BY issued_at DESC, n DESC LIMIT ?", (limit,))
        return [json.loads(p) for (p,) in rows]

    _REVIEW_COLS = ("SELECT l.id, l.session_id, l.event_id, l.sku, l.qty, l.reason, l.candidates, l.review_state,"
                    " l.reviewed_by, l.reviewed_at, l.after_receipt, e.t_start, e.t_end, e.unit_id, e.shelf, e.payload,"
                    " s.state, s.receipt_n FROM lines l JOIN events e ON e.event_id = l.event_id"
                    " LEFT JOIN sessions s ON s.session_id = l.session_id")

    def review_queue(self, limit: int = 200) -> list[dict[str, Any]]:
        """Lines awaiting a person's decision, oldest event first, each with its evidence."""
        rows = self._q(self._REVIEW_COLS + " WHERE l.review_state = 'open' ORDER BY e.t_end LIMIT ?", (limit,))
        return [self._review_item(r) for r in rows]

    def review_item(self, line_id: int) -> dict[str, Any] | None:
        rows = self._q(self._REVIEW_COLS + " WHERE l.id = ?", (line_id,))
        if not rows:
            return None
        item = self._review_item(rows[0])
        item["decisions"] = [
            {"id": i, "action": a, "sku": sku, "quantity": q, "session_id": s, "actor": who,
             "decided_at": fmt_ts(t), "applied_at": fmt_ts(at), "result": res}
            for i, a, sku, q, s, who, t, at, res in self._q(
                "SELECT id, action, sku, quantity, session_id, actor, decided_at, applied_at, result"
                " FROM review_decisions WHERE line_id=? ORDER BY id", (line_id,))]
        return item

    def _review_item(self, r: tuple[Any, ...]) -> dict[str, Any]:
        (lid, sid, eid, sku, qty, reason, cands, state, by, at, after, t_start, t_end, unit, shelf, payload,
         s_state, receipt_n) = r
        try:
            ev = json.loads(payload)
        except ValueError:
            ev = {}
        products = [{**c, "name": self.name(c.get("sku"))} for c in ev.get("candidates", [])
                    if isinstance(c, dict)][:6]
        if sku is not None and not any(p.get("sku") == sku for p in products):
            products.insert(0, {"sku": sku, "quantity": abs(qty), "score": ev.get("confidence", 1.0),
                                "name": self.name(sku)})
        return {"line_id": lid, "session_id": sid, "event_id": eid, "sku": sku, "name": self.name(sku),
                "quantity": qty, "reasons": (reason or "").split(",") if reason else [],
                "review_state": state, "reviewed_by": by, "reviewed_at": fmt_ts(at), "after_receipt": bool(after),
                "session_state": s_state, "receipted": bool(receipt_n),
                "unit_id": unit, "shelf": shelf, "t_start": fmt_ts(t_start), "t_end": fmt_ts(t_end),
                "event": {"type": ev.get("type"), "plates": ev.get("plates"), "delta_g": ev.get("delta_g"),
                          "noise_g": ev.get("noise_g"), "confidence": ev.get("confidence"),
                          "misplaced": ev.get("misplaced", False), "arrangement": ev.get("arrangement"),
                          "plate_deltas": ev.get("plate_deltas"), "trace": ev.get("trace"),
                          "vision": ev.get("vision"), "weight_only": ev.get("weight_only")},
                "products": products,
                "shoppers": json.loads(cands) if cands else []}

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        return [{"id": i, "t": fmt_ts(t), "actor": who, "action": a, "target": tg,
                 "detail": json.loads(d) if d else None}
                for i, t, who, a, tg, d in self._q(
                    "SELECT id, t, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))]

    def restock_acks(self) -> dict[str, str]:
        """target ("unit/shelf/sku") → time of its latest restock acknowledgement."""
        return {tg: fmt_ts(t) or "" for tg, t in self._q(
            "SELECT target, MAX(t) FROM audit WHERE action='restock.ack' GROUP BY target")}

    def deadletters(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._q("SELECT id, t, reason, action, topic, detail, event_id, unit_id, session_id, payload"
                       " FROM deadletters ORDER BY t DESC LIMIT ?", (limit,))
        return [{"schema": "gondola.deadletter/1", "id": i, "t": fmt_ts(t), "reason": r, "action": a, "topic": tp,
                 "detail": d, "event_id": e, "unit_id": u, "session_id": s, "payload": p}
                for i, t, r, a, tp, d, e, u, s, p in rows]

    def units(self) -> list[dict[str, Any]]:
        try:
            marks = watermarks(self.store, self.cfg.receipts.unit_lag_s)
            rows = self.store.q("SELECT unit_id, status, max_seq, contiguous_seq FROM units ORDER BY unit_id")
        finally:
            self.store.end_read()
        out = []
        for u, status, mx, contig in rows:
            wm = marks[u].t if u in marks else None
            out.append({"unit_id": u, "status": status, "last_seq": mx, "contiguous_seq": contig,
                        "watermark": None if wm is None else ("inf" if wm == float("inf") else fmt_ts(wm))})
        return out

    def summary(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._q(sql)[0][0])
        return {"open_sessions": one("SELECT COUNT(*) FROM sessions WHERE state='open'"),
                "awaiting_receipt": one("SELECT COUNT(*) FROM sessions WHERE state='exited'"),
                "receipts": one("SELECT COUNT(*) FROM receipts WHERE n=1"),
                "corrections": one("SELECT COUNT(*) FROM receipts WHERE n>1"),
                "review_lines": one("SELECT COUNT(*) FROM lines WHERE review_state='open'"),
                "reviewed": one("SELECT COUNT(*) FROM lines WHERE reviewed_by IS NOT NULL"),
                "deadletters": one("SELECT COUNT(*) FROM deadletters"),
                "events": one("SELECT COUNT(*) FROM events")}
