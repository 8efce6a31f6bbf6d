"""Vision joins weight: tempered camera log-likelihoods in the product of likelihoods.

``identify.py`` scores every (SKU, quantity) hypothesis as planogram prior × unit-weight
likelihood; the camera adds, per hypothesis,

    τ · max(log p_product(sku), log floor)  +  τ · max(log p_action(type), log 0.05)

and to the "none of these" hypothesis τ · max(log p_action(no_change), log 0.05) plus the product
model's neutral (uniform) score.

Why tempered: a camera model is trained on other pictures than this shelf's and is over-confident
when wrong; the weight is physics. With τ < 1 and a floor, the camera can move a hypothesis by
at most τ·ln(1/floor) nats (defaults τ = 0.9, floor = 1e-5: 10.4 nats). That is enough to beat
the planogram's prior against a product that belongs elsewhere (ln(1/0.003) = 5.8 nats: a
misplaced return of a product that weighs the same as the plate's own), plus the put-back prior
for something just picked here (ln 8 = 2.1 nats: a swap), and to decide between equal-weight
products; but a product whose weight is more than ≈ 4.6 σ from the change (−½·4.6² = −10.4 nats)
can never win, however sure the camera is.

A SKU the product model does not know (not enrolled in the gallery) gets the model's uniform
score, so enrolling some products does not penalise the others.
"""
from __future__ import annotations

import math
from typing import Any

from ..vision.engine import VisionResult

ACTION_FOR_TYPE = {"pick": ("pick", "swap"), "put_back": ("put_back", "swap")}
# The action model may doubt that anything moved, but a net weight change is physics: its term
# has its own, higher floor, so at most τ·ln(1/0.05) ≈ 2.4 nats — it can lower an event's
# confidence, never turn a clear weight change into "none of these".
ACTION_FLOOR = 0.05


class VisionEvidence:
    """An ``identify.Evidence``: log-likelihood of (sku, quantity) from one VisionResult."""

    def __init__(self, result: VisionResult, delta_g: float, tau: float = 0.9, floor: float = 1e-5):
        self.result = result
        self.tau = tau
        self.log_floor = math.log(floor)
        skus = result.skus or {}
        self._sku_ll = {s: self._ll(p) for s, p in skus.items()}
        self._unknown_ll = self._ll(1.0 / len(skus)) if skus else 0.0
        act = result.action or {}
        typ = "pick" if delta_g < 0 else "put_back"
        af = math.log(ACTION_FLOOR)
        self._move_ll = self._ll(sum(act.get(a, 0.0) for a in ACTION_FOR_TYPE[typ]), af) if act else 0.0
        self._none_ll = self._ll(act.get("no_change", 0.0), af) if act else 0.0

    def _ll(self, p: float, log_floor: float | None = None) -> float:
        lf = self.log_floor if log_floor is None else log_floor
        return self.tau * max(math.log(p) if p > 0 else -math.inf, lf)

    def __call__(self, sku: str | None, quantity: int) -> float:
        if sku is None:
            # "none of these": the product model has no opinion on unknown products (neutral)
            return self._none_ll + self._unknown_ll
        return self._move_ll + self._sku_ll.get(sku, self._unknown_ll)


def vision_block(result: VisionResult, top: int = 3) -> dict[str, Any]:
    """The event's ``vision`` field: conclusions only, never pixels."""
    block: dict[str, Any] = {"status": result.status}
    if result.reason:
        block["reason"] = result.reason
    if action := result.action:
        block["action"] = max(action, key=lambda a: action[a])
        block["action_scores"] = {k: round(v, 4) for k, v in action.items()}
    if result.skus:
        ranked = sorted(result.skus.items(), key=lambda kv: -kv[1])[:top]
        block["skus"] = [{"sku": s, "score": round(p, 4)} for s, p in ranked]
    if result.models:
        block["models"] = dict(result.models)
    if result.status == "ok":
        block["ms"] = result.ms
    if result.flags:
        block["flags"] = list(result.flags)
    return block
