"""Which product, how many: a product of likelihoods over (SKU, quantity) hypotheses.

score(sku, q) ∝ prior_planogram(sku | plates) · prior_quantity(q) · N(|Δ|; q·μ, q·σ_u² + σ_Δ²)
                · Π other_evidence(sku, q)   (camera scores join here later, tempered)

- The planogram prior says a SKU is much more likely on the plates it is planogrammed on, less on
  its neighbours, and possible anywhere in the unit only for a put-back (a misplaced item).
- The unit-weight spread grows with quantity (each unit varies on its own), so 3 × 200 g is not
  confused with 600 g of one 600 g product unless the weights really overlap.
- A flat "none of these" hypothesis competes with the products: a change that fits nothing is
  published as ``unknown_change`` with its Δ, instead of being forced onto the nearest SKU.
Everything is computed in log space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..layout import Layout, Placement

# log prior weights of where a SKU sits relative to the moved plates
ON_PLATE, SAME_SHELF, ELSEWHERE = 0.0, math.log(0.03), math.log(0.003)
NONE_OF_THESE = math.log(0.02)


class Evidence(Protocol):
    """Extra evidence (e.g. camera): log-likelihood of (sku, quantity) for this change."""

    def __call__(self, sku: str | None, quantity: int) -> float: ...


@dataclass
class Hypothesis:
    sku: str | None
    quantity: int
    log_score: float
    misplaced: bool = False
    score: float = 0.0


@dataclass
class Identification:
    best: Hypothesis
    candidates: list[Hypothesis] = field(default_factory=list)  # runners-up, best first

    @property
    def confidence(self) -> float:
        return self.best.score


def _log_normal(x: float, mu: float, sd: float) -> float:
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))


class Identifier:
    def __init__(self, layout: Layout, max_quantity: int = 12, quantity_decay: float = 0.35,
                 capacity_g: float = 20000.0):
        self.layout = layout
        self.max_q = max_quantity
        self.q_decay = quantity_decay
        self.log_flat = -math.log(capacity_g)
        self._skus: dict[str, Placement] = layout.skus

    def identify(self, shelf: str, plates: list[int], delta_g: float, noise_g: float,
                 evidence: list[Evidence] | None = None) -> Identification:
        put_back = delta_g > 0
        mag = abs(delta_g)
        moved = set(plates)
        hyps: list[Hypothesis] = []
        for sku, fc in self._skus.items():
            where = self._where(sku, shelf, moved)
            if where is None:
                continue  # a pick of a product that is not on this shelf cannot happen
            prior, misplaced = where
            if misplaced and not put_back:
                # taking a misplaced unit happens, but far less often than putting one back wrong
                prior += math.log(0.1)
            mu, sd_u = fc.unit_weight_g, fc.unit_weight_sd_g
            # only quantities whose total weight is near the change are worth scoring
            q_hi = min(self.max_q, int(mag / mu + 3 * max(1.0, sd_u / mu * mag / mu)) + 1)
            q_lo = max(1, int((mag - 4 * sd_u * math.sqrt(max(1.0, mag / mu)) - 4 * noise_g) / mu))
            for q in range(q_lo, q_hi + 1):
                sd = math.sqrt(q * sd_u ** 2 + noise_g ** 2 + (0.002 * mag) ** 2)
                ls = prior - self.q_decay * (q - 1) + _log_normal(mag, q * mu, sd)
                for ev in evidence or ():
                    ls += ev(sku, q)
                hyps.append(Hypothesis(sku, q, ls, misplaced))
        none_ls = NONE_OF_THESE + self.log_flat
        for ev in evidence or ():
            ls_none = ev(None, 0)
            none_ls += ls_none
        hyps.append(Hypothesis(None, 0, none_ls))
        m = max(h.log_score for h in hyps)
        z = sum(math.exp(h.log_score - m) for h in hyps)
        for h in hyps:
            h.score = math.exp(h.log_score - m) / z
        hyps.sort(key=lambda h: h.score, reverse=True)
        return Identification(hyps[0], [h for h in hyps[1:4] if h.score >= 1e-4])

    def _where(self, sku: str, shelf: str, moved: set[int]) -> tuple[float, bool] | None:
        """(log prior, misplaced) of ``sku`` for a change on ``moved`` plates of ``shelf``."""
        best: tuple[float, bool] | None = None
        for fc in self.layout.placements:
            if fc.sku != sku:
                continue
            if fc.shelf == shelf and moved & set(fc.plates):
                return ON_PLATE, False
            if fc.shelf == shelf:
                near = min(abs(a - b) for a in fc.plates for b in moved) <= 1
                cand = (SAME_SHELF if near else ELSEWHERE, True)
            else:
                cand = (ELSEWHERE, True)
            if best is None or cand[0] > best[0]:
                best = cand
        return best
