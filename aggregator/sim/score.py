"""Receipts against what the shoppers really took: precision, recall and F1 per line item.

A line item is (shopper, product, quantity), the AutoCheckout competition's measure: a receipt
line counts as right only when the product *and* the quantity match a line of that shopper's true
cart. The latest receipt of a session (a correction replaces the cart) is the one scored; a
session without a receipt contributes only misses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import Plan

NOTHING_TO_SCORE = "nothing to score"


def ratio_text(num: int | float, den: int | float, digits: int = 3) -> str:
    """``num / den`` for people; a ratio over nothing is no score: "—"."""
    return f"{num / den:.{digits}f}" if den else "—"


def prf_text(tp: int, fp: int, fn: int, digits: int = 3) -> str:
    """"precision 0.900  recall 0.750  F1 0.818" for people, or "nothing to score" when there
    was nothing to find and nothing was found (a perfect 1.000 over zero items says nothing)."""
    if tp + fp + fn == 0:
        return NOTHING_TO_SCORE
    return (f"precision {ratio_text(tp, tp + fp, digits)}  recall {ratio_text(tp, tp + fn, digits)}  "
            f"F1 {ratio_text(2 * tp, 2 * tp + fp + fn, digits)}")


def final_receipts(receipts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest receipt document per session (largest ``n``)."""
    out: dict[str, dict[str, Any]] = {}
    for r in receipts:
        sid = r.get("session_id")
        if sid is None:
            continue
        if sid not in out or int(r.get("n", 1)) > int(out[sid].get("n", 1)):
            out[sid] = r
    return out


def receipt_cart(receipt: dict[str, Any]) -> dict[str, int]:
    cart: dict[str, int] = {}
    for line in receipt.get("lines", []):
        if line.get("sku") is None or int(line.get("quantity", 0)) <= 0:
            continue
        cart[line["sku"]] = cart.get(line["sku"], 0) + int(line["quantity"])
    return cart


class PRF:
    """Precision, recall and F1 from ``tp``, ``fp`` and ``fn`` (a mixin for the score classes)."""
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Score(PRF):
    tp: int = 0
    fp: int = 0
    fn: int = 0
    sessions: int = 0
    receipts: int = 0
    review_lines: int = 0
    corrections: int = 0
    incomplete: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No line item to find and none on a receipt: precision, recall and F1 mean nothing."""
        return self.tp + self.fp + self.fn == 0

    def text(self) -> str:
        """The line-item score for people (``prf_text``): "nothing to score" over zero items."""
        return prf_text(self.tp, self.fp, self.fn)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "sessions": self.sessions,
                "receipts": self.receipts, "corrections": self.corrections, "incomplete": self.incomplete,
                "review_lines": self.review_lines}


def score(truth: dict[str, dict[str, int]], receipts: list[dict[str, Any]]) -> Score:
    final = final_receipts(receipts)
    s = Score(sessions=len(truth), receipts=len(final))
    s.corrections = sum(1 for r in receipts if r.get("kind") == "correction")
    for sid, want in truth.items():
        r = final.get(sid)
        got = receipt_cart(r) if r else {}
        if r:
            s.review_lines += sum(1 for ln in r.get("lines", []) if ln.get("needs_review"))
            s.incomplete += 0 if r.get("complete", True) else 1
        for sku in sorted(set(want) | set(got)):
            w, g = want.get(sku, 0), got.get(sku, 0)
            if w and g and w == g:
                s.tp += 1
                continue
            if g:
                s.fp += 1
            if w:
                s.fn += 1
            s.errors.append({"session_id": sid, "sku": sku, "true_qty": w, "receipt_qty": g,
                             "receipt": r.get("receipt_id") if r else None})
    # receipts for sessions that do not exist in the truth are all false
    for sid, r in final.items():
        if sid not in truth:
            n = len(receipt_cart(r))
            s.fp += n
    return s


def _epoch(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def shelf_events(plan: Plan, events: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The units' item events against the planned interactions (diagnosis: was a wrong receipt
    line a shelf's mistake or the association's?). Each planned pick/put-back is matched to the
    first unused event of its unit and shelf whose span overlaps the touch (±1 s)."""
    evs = sorted((e for e in events), key=lambda e: e.get("seq", 0))
    by_shelf: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in evs:
        by_shelf.setdefault((e["unit_id"], e["shelf"]), []).append(e)
    used: set[str] = set()
    matches: dict[str, str] = {}  # event_id → the planned interaction it is
    found = right = 0
    wrong: list[dict[str, Any]] = []
    real = [i for i in plan.interactions if i.type in ("pick", "put_back")]
    for i in real:
        a, b = t0 + i.t - 1.0, t0 + i.t + i.dur + 3.0
        match = None
        for e in by_shelf.get((i.unit_id, i.shelf), []):
            if e["event_id"] in used:
                continue
            if _epoch(e["t_start"]) <= b and _epoch(e["t_end"]) >= a:
                match = e
                break
        if match is None:
            wrong.append({"interaction": i.id, "problem": "missed", "type": i.type, "sku": i.sku})
            continue
        used.add(match["event_id"])
        matches[match["event_id"]] = i.id
        found += 1
        if match["type"] == i.type and match["sku"] == i.sku and match["quantity"] == i.quantity:
            right += 1
        else:
            wrong.append({"interaction": i.id, "problem": "wrong", "planned": [i.type, i.sku, i.quantity],
                          "event": [match["type"], match["sku"], match["quantity"]], "wrong_place": i.wrong_place})
    extra = [e for e in evs if e["event_id"] not in used]
    return {
        "planned": len(real),
        "found": found,
        "right": right,
        "phantoms": len(extra),
        "accuracy": round(right / len(real), 4) if real else 1.0,
        "errors": wrong,
        "phantom_events": [[e["unit_id"], e["shelf"], e["type"], e["sku"], e["quantity"], e["t_start"]] for e in extra],
        "matches": matches,
    }


def tracking_evidence(plan: Plan, batches_: list[tuple[float, list[dict[str, Any]]]],
                      tol_s: float = 2.0) -> dict[str, Any]:
    """How often the tracking alone points at the right shopper for each planned touch, by two
    rules over the window [touch - tol, touch end + ring-down + tol] at its (unit, shelf) (shelf
    unknown at half weight): the highest single confidence (``max``) and the highest summed
    confidence (``sum``, i.e. presence over time). A ceiling for any association that trusts
    tracking, independent of cartd; under identity swaps ``sum`` is the sturdier rule."""
    from collections import defaultdict
    idx: dict[tuple[str, str | None], list[tuple[float, str, float]]] = defaultdict(list)
    for t, obs in batches_:
        for o in obs:
            idx[(o["unit_id"], o["shelf"])].append((t, o["session_id"], o["confidence"]))
    right = {"max": 0, "sum": 0}
    n = 0
    for i in plan.interactions:
        if i.type not in ("pick", "put_back"):
            continue
        n += 1
        a, z = i.t - 0.3 - tol_s, i.t + i.dur + 0.9 + tol_s
        mx: dict[str, float] = defaultdict(float)
        sm: dict[str, float] = defaultdict(float)
        for key, w in (((i.unit_id, i.shelf), 1.0), ((i.unit_id, None), 0.5)):
            for t, sid, c in idx.get(key, ()):
                if a <= t <= z:
                    mx[sid] = max(mx[sid], w * c)
                    sm[sid] += w * c
        for rule, d in (("max", mx), ("sum", sm)):
            if d and max(d, key=d.__getitem__) == i.session_id:
                right[rule] += 1
    return {"touches": n, **{f"right_by_{k}": v for k, v in right.items()},
            **{f"share_by_{k}": round(v / n, 4) if n else 1.0 for k, v in right.items()}}


def association_replay(plan: Plan, batches_: list[tuple[float, list[dict[str, Any]]]], rule: str = "presence",
                       tol_s: float = 1.0, min_confidence: float = 0.5, ambiguity_margin: float = 0.2,
                       not_holding_factor: float = 0.2, before_s: float = 0.0, after_s: float = 0.0) -> dict[str, Any]:
    """cartd's association (aggregator/associate.py) replayed offline on the planned touches, with
    carts built as it goes (the put-back rule needs them): events are the touches as the units
    report them (measured: t_start ≈ touch, t_end ≈ touch end + 0.45 s; widened like cartd by
    ``tol_s`` and the presence context ``before_s``/``after_s``),
    candidates are sessions inside the store then. ``rule``: ``presence`` (cartd's) or ``max``
    (the rule before: highest single confidence). Returns right shopper per touch, line-item F1 of
    the resulting carts against the truth, and how many lines would be flagged for review."""
    from collections import defaultdict

    from aggregator.associate import Presence, Sighting, decide, presence

    idx: dict[tuple[str, str], list[tuple[float, str, float]]] = defaultdict(list)
    for t, obs in batches_:
        for o in obs:
            idx[(o["unit_id"], o["shelf"] or "")].append((t, o["session_id"], o["confidence"]))
    spans = {s.session_id: (s.t_entry, s.t_exit) for s in plan.sessions}
    touches = sorted((i for i in plan.interactions if i.type in ("pick", "put_back")), key=lambda i: i.t + i.dur)
    carts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    right = n_review = 0
    for i in touches:
        sku = i.sku
        assert sku is not None  # make_plan names the product of every pick and put-back
        lo, hi = i.t - tol_s - before_s, i.t + i.dur + 0.45 + tol_s + after_s
        seen = [Sighting(sid, sh, t, c)
                for sh in (i.shelf, "") for t, sid, c in idx.get((i.unit_id, sh), ()) if lo <= t <= hi]
        seen = [o for o in seen if spans[o[0]][0] <= hi and spans[o[0]][1] >= lo]
        ev = presence(seen, i.shelf)
        if rule == "max":  # the old rule: a candidate's score is its best single sighting
            ev = {sid: Presence(p.peak, p.peak, 1) for sid, p in ev.items()}
        if not ev:
            inside = [s for s, (a, b) in spans.items() if a <= hi and b >= lo]
            if len(inside) != 1:
                continue  # cartd dead-letters it (no_session)
            ev = {inside[0]: Presence(1.0, 1.0, 1)}
        put_back = i.type == "put_back"
        holding = {sid: carts[sid][sku] for sid in ev} if put_back else None
        holding_for_decide: dict[str, int] | None
        if rule == "max" and holding is not None and len(ev) > 1:  # a put-back
            ev = {sid: Presence(p.evidence * (not_holding_factor if holding[sid] <= 0 else 1), p.peak, 1)
                  for sid, p in ev.items()}
            holding_for_decide = {sid: 1 for sid in ev}  # factor applied already
        else:
            holding_for_decide = holding
        d = decide(ev, put_back=put_back, holding=holding_for_decide, quantity=i.quantity,
                   min_confidence=min_confidence, ambiguity_margin=ambiguity_margin,
                   not_holding_factor=not_holding_factor)
        if rule == "max" and d is not None:  # old margin: raw confidences, not shares
            r = sorted(ev.values(), key=lambda p: -p.evidence)
            d.reasons = [x for x in d.reasons if x != "ambiguous"]
            if len(r) > 1 and r[0].evidence - r[1].evidence < ambiguity_margin:
                d.reasons.append("ambiguous")
        if d is None:
            continue
        right += d.session_id == i.session_id
        carts[d.session_id][sku] += i.quantity if i.type == "pick" else -i.quantity
        if d.reasons:
            n_review += 1
    truth = plan.truth()
    receipts = [{"session_id": sid, "n": 1, "lines": [{"sku": k, "quantity": q} for k, q in c.items()]}
                for sid, c in carts.items()]
    s = score(truth, receipts)
    return {"rule": rule, "touches": len(touches), "right": right, "f1": round(s.f1, 4),
            "precision": round(s.precision, 4), "recall": round(s.recall, 4), "review": n_review}
