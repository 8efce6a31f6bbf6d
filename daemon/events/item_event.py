"""Turn a weight change and its identification into the contract's item event (a plain dict).

``event_id`` and ``seq`` are not set here: the outbox assigns them in the same transaction that
stores the event, so they survive a crash together.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..signal.detector import WeightChange
from ..timefmt import rfc3339 as rfc3339  # re-exported: callers know it as item_event.rfc3339
from .identify import Hypothesis, Identification

SCHEMA = "gondola.item-event/1"


def build_event(store_id: str, unit_id: str, change: WeightChange, ident: Identification | None,
                review_below: float = 0.8, trace: dict[str, Any] | None = None) -> dict[str, Any]:
    """``trace``: the compact weight trace of the event's plates (:func:`make_trace`), added as
    the event's last field when given."""
    base = {
        "schema": SCHEMA,
        "store_id": store_id,
        "unit_id": unit_id,
        "shelf": change.shelf,
        "plates": list(change.plates),
        "t_start": rfc3339(change.t_start),
        "t_end": rfc3339(change.t_end),
        "delta_g": round(change.delta_g, 1),
        "noise_g": round(change.noise_g, 2),
        "plate_deltas": {str(k): v for k, v in change.plate_deltas.items()},
        "weight_only": True,
    }
    if change.kind == "unresolved" or ident is None or ident.best.sku is None:
        base.update(type="unknown_change", sku=None, quantity=0,
                    confidence=round(ident.best.score, 4) if ident else 0.0,
                    reason="no_rest" if change.kind == "unresolved" else "no_product_fits",
                    candidates=_cands(ident.candidates if ident else []))
        if trace is not None:
            base["trace"] = trace
        return base
    best = ident.best
    base.update(type="pick" if change.delta_g < 0 else "put_back", sku=best.sku,
                quantity=best.quantity, confidence=round(best.score, 4),
                candidates=_cands(ident.candidates), misplaced=best.misplaced)
    if best.arrangement:
        base["arrangement"] = best.arrangement
    if best.score < review_below:
        base["review"] = True
    if trace is not None:
        base["trace"] = trace
    return base


def make_trace(t0: float, dt_s: float, plates: Mapping[int, Sequence[float]]) -> dict[str, Any]:
    """The event's ``trace``: ``{"t0": RFC 3339 of the first point, "dt_s": spacing of the
    points, "plates": {"<plate>": [grams, ...]}}``, grams to 0.1 g, null where the plate had no
    data (a gap longer than the conditioner bridges)."""
    return {"t0": rfc3339(t0), "dt_s": round(dt_s, 6),
            "plates": {str(p): [None if math.isnan(v) else round(v, 1) + 0.0 for v in vals]
                       for p, vals in plates.items()}}


def _cands(hyps: list[Hypothesis]) -> list[dict[str, Any]]:
    return [{"sku": h.sku, "quantity": h.quantity, "score": round(h.score, 4)} for h in hyps]
