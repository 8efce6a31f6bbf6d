"""``camera.type: sim``: frames of the simulated shelf that agree with the simulator's weights.

The simulator (``daemon/sensing/sim.py``) offers two read-only views: ``initial_facings()`` (what
every facing held before sample 0) and ``truth`` (every interaction with its shelf, plates,
``t_start``/``t_end``/``t_quiet``, SKU, quantity and kind). From those this source knows the
scene at any past instant: counts per facing, misplaced units lying on plates, and a shopper's
arm during each interaction (from just before ``t_start`` until just before ``t_end``, when only
the plate's ring-down is left; reaching in over the first third, out over the last, holding the
item on the way out of a pick and on the way in of a put-back; leans and presses are an empty
hand). Units change at the middle of the interaction, when the hand is in.

The source follows the *data* clock: ``frames_until(t)`` hands out one lazy frame per
``1/fps`` of stream time; its pixels are rendered (``render.render_frame``, seeded per frame)
only if an event asks for them, so an offline run at hundreds of times real time costs nothing
for frames nobody looks at.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from . import render as R
from .frames import Frame

if TYPE_CHECKING:
    from ..sensing.sim import SimSource
    from .models import EmbeddingModel

log = logging.getLogger(__name__)

HAND_LEAD_S = 0.3    # the arm is in view this long before the shelf feels it ...
HAND_OUT_S = 0.2     # ... and gone this long before the shelf is at rest again (t_end is the
                     # end of the ring-down, ≈ 3τ after the hand let go)


class SimCameraSource:
    synchronous = True

    def __init__(self, sim: SimSource, geom: R.ShelfGeometry, fps: float = 5.0, seed: int = 0,
                 optics: R.Optics = R.Optics()):
        self.sim = sim
        self.geom = geom
        self.width, self.height = geom.width, geom.height
        self.fps = float(fps)
        self.seed = int(seed)
        self.optics = optics
        self._initial = [R.FacingView(sku, shelf, tuple(plates), int(n))
                         for sku, shelf, plates, n in sim.initial_facings()]
        self._t0 = float(sim.t0)
        self._next_k = 0
        self._truth_n = -1
        self._rows: list[dict[str, Any]] = []
        self.rendered = 0
        self.render_ms = 0.0      # total time spent drawing frames (benchmarks subtract it)

    # -- CameraSource
    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None:  # pragma: no cover - pumped instead
        raise NotImplementedError("the sim camera is pumped with frames_until(t)")

    def frames_until(self, t: float) -> Iterator[Frame]:
        """Lazy frames for stream times up to ``t`` not handed out yet."""
        while True:
            tk = self._t0 + self._next_k / self.fps
            if tk > t:
                return
            k = self._next_k
            self._next_k += 1
            yield Frame.lazy(tk, functools.partial(self.render_at, tk, k), seq=k)

    # -- the scene
    def _timeline(self) -> list[dict[str, Any]]:
        n = len(self.sim.ground_truth)
        if n != self._truth_n:
            self._truth_n = n
            self._rows = [r for r in self.sim.truth if r.get("type") in ("pick", "put_back", "lean", "press")]
        return self._rows

    def scene_at(self, t: float) -> R.SceneState:
        facings = list(self._initial)
        foreign: dict[str, list[str]] = {}
        hand: R.HandView | None = None
        for row in self._timeline():
            ts, te = float(row["t_start"]), float(row["t_end"])
            if ts - HAND_LEAD_S > t:
                continue
            shelf = str(row["shelf"])
            plates = tuple(int(p) for p in (row.get("plate_delta_g") or {}).keys()) or tuple(row.get("plates") or ())
            a, b = ts - HAND_LEAD_S, max(ts + 0.3, te - HAND_OUT_S)
            tm = 0.5 * (a + b)
            if row["type"] in ("pick", "put_back") and t >= tm:
                self._apply(facings, foreign, row, shelf, plates)
            if a <= t <= b and plates:
                x = (t - a) / max(1e-6, b - a)
                reach = min(1.0, x / 0.35, (1.0 - x) / 0.35)
                holding = None
                if row["type"] == "pick" and t >= tm:
                    holding = row.get("sku")
                elif row["type"] == "put_back" and t < tm:
                    holding = row.get("sku")
                skin = int(float(row["t_start"]) * 1000) % 25
                hand = R.HandView(shelf, plates, max(0.0, reach), holding, skin)
        return R.SceneState(facings, foreign, hand)

    @staticmethod
    def _apply(facings: list[R.FacingView], foreign: dict[str, list[str]], row: dict[str, Any], shelf: str,
               plates: tuple[int, ...]) -> None:
        sku, q = row.get("sku"), int(row.get("quantity") or 0)
        if sku is None or q <= 0:
            return
        if row["type"] == "put_back" and row.get("kind") == "misplaced":
            key = f"{shelf}/{plates[0] if plates else 0}"
            foreign.setdefault(key, []).extend([sku] * q)
            return
        for i, f in enumerate(facings):
            if f.sku == sku and f.shelf == shelf and (not plates or set(f.plates) & set(plates)):
                sign = -1 if row["type"] == "pick" else 1
                facings[i] = R.FacingView(f.sku, f.shelf, f.plates, max(0, f.count + sign * q))
                return
        if row["type"] == "pick":   # a misplaced unit taken away again
            for p in plates:
                items = foreign.get(f"{shelf}/{p}", [])
                if sku in items:
                    items.remove(sku)
                    return

    def render_at(self, t: float, k: int | None = None) -> np.ndarray:
        k = int(round((t - self._t0) * self.fps)) if k is None else k
        rng = np.random.default_rng([self.seed, k])
        t0 = time.perf_counter()
        img = R.render_frame(self.scene_at(t), self.geom, rng, self.optics)
        self.rendered += 1
        self.render_ms += (time.perf_counter() - t0) * 1000.0
        return img


def enroll_sim_gallery(model: EmbeddingModel, skus: list[str], per_sku: int = 6, seed: int = 0,
                       geom: R.ShelfGeometry | None = None) -> int:
    """Enrol rendered crops of ``skus`` into ``model``'s gallery (an EmbeddingModel with a gallery
    attached): what a store does with ``shelfcal`` and a few photos, done for the sim's products.
    Crops are cut the way the runtime cuts them (``render.product_crop``), on ``geom`` (the unit's
    own camera geometry) when given."""
    gallery = model.gallery
    if gallery is None:
        raise ValueError(f"{model.name}: no gallery attached to enrol into")
    rng = np.random.default_rng(seed)
    n = 0
    for sku in skus:
        crops = [R.product_crop(rng, sku, skus, geom=geom) for _ in range(per_sku)]
        n += gallery.enroll(sku, crops, replace=True)   # saves the gallery
    return n
