"""From a weight change to vision scores: frames → crops → TFLite models, off the sample thread.

For a change on ``plates`` of ``shelf`` between ``t_start`` and ``t_end``:

1. frames: the last one before ``t_start`` and the first after ``t_end`` from the ring buffer
   (``frames.select_frames``);
2. crops: both cut by the union of the moved plates' ROIs (``state_dir/camera.json``);
3. action model (optional): before/after crops → {pick, put_back, no_change, swap};
4. product model (optional): the crop of the item itself, i.e. the box that changed between
   before and after (``render.changed_box``: aligned for camera shake, gain matched) cut from the
   *before* crop for a pick (the unit that left) and the *after* crop for a put-back (the unit
   that arrived) → {sku: probability}.

``submit`` runs this on one worker thread and returns at once; the pipeline gives each event a
deadline and publishes it weight-only (``vision.status: "timeout"``) if the answer is late. The
worker's queue is bounded: when vision falls behind, new changes get ``status: "busy"``.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .frames import FrameRing, Selection, select_frames
from .models import EmbeddingModel
from .render import crop, item_crop, union_roi

if TYPE_CHECKING:
    from .camera import CameraRunner
    from .gallery import Gallery
    from .models import ActionModel, ProductModel
    from .rois import ROI

log = logging.getLogger(__name__)

MAX_QUEUE = 4


@dataclass
class VisionResult:
    status: str                                   # ok | unavailable | no_roi | no_frames | error | busy | timeout
    action: dict[str, float] | None = None        # action label → probability
    skus: dict[str, float] | None = None          # product scores (all SKUs the model knows)
    models: dict[str, str] = field(default_factory=dict)   # role → sha256
    ms: float = 0.0                               # wall time of the analysis
    flags: list[str] = field(default_factory=list)
    reason: str | None = None
    frame_times: tuple[float, float] | None = None   # (before, after) frames used
    # kept on the unit only (capture mode); never published
    before: np.ndarray | None = field(default=None, repr=False)
    after: np.ndarray | None = field(default=None, repr=False)
    item: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ChangeView:
    """The parts of a weight change vision needs (kept separate so vision never imports events)."""

    shelf: str
    plates: list[int]
    t_start: float
    t_end: float
    delta_g: float
    plate_deltas: dict[int, float] | None = None

    def looked_at(self) -> list[int]:
        """Plates the item moved on: a group's plates that only swung along (shelf flex, a
        neighbour's interaction merged into the group) would put other products in the crop."""
        if not self.plate_deltas:
            return list(self.plates)
        big = max(abs(d) for d in self.plate_deltas.values())
        keep = [p for p in self.plates if abs(self.plate_deltas.get(p, 0.0)) >= max(5.0, 0.25 * big)]
        return keep or list(self.plates)


class VisionEngine:
    def __init__(self, ring: FrameRing, rois: dict[str, ROI] | None, *, runner: CameraRunner | None = None,
                 action_model: ActionModel | None = None, product_model: ProductModel | None = None,
                 margin_s: float = 0.25, block_when_busy: bool = False,
                 product_calibration: float | str | None = "auto"):
        self.ring = ring
        self.rois = rois or {}
        self.runner = runner
        self.action_model = action_model
        self.product_model = product_model
        self.margin_s = margin_s
        # offline runs (replay, benchmarks) have no live deadline: wait for the worker instead
        # of skipping vision when it falls behind
        self.block_when_busy = block_when_busy
        self._slots = threading.Semaphore(MAX_QUEUE)
        # how gallery similarities become SKU scores: "auto" (default) fits a softmax temperature
        # on the gallery's own images; "verify" a same/different model; a number fixes the
        # temperature; "sidecar" uses the model sidecar's temperature
        self.product_calibration = product_calibration
        self.product_temperature: float | None = None
        self.verifier: Verifier | None = None
        self.calibrate()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision")
        self._queued = 0
        self._lock = threading.Lock()
        self.counts = {"analyses": 0, "ok": 0, "timeouts": 0, "busy": 0, "errors": 0, "no_frames": 0,
                       "no_roi": 0, "unavailable": 0}
        self._ms: list[float] = []
        self._logged: set[str] = set()

    # -- models' identity for events and health
    def model_hashes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.action_model is not None:
            out["action"] = self.action_model.sha256
        if self.product_model is not None:
            out["product"] = self.product_model.sha256
        return out

    def camera_ok(self) -> bool:
        return self.runner is None or self.runner.healthy

    # -- the sample thread's side
    def pump(self, t: float) -> None:
        if self.runner is not None:
            self.runner.pump(t)

    def submit(self, change: ChangeView) -> Future[VisionResult]:
        """Pick the frames now (the ring moves on), analyse them on the worker; the Future's
        result is a VisionResult."""
        if not self._slots.acquire(blocking=self.block_when_busy):
            self.counts["busy"] += 1
            f: Future[VisionResult] = Future()
            f.set_result(VisionResult("busy", models=self.model_hashes(), reason="vision queue full"))
            return f
        sel = select_frames(self.ring, change.t_start, change.t_end, margin_s=self.margin_s)
        return self._pool.submit(self._run, change, sel)

    def _run(self, change: ChangeView, sel: Selection) -> VisionResult:
        try:
            return self.analyze(change, sel)
        finally:
            self._slots.release()

    def note_timeout(self) -> None:
        self.counts["timeouts"] += 1

    # -- the analysis
    def analyze(self, change: ChangeView, sel: Selection | None = None) -> VisionResult:
        t0 = time.perf_counter()
        self.counts["analyses"] += 1
        res = self._analyze(change, sel)
        res.ms = round((time.perf_counter() - t0) * 1000.0, 1)
        res.models = self.model_hashes()
        if res.status in self.counts:
            self.counts[res.status] += 1
        if res.ok:
            self._ms.append(res.ms)
            del self._ms[:-200]
        return res

    def _analyze(self, change: ChangeView, sel: Selection | None = None) -> VisionResult:
        if self.runner is not None and not self.runner.healthy:  # not camera_ok()
            return VisionResult("unavailable", reason=f"camera {self.runner.stats.state}")
        keys = [f"{change.shelf}/{p}" for p in change.looked_at()]
        rois = [self.rois[k] for k in keys if k in self.rois]
        if not rois:
            return VisionResult("no_roi", reason=f"no camera ROI for plate(s) {', '.join(keys)}")
        if sel is None:
            sel = select_frames(self.ring, change.t_start, change.t_end, margin_s=self.margin_s)
        first, last = sel.before, sel.after
        if first is None or last is None:  # not sel.usable
            return VisionResult("no_frames", flags=sel.flags, reason="no frame " + " / ".join(sel.flags))
        roi = union_roi(rois)
        pm = self.product_model
        try:
            before = crop(first.image, roi)
            after = crop(last.image, roi)
            if before.shape != after.shape:
                return VisionResult("no_frames", flags=sel.flags + ["size_changed"],
                                    reason="before and after frames differ in size")
            action = self.action_model.classify(before, after) if self.action_model is not None else None
            item = self._item_crop(before, after, change.delta_g)
            skus = self._product_scores(pm, item) if pm is not None else None
        except Exception as exc:  # noqa: BLE001 - one bad inference must not stop the unit
            self._log_once(type(exc).__name__, "vision analysis failed (%s: %s); events go weight-only",
                           type(exc).__name__, exc)
            return VisionResult("error", reason=f"{type(exc).__name__}: {exc}")
        return VisionResult("ok", action=action, skus=skus or None, flags=sel.flags,
                            frame_times=(first.t, last.t), before=before, after=after, item=item)

    def _gallery(self) -> Gallery | None:
        """The embedding model's gallery, when it scores with one (no linear head)."""
        pm = self.product_model
        if not isinstance(pm, EmbeddingModel) or pm.head is not None:
            return None
        return pm.gallery

    def calibrate(self) -> None:
        """Fit the gallery's scoring on its own images (call again after enrolling)."""
        setting = self.product_calibration
        g = self._gallery()
        self.product_temperature, self.verifier = None, None
        if g is None or setting in (None, "sidecar"):
            return
        if setting == "verify":
            self.verifier = Verifier.fit(g.embeddings, g.skus)
        elif setting == "auto":
            self.product_temperature = fit_temperature(g.embeddings, g.skus)
        else:
            self.product_temperature = float(setting)

    def _product_scores(self, pm: ProductModel, item: np.ndarray) -> dict[str, float]:
        g = self._gallery()
        if isinstance(pm, EmbeddingModel) and g is not None and len(g):
            if self.verifier is not None:
                return self.verifier.scores(g.similarities(pm.embed(item)))
            if self.product_temperature is not None:
                return g.scores(pm.embed(item), temperature=self.product_temperature)
        return pm.scores(item)

    @staticmethod
    def _item_crop(before: np.ndarray, after: np.ndarray, delta_g: float) -> np.ndarray:
        return item_crop(before, after, took=delta_g < 0)

    def _log_once(self, key: str, fmt: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, *args)

    # -- figures
    def health(self) -> dict[str, Any]:
        ms = np.array(self._ms) if self._ms else None
        return {"models": {role: sha[:12] for role, sha in self.model_hashes().items()},
                "product_calibration": (self.verifier.describe() if self.verifier is not None
                                        else {"temperature": self.product_temperature}),
                "rois": len(self.rois), **self.counts,
                "inference_ms_mean": round(float(ms.mean()), 1) if ms is not None else None,
                "inference_ms_p95": round(float(np.percentile(ms, 95)), 1) if ms is not None else None}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def fit_temperature(embeddings: np.ndarray, skus: list[str], t_min: float = 0.002,
                    t_max: float = 0.2) -> float | None:
    """Temperature T that makes softmax(best similarity per SKU / T) calibrated on the gallery's
    own images: each image is scored against all the *others* (leave-one-out) and T maximises the
    mean log-probability of its true SKU, searched on a log grid in [t_min, t_max]. Well separated
    products give a small T (sharp, confident scores); look-alikes a large one. None when the
    gallery has fewer than two SKUs with two images each (nothing to fit on)."""
    loo = _loo_best(embeddings, skus)
    if loo is None:
        return None
    best, lab, _ = loo  # N × K
    grid = np.exp(np.linspace(np.log(t_min), np.log(t_max), 40))
    ll = []
    for T in grid:
        z = best / T
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ll.append(float(logp[np.arange(len(lab)), lab].mean()))
    return float(grid[int(np.argmax(ll))])


def _loo_best(embeddings: np.ndarray, skus: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Leave-one-out best similarity of each enrolled image to every SKU (N × K), its label index,
    the SKU names; None when there is nothing to fit on."""
    names = sorted(set(skus))
    lab = np.array([names.index(s) for s in skus])
    if len(names) < 2 or min(np.bincount(lab)) < 2:
        return None
    E = np.asarray(embeddings, np.float32)
    S = E @ E.T
    np.fill_diagonal(S, -np.inf)
    best = np.stack([S[:, lab == k].max(axis=1) for k in range(len(names))], axis=1)
    return best, lab, names


class Verifier:
    """Gallery similarity → likelihood ratio, per SKU: "is the crop this product?".

    Fitted leave-one-out on the enrolled images: the best similarity of an image to the other
    images of its own SKU ("same") and to each other SKU ("different") are modelled as two
    Gaussians. For a crop, every SKU k gets LLR_k = log N(s_k; same) − log N(s_k; different) from
    its best similarity s_k, and the scores are softmax(LLR). Unlike one temperature for the whole
    gallery, this keeps a product that is far from the crop (s_k deep in "different") far below
    one that matches, even when the gallery holds a pair of look-alikes elsewhere. σ ≥ 0.02 so a
    perfectly separated gallery does not claim infinite certainty."""

    SIGMA_MIN = 0.02

    def __init__(self, same: tuple[float, float], diff: tuple[float, float]):
        self.same, self.diff = same, diff

    @classmethod
    def fit(cls, embeddings: np.ndarray, skus: list[str]) -> Verifier | None:
        got = _loo_best(embeddings, skus)
        if got is None:
            return None
        best, lab, _ = got
        n = len(lab)
        same = best[np.arange(n), lab]
        mask = np.ones_like(best, bool)
        mask[np.arange(n), lab] = False
        diff = best[mask]
        same, diff = same[np.isfinite(same)], diff[np.isfinite(diff)]
        return cls((float(same.mean()), max(cls.SIGMA_MIN, float(same.std()))),
                   (float(diff.mean()), max(cls.SIGMA_MIN, float(diff.std()))))

    def llr(self, s: np.ndarray) -> np.ndarray:
        (m1, s1), (m0, s0) = self.same, self.diff
        llr: np.ndarray = (-0.5 * ((s - m1) / s1) ** 2 - np.log(s1)) - (-0.5 * ((s - m0) / s0) ** 2 - np.log(s0))
        return llr

    def scores(self, similarities: dict[str, float]) -> dict[str, float]:
        if not similarities:
            return {}
        names = list(similarities)
        z = self.llr(np.array([similarities[k] for k in names], np.float64))
        z = np.exp(z - z.max())
        p = z / z.sum()
        return {k: float(v) for k, v in zip(names, p)}

    def describe(self) -> dict[str, Any]:
        return {"verify": {"same": [round(v, 4) for v in self.same], "different": [round(v, 4) for v in self.diff]}}
