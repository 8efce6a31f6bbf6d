"""What one unit of each product really weighs on this shelf, learned from confident events.

Why: a catalogue weight is a nominal figure. Real units of a SKU sit a few percent off it (filling
tolerance, packaging revisions), and two facings side by side often hold near-twins. Until the unit
knows better, identification must allow that whole spread (``catalogue_sd``, 3 % of the weight);
every confident event on the product's own facing is a weighing, and after a handful of them the
mean is known to well under a percent, so products a few percent apart become separable by weight.

The estimate is a scalar Kalman filter on the mean unit weight per SKU:

- each observation is Δ/q of a confident, non-misplaced event, with variance
  ``sd_unit²/q + noise²/q²``;
- the innovation is clipped at 2.5 σ (Huber), so one wrong event moves the mean by at most
  2.5·K·σ, and the filter's own variance never falls below a floor (0.3 %) or stops following a
  slow change (a little process noise per update);
- a mean that would leave ``catalogue ± drift_limit`` is held at the limit and the SKU is flagged
  ``drift`` (reported in ``health`` as a degraded reason): a new pack size or a wrong planogram
  entry is a technician's decision, not something to follow silently.

A planogram entry whose unit weight changes (``shelfcal planogram measure`` writes a weighed one)
restarts that SKU's estimate from the new value. The book lives in ``state_dir`` as
``unit_weights.json``, replaced atomically; a replay keeps it in memory only.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomicfile import atomic_write

log = logging.getLogger(__name__)

FILE_NAME = "unit_weights.json"
CATALOGUE_SD = 0.03       # a catalogue weight's mean is good to ~3 % (real SKUs sit up to ±6 % off)
WEIGHED_SD = 0.01         # a weighed entry (unit_weight_sd_g given in the planogram)
MEAN_SD_FLOOR = 0.003     # never claim the mean to better than 0.3 %
PROCESS_SD = 0.001        # per update: batches change, the estimate must keep following
HUBER_K = 2.5
DRIFT_LIMIT = 0.12        # beyond ±12 % of the planogram's weight: flag, do not follow


@dataclass
class UnitWeight:
    sku: str
    catalogue_g: float        # the planogram's value this estimate started from
    mean_g: float
    mean_sd_g: float          # uncertainty of the mean
    unit_sd_g: float          # spread of one unit around the mean
    n: int = 0                # events learned from
    drift: bool = False
    clipped: int = 0          # observations clipped as outliers

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("catalogue_g", "mean_g", "mean_sd_g", "unit_sd_g"):
            d[k] = round(d[k], 3)
        return d


class WeightBook:
    def __init__(self, catalogue: dict[str, tuple[float, float, bool]], path: Path | None = None,
                 drift_limit: float = DRIFT_LIMIT):
        """``catalogue``: sku → (unit weight g, one unit's sd g, weighed?). ``path``: where to keep it."""
        self.path = Path(path) if path else None
        self.drift_limit = drift_limit
        self.dirty = False
        self.w: dict[str, UnitWeight] = {}
        for sku, (g, sd, weighed) in catalogue.items():
            self.w[sku] = self._fresh(sku, g, sd, weighed)
        if self.path is not None and self.path.exists():
            self._load(catalogue)

    @staticmethod
    def _fresh(sku: str, g: float, sd: float, weighed: bool) -> UnitWeight:
        return UnitWeight(sku, g, g, (WEIGHED_SD if weighed else CATALOGUE_SD) * g, sd)

    def _load(self, catalogue: dict[str, tuple[float, float, bool]]) -> None:
        try:
            doc = json.loads(self.path.read_text())  # type: ignore[union-attr]
            rows = doc["skus"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unit weights %s unreadable (%s): starting from the planogram's weights", self.path, exc)
            return
        for sku, r in rows.items():
            if sku not in self.w:
                continue
            try:
                u = UnitWeight(**{k: r[k] for k in UnitWeight.__dataclass_fields__ if k in r})
            except TypeError:
                continue
            if not math.isclose(u.catalogue_g, catalogue[sku][0], rel_tol=1e-6):
                log.info("unit weight of %s changed in the planogram (%.2f → %.2f g): estimate restarted",
                         sku, u.catalogue_g, catalogue[sku][0])
                continue
            self.w[sku] = u

    # ------------------------------------------------------------------ use

    def get(self, sku: str) -> UnitWeight | None:
        return self.w.get(sku)

    def learn(self, sku: str, measured_g: float, quantity: int, noise_g: float) -> UnitWeight | None:
        """One confident event: ``measured_g`` (magnitude) for ``quantity`` units of ``sku``."""
        u = self.w.get(sku)
        if u is None or quantity < 1 or not math.isfinite(measured_g) or measured_g <= 0:
            return None
        y = measured_g / quantity
        r = u.unit_sd_g ** 2 / quantity + (noise_g ** 2 + 1.0) / quantity ** 2
        p = u.mean_sd_g ** 2 + (PROCESS_SD * u.mean_g) ** 2
        s = p + r
        v = y - u.mean_g
        lim = HUBER_K * math.sqrt(s)
        if abs(v) > lim:
            u.clipped += 1
            v = math.copysign(lim, v)
        k = p / s
        mean = u.mean_g + k * v
        p = (1 - k) * p
        lo, hi = u.catalogue_g * (1 - self.drift_limit), u.catalogue_g * (1 + self.drift_limit)
        if not lo <= mean <= hi:
            if not u.drift:
                log.warning("unit weight of %s drifts beyond ±%.0f %% of the planogram's %.2f g "
                            "(events say %.2f g): held at the limit; check the planogram entry",
                            sku, 100 * self.drift_limit, u.catalogue_g, mean)
            u.drift = True
            mean = min(hi, max(lo, mean))
        u.mean_g = mean
        u.mean_sd_g = max(math.sqrt(p), MEAN_SD_FLOOR * mean)
        u.n += 1
        self.dirty = True
        return u

    def drifting(self) -> list[str]:
        return sorted(s for s, u in self.w.items() if u.drift)

    def snapshot(self) -> dict[str, Any]:
        return {s: u.as_dict() for s, u in sorted(self.w.items()) if u.n or u.drift}

    def save(self) -> None:
        """Write the book if it changed (atomic replace); a failure is logged, never raised."""
        if self.path is None or not self.dirty:
            return
        doc = {"version": 1, "skus": {s: u.as_dict() for s, u in sorted(self.w.items())}}
        try:
            atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True))
            self.dirty = False
        except OSError as exc:
            log.error("cannot write unit weights %s: %s", self.path, exc)
