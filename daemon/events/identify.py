"""Which product, how many: a product of likelihoods over (SKU, quantity) hypotheses.

score(sku, q) ∝ prior_planogram(sku | plates) · prior_quantity(q) · N(|Δ|; q·μ, q·σ_u² + σ_Δ²)
                · Π other_evidence(sku, q)   (camera scores join here later, tempered)

- The planogram prior says a SKU is much more likely on the plates it is planogrammed on, less on
  its neighbours, and possible anywhere in the unit only for a put-back (a misplaced item).
- The unit-weight spread grows with quantity (each unit varies on its own), so 3 × 200 g is not
  confused with 600 g of one 600 g product unless the weights really overlap.
- A flat "none of these" hypothesis competes with the products: a change that fits nothing is
  published as ``unknown_change`` with its Δ, instead of being forced onto the nearest SKU.
- Arrangement first: where the weight left names the product before its weight does. A product
  on its facing explains the Δ of the facing's plates; what the other moved plates show must then
  be flex residue (a few grams), so a 13 g residue on the plate next to a 50 g candy bar does not
  turn it into a 37 g candy bar of the neighbour. An item may lie over its facing's edge onto the
  next plate, but most of it rests on its own facing: a straddle reading costs a little prior, and
  a reading whose own facing carries less than half of the item costs a steep share penalty. So of
  two near-twins side by side, the one whose plates lost most of the weight wins.
- A product whose facing did not move at all cannot be a pick when some product's facing did
  (a misplaced unit is taken only when nothing planogrammed there explains the change, when the
  camera says so, or when a misplaced return was seen on those plates: a known stray).
- Weight decides the quantity and separates products that really differ. Its uncertainty is
  realistic: one unit's spread, plus the uncertainty of the mean unit weight itself (a catalogue
  value is good to a few percent; ``unit_weights.WeightBook`` learns it from confident events).
- Memory of this unit's recent picks: a put-back is most often something just taken, so a
  product picked here in the last minutes (and not yet returned) is a likelier put-back, at that
  quantity, than five units of a light product that happen to weigh the same.
Everything is computed in log space.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..layout import Layout, Placement
from .unit_weights import CATALOGUE_SD, WeightBook

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
STRADDLE = math.log(0.15)          # an item lying over its facing's edge onto the next plate
# an item's centre lies on its own facing: below half of it there, each 10 % less costs ½ nat·k²
OWN_SHARE_MIN, OWN_SHARE_SCALE = 0.5, 0.1
# a known stray (a misplaced return seen on these plates) is taken back about as often as not
STRAY_PRIOR = math.log(0.5)
STRAY_WINDOW_S = 4 * 3600.0


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
    measured_g: float = 0.0              # |Δ| this hypothesis says the item(s) account for
    arrangement: str = ""                # facing | straddle | stray | misplaced | none


@dataclass
class Identification:
    best: Hypothesis
    candidates: list[Hypothesis] = field(default_factory=list)  # runners-up, best first

    @property
    def confidence(self) -> float:
        return self.best.score


def _log_normal(x: float, mu: float, sd: float) -> float:
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))


class _Reading(NamedTuple):
    """One way a product could account for a change: the magnitude its plates show, the
    log-likelihood of how it lies (arrangement prior, shares, flex residue on the other plates),
    the arrangement's name, and the most units it can be."""
    mag: float
    ll: float
    how: str
    max_q: int


@dataclass
class _Held:
    """Units of a SKU in a shopper's hand (picked here, not yet back), or left on plates that
    are not its own (a known stray), and when that was last seen."""
    t: float
    sku: str
    units: int


class KnownStray(NamedTuple):
    """Units of a SKU believed to lie on plates that are not its own (misplaced returns seen
    there, not yet taken back), and the data time they were last seen put there."""
    sku: str
    shelf: str
    plates: tuple[int, ...]
    units: int
    t: float


class Identifier:
    def __init__(self, layout: Layout, max_quantity: int = 12, quantity_decay: float = 0.35,
                 capacity_g: float = 20000.0, weights: WeightBook | None = None):
        self.layout = layout
        self.max_q = max_quantity
        self.q_decay = quantity_decay
        self.log_flat = -math.log(capacity_g)
        self._skus: dict[str, Placement] = layout.skus
        self.weights = weights if weights is not None else book_for(layout)
        # this unit's picks not yet matched by a put-back
        self._picked: deque[_Held] = deque()
        self._now = 0.0   # latest data time seen (when a caller gives none)
        # known strays: (shelf, plate) → {sku: units and when} from misplaced returns seen there
        self._strays: dict[tuple[str, int], dict[str, _Held]] = {}
        self._facings: dict[str, list[tuple[str, frozenset[int]]]] = {}
        for fc in layout.placements:
            self._facings.setdefault(fc.sku, []).append((fc.shelf, frozenset(fc.plates)))

    def observe(self, event: dict[str, Any], now: float | None = None) -> None:
        """Remember picks (and cancel them with put-backs) for the put-back prior, and misplaced
        returns as known strays on their plates."""
        now = self._now if now is None else now
        self._now = max(self._now, now)
        sku, q = event.get("sku"), int(event.get("quantity") or 0)
        if sku is None or q <= 0:
            return
        keys = [(str(event.get("shelf")), int(p)) for p in event.get("plates") or ()]
        if event.get("type") == "pick":
            self._picked.append(_Held(now, sku, q))
            for k in keys:   # a stray taken back off these plates
                st = self._strays.get(k, {}).get(sku)
                if st is not None:
                    st.units -= q
                    if st.units <= 0:
                        del self._strays[k][sku]
        elif event.get("type") == "put_back":
            if event.get("misplaced"):
                for k in keys:
                    st = self._strays.setdefault(k, {}).setdefault(sku, _Held(now, sku, 0))
                    st.units += q
                    st.t = now
            for entry in reversed(self._picked):
                if entry.sku == sku and q > 0:
                    take = min(q, entry.units)
                    entry.units -= take
                    q -= take
            while self._picked and self._picked[0].units <= 0:
                self._picked.popleft()

    def outstanding(self, now: float) -> dict[str, int]:
        while self._picked and now - self._picked[0].t > RECENT_WINDOW_S:
            self._picked.popleft()
        out: dict[str, int] = {}
        for held in self._picked:
            if held.units > 0:
                out[held.sku] = out.get(held.sku, 0) + held.units
        return out

    def _stray_plates(self, sku: str, shelf: str, now: float) -> tuple[frozenset[int], int]:
        """Plates of ``shelf`` where units of ``sku`` were put back misplaced, and how many."""
        hits = {p: d[sku].units for (sh, p), d in self._strays.items() if sh == shelf and sku in d
                and d[sku].units > 0 and now - d[sku].t <= STRAY_WINDOW_S}
        return frozenset(hits), max(hits.values(), default=0)

    def known_strays(self, now: float | None = None) -> list[KnownStray]:
        """The known strays identification counts on at data time ``now`` (default: the latest
        seen): per SKU and run of adjacent plates of a shelf, the most units left on any one of
        them (an item lying over two plates is one unit, as when it is taken back). Read-only;
        sorted by shelf, first plate and SKU."""
        now = self._now if now is None else now
        by: dict[tuple[str, str], dict[int, _Held]] = {}
        for (shelf, plate), d in self._strays.items():
            for sku, held in d.items():
                if held.units > 0 and now - held.t <= STRAY_WINDOW_S:
                    by.setdefault((shelf, sku), {})[plate] = held
        out: list[KnownStray] = []
        for (shelf, sku), plates in by.items():
            runs: list[list[int]] = []
            for p in sorted(plates):
                if runs and p == runs[-1][-1] + 1:
                    runs[-1].append(p)
                else:
                    runs.append([p])
            out.extend(KnownStray(sku, shelf, tuple(run), max(plates[q].units for q in run),
                                  max(plates[q].t for q in run)) for run in runs)
        out.sort(key=lambda s: (s.shelf, s.plates, s.sku))
        return out

    def identify(self, shelf: str, plates: list[int], delta_g: float, noise_g: float,
                 evidence: list[Evidence] | None = None, *,
                 plate_deltas: dict[int, float] | None = None, now: float | None = None) -> Identification:
        # data time, never the wall clock: the same samples must give the same answer
        now = self._now if now is None else now
        self._now = max(self._now, now)
        put_back = delta_g > 0
        sign = 1.0 if put_back else -1.0
        deltas = {int(k): float(v) for k, v in (plate_deltas or {}).items()} or \
            {p: delta_g / max(1, len(plates)) for p in plates}
        moved = set(deltas)
        outstanding = self.outstanding(now) if put_back else {}
        hyps: list[Hypothesis] = []
        # 1. products on their own facing (or a known stray on these plates): where it left
        placed: dict[str, list[_Reading]] = {}
        for sku, facings in self._facings.items():
            readings: list[_Reading] = []
            for sh, facing in facings:
                if sh == shelf and facing & moved:
                    readings += self._arrangements(deltas, facing, sign, delta_g)
            stray, n_stray = self._stray_plates(sku, shelf, now)
            stray &= moved
            if stray and not put_back:
                x, r = self._explain(deltas, stray, sign, delta_g)
                # no more units can be taken back than were put there
                readings.append(_Reading(x, r - _spread(stray, deltas, sign, x) + STRAY_PRIOR, "stray", n_stray))
            readings = [rd for rd in readings if rd.mag > 0]
            if readings:
                placed[sku] = readings
        # 2. misplaced: a return to the wrong place is common; taking a unit from a facing that
        # is not its own is not, and never beats a product whose facing moved unless the camera
        # says so (its evidence is in the sum) or nothing planogrammed there explains the change
        # A misplaced item accounts for every plate that moved the change's way: one reading for
        # all SKUs, only its prior depends on where the SKU belongs.
        same_way = {p for p, d in deltas.items() if d * sign > 0}
        x_m, r_m = self._explain(deltas, same_way, sign, delta_g)
        r_m -= _spread(same_way, deltas, sign, x_m)
        if x_m > 0 and (put_back or not placed or evidence):
            for sku in self._facings:
                if sku in placed:
                    continue
                where = self._where(sku, shelf, moved)
                if where is None:
                    continue  # a pick of a product that is not on this shelf cannot happen
                if put_back:
                    prior = PUT_BACK_SAME_SHELF if where == SAME_SHELF else PUT_BACK_ELSEWHERE
                else:
                    prior = where + math.log(0.1)
                self._score(sku, [_Reading(x_m, r_m + prior, "misplaced", self.max_q)], noise_g, outstanding,
                            put_back, evidence, hyps, misplaced=True)
        for sku, readings in placed.items():
            self._score(sku, readings, noise_g, outstanding, put_back, evidence, hyps, misplaced=False)
        # "none of these": a change of unknown origin, flat in its total and spread any way over
        # the plates that moved (the same share densities the products pay)
        none_ls = NONE_OF_THESE + self.log_flat - max(0, len(deltas) - 1) * math.log(max(abs(delta_g), 1.0))
        for ev in evidence or ():
            none_ls += ev(None, 0)
        hyps.append(Hypothesis(None, 0, none_ls, arrangement="none"))
        m = max(h.log_score for h in hyps)
        z = sum(math.exp(h.log_score - m) for h in hyps)
        for h in hyps:
            h.score = math.exp(h.log_score - m) / z
        hyps.sort(key=lambda h: h.score, reverse=True)
        return Identification(hyps[0], [h for h in hyps[1:4] if h.score >= 1e-4])

    def _score(self, sku: str, readings: list[_Reading], noise_g: float,
               outstanding: dict[str, int], put_back: bool, evidence: list[Evidence] | None,
               hyps: list[Hypothesis], misplaced: bool) -> None:
        w = self.weights.get(sku)
        fc = self._skus[sku]
        mu = w.mean_g if w else fc.unit_weight_g
        sd_u = w.unit_sd_g if w else fc.unit_weight_sd_g
        sd_m = w.mean_sd_g if w else CATALOGUE_SD * mu
        n_out = outstanding.get(sku, 0)
        q_lo, q_hi = self.max_q, 1
        for mag, *_ in readings:
            spread = 4 * math.sqrt(max(1.0, mag / mu) * sd_u ** 2 + (mag / mu * sd_m) ** 2) + 4 * noise_g
            q_hi = max(q_hi, min(self.max_q, int((mag + spread) / mu) + 1))
            q_lo = min(q_lo, max(1, int((mag - spread) / mu)))
        for q in range(q_lo, q_hi + 1):
            best = (-math.inf, 0.0, "")
            for mag, resid, how, cap in readings:
                if q > cap:
                    continue
                sd = math.sqrt(q * sd_u ** 2 + (q * sd_m) ** 2 + noise_g ** 2 + DELTA_FLOOR_G ** 2
                               + (0.002 * mag) ** 2)
                ll = _log_normal(mag, q * mu, sd) + resid
                if ll > best[0]:
                    best = (ll, mag, how)
            if best[0] == -math.inf:
                continue
            ls = best[0] - self.q_decay * (q - 1)
            if q <= n_out:
                ls += RECENT_PICK_BONUS
            elif put_back:
                # several units coming back that nobody took from here: a restock, rarer still
                ls -= self.q_decay * (q - 1 - n_out if n_out else q - 1)
            for ev in evidence or ():
                ls += ev(sku, q)
            hyps.append(Hypothesis(sku, q, ls, misplaced, measured_g=best[1], arrangement=best[2]))

    def _arrangements(self, deltas: dict[int, float], facing: frozenset[int], sign: float,
                      delta_g: float) -> list[_Reading]:
        """Readings of a change for a product on ``facing``: [(magnitude it accounts for,
        log-likelihood of how it lies and of the rest as flex residue, name)].

        Wholly on its facing: the facing's plates moved by the item, the rest is flex residue.
        Over an edge: also the moved plate just outside each edge, at the straddle prior, and a
        share penalty when less than half of the item lies on its own facing.

        Every moved plate is accounted for by a density in grams, so arrangements with different
        plates compare fairly: a residue plate by the flex Gaussian, each plate an item spreads
        over beyond its first by the density of its share (uniform over the item's weight; over
        half of it for the part over an edge)."""
        own = {p for p in facing if p in deltas}
        out: list[_Reading] = []
        x, r = self._explain(deltas, own, sign, delta_g)
        out.append(_Reading(x, r - _spread(own, deltas, sign, x), "facing", self.max_q))
        lo, hi = min(facing), max(facing)
        edge = {p for p in (lo - 1, hi + 1) if p in deltas and deltas[p] * sign > 0}
        if edge and x > 0:
            x2, r2 = self._explain(deltas, own | edge, sign, delta_g)
            share = x / x2 if x2 > 0 else 0.0
            pen = STRADDLE - _spread(own, deltas, sign, x2) - len(edge) * math.log(0.5 * x2)
            if share < OWN_SHARE_MIN:
                pen -= 0.5 * ((OWN_SHARE_MIN - share) / OWN_SHARE_SCALE) ** 2
            out.append(_Reading(x2, r2 + pen, "straddle", self.max_q))
        return out

    @staticmethod
    def _explain(deltas: dict[int, float], own: set[int] | frozenset[int], sign: float,
                 delta_g: float) -> tuple[float, float]:
        """(magnitude on ``own`` in the change's direction, log-density of the rest as flex).

        A plate of ``own`` that went the other way is not the item's (taking an item never adds
        weight to its own plates): it is residue like any other."""
        mine = {p for p in own if deltas.get(p, 0.0) * sign > 0}
        x = sum(d for p, d in deltas.items() if p in mine) * sign
        sd = math.sqrt(FLEX_SD_G ** 2 + (0.03 * abs(delta_g)) ** 2)
        resid = sum(_log_normal(d, 0.0, sd) for p, d in deltas.items() if p not in mine)
        return x, resid

    def _where(self, sku: str, shelf: str, moved: set[int]) -> float | None:
        """Log prior of ``sku`` for a change on ``moved`` plates of ``shelf`` where its facing
        did not move: near on the same shelf, elsewhere on the shelf, or on another shelf."""
        best: float | None = None
        for sh, facing in self._facings.get(sku, ()):
            if sh == shelf:
                near = min(abs(a - b) for a in facing for b in moved) <= 1
                cand = SAME_SHELF if near else ELSEWHERE
            else:
                cand = ELSEWHERE
            if best is None or cand > best:
                best = cand
        return best


def _spread(own: Iterable[int], deltas: dict[int, float], sign: float, x: float) -> float:
    """Log-density cost of an item spread over several moved plates of its own: each plate
    beyond the first holds a share uniform over the item's weight."""
    k = sum(1 for p in own if deltas.get(p, 0.0) * sign > 0)
    return max(0, k - 1) * math.log(max(x, 1.0))


def book_for(layout: Layout, path: Path | None = None) -> WeightBook:
    """A unit-weight book seeded with the planogram: a given ``unit_weight_sd_g`` marks a weighed
    entry (its mean known to ~1 %), otherwise a catalogue weight (~3 %)."""
    cat: dict[str, tuple[float, float, bool]] = {}
    for fc in layout.placements:
        if fc.sku not in cat:
            cat[fc.sku] = (fc.unit_weight_g, fc.unit_weight_sd_g, fc.weighed)
    return WeightBook(cat, path)
