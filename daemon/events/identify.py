"""Which product, how many: a product of likelihoods over (SKU, quantity) hypotheses.

score(sku, q) ∝ prior_planogram(sku | plates) · prior_quantity(q) · N(|Δ|; q·μ, q·σ_u² + σ_Δ²)
                · Π other_evidence(sku, q)   (camera scores join here later, tempered)

- The planogram prior says a SKU is much more likely on the plates it is planogrammed on, less on
  its neighbours, and possible anywhere in the unit only for a put-back (a misplaced item).
- The unit-weight spread grows with quantity (each unit varies on its own), so 3 × 200 g is not
  confused with 600 g of one 600 g product unless the weights really overlap.
- A flat "none of these" hypothesis competes with the products: a change that fits nothing is
  published as ``unknown_change`` with its Δ, instead of being forced onto the nearest SKU.
- Per plate, not only in total: a product on its facing explains the Δ of the facing's plates;
  what the other moved plates show must then be flex residue (a few grams), so a 13 g residue on
  the plate next to a 50 g candy bar does not turn it into a 37 g candy bar of the neighbour.
- Memory of this unit's recent picks: a put-back is most often something just taken, so a
  product picked here in the last minutes (and not yet returned) is a likelier put-back, at that
  quantity, than five units of a light product that happen to weigh the same.
Everything is computed in log space.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..layout import Layout, Placement

# log prior weights of where a SKU sits relative to the moved plates
ON_PLATE, SAME_SHELF, ELSEWHERE = 0.0, math.log(0.03), math.log(0.003)
NONE_OF_THESE = math.log(0.02)
# Put-backs: what comes back is mostly what was just taken here (in the sim, all of it; in a
# store, most of it), and about one return in six or seven goes to the wrong place. So a product
# in a shopper's hand (picked here, not yet returned) is 20× likelier to be what comes back, and
# a wrong place is judged on that footing rather than as the rare event a misplaced *pick* is.
RECENT_PICK_BONUS = math.log(20.0)
PUT_BACK_SAME_SHELF, PUT_BACK_ELSEWHERE = math.log(0.075), math.log(0.015)
RECENT_WINDOW_S = 20 * 60.0
FLEX_SD_G = 3.0                    # residue on a moved plate that the item is not on
# a measured Δ is never better than about a gram: load-cell creep and hysteresis after a hand's
# push, and the level of a plate read through low-frequency noise, outlast the settle window
DELTA_FLOOR_G = 1.0
STRADDLE = math.log(0.1)           # an item lying over its facing's edge onto the next plate


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
        # (time, sku, quantity) of this unit's picks not yet matched by a put-back
        self._picked: deque[list] = deque()

    def observe(self, event: dict, now: float | None = None) -> None:
        """Remember picks (and cancel them with put-backs) for the put-back prior."""
        now = time.time() if now is None else now
        sku, q = event.get("sku"), int(event.get("quantity") or 0)
        if sku is None or q <= 0:
            return
        if event.get("type") == "pick":
            self._picked.append([now, sku, q])
        elif event.get("type") == "put_back":
            for entry in reversed(self._picked):
                if entry[1] == sku and q > 0:
                    take = min(q, entry[2])
                    entry[2] -= take
                    q -= take
            while self._picked and self._picked[0][2] <= 0:
                self._picked.popleft()

    def outstanding(self, now: float) -> dict[str, int]:
        while self._picked and now - self._picked[0][0] > RECENT_WINDOW_S:
            self._picked.popleft()
        out: dict[str, int] = {}
        for _, sku, q in self._picked:
            if q > 0:
                out[sku] = out.get(sku, 0) + q
        return out

    def identify(self, shelf: str, plates: list[int], delta_g: float, noise_g: float,
                 evidence: list[Evidence] | None = None, *,
                 plate_deltas: dict[int, float] | None = None, now: float | None = None) -> Identification:
        put_back = delta_g > 0
        sign = 1.0 if put_back else -1.0
        moved = set(plates)
        outstanding = self.outstanding(time.time() if now is None else now) if put_back else {}
        hyps: list[Hypothesis] = []
        for sku, fc in self._skus.items():
            where = self._where(sku, shelf, moved)
            if where is None:
                continue  # a pick of a product that is not on this shelf cannot happen
            prior, misplaced = where
            if misplaced and not put_back:
                # taking a misplaced unit happens, but far less often than putting one back wrong
                prior += math.log(0.1)
            elif misplaced:
                prior = PUT_BACK_SAME_SHELF if prior == SAME_SHELF else PUT_BACK_ELSEWHERE
            readings = [(x * sign, r) for x, r in self._splits(sku, shelf, plate_deltas, misplaced, delta_g, sign)
                        if x * sign > 0]  # its own plates moving the other way: not this product
            if not readings:
                continue
            mu, sd_u = fc.unit_weight_g, fc.unit_weight_sd_g
            n_out = outstanding.get(sku, 0)
            q_ranges = []
            for mag, _ in readings:
                # only quantities whose total weight is near the change are worth scoring
                q_hi = min(self.max_q, int(mag / mu + 3 * max(1.0, sd_u / mu * mag / mu)) + 1)
                q_lo = max(1, int((mag - 4 * sd_u * math.sqrt(max(1.0, mag / mu)) - 4 * noise_g) / mu))
                q_ranges.append((q_lo, q_hi))
            for q in range(min(a for a, _ in q_ranges), max(b for _, b in q_ranges) + 1):
                ls = -math.inf
                for mag, resid in readings:
                    sd = math.sqrt(q * sd_u ** 2 + noise_g ** 2 + DELTA_FLOOR_G ** 2 + (0.002 * mag) ** 2)
                    ls = max(ls, _log_normal(mag, q * mu, sd) + resid)
                ls += prior - self.q_decay * (q - 1)
                if q <= n_out:
                    ls += RECENT_PICK_BONUS
                elif put_back:
                    # several units coming back that nobody took from here: a restock, rarer still
                    ls -= self.q_decay * (q - 1 - n_out if n_out else q - 1)
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

    def _splits(self, sku: str, shelf: str, plate_deltas: dict[int, float] | None, misplaced: bool,
                delta_g: float, sign: float) -> list[tuple[float, float]]:
        """Readings of the change for this product: [(Δ the item accounts for, log-penalty)].

        On its facing, the item accounts for the facing's plates; a misplaced item for the moved
        plates that went the change's way. Whatever else moved must be flex residue around zero.
        An item may also straddle its facing's edge onto the next plate (planograms are not that
        exact): that reading costs a little prior; the hypothesis keeps the better reading.
        """
        if not plate_deltas or len(plate_deltas) < 2:
            return [(delta_g, 0.0)]
        same_way = {p for p, d in plate_deltas.items() if d * sign > 0}
        if misplaced:
            return [self._explain(plate_deltas, same_way, delta_g)]
        facing = {p for fc in self.layout.placements if fc.sku == sku and fc.shelf == shelf
                  for p in fc.plates} & set(plate_deltas)
        out = [self._explain(plate_deltas, facing, delta_g)]
        # a real straddle puts a real share on the next plate; a hand's flex residue is a few grams
        edge = {p for p in same_way - facing if any(abs(p - f) == 1 for f in facing)
                and abs(plate_deltas[p]) >= max(6.0, 0.2 * abs(delta_g))}
        if edge:
            x, r = self._explain(plate_deltas, facing | edge, delta_g)
            out.append((x, r + STRADDLE))
        return out

    @staticmethod
    def _explain(plate_deltas: dict[int, float], own: set[int], delta_g: float) -> tuple[float, float]:
        x = sum(d for p, d in plate_deltas.items() if p in own)
        sd = math.sqrt(FLEX_SD_G ** 2 + (0.03 * abs(delta_g)) ** 2)
        resid = sum(-0.5 * (d / sd) ** 2 for p, d in plate_deltas.items() if p not in own)
        return x, resid

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
