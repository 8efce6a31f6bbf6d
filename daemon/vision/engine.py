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

import numpy as np

from .frames import FrameRing, select_frames
from .render import changed_box, crop, union_roi

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


class VisionEngine:
    def __init__(self, ring: FrameRing, rois: dict | None, *, runner=None, action_model=None,
                 product_model=None, margin_s: float = 0.25, block_when_busy: bool = False,
                 product_temperature: float | str | None = "auto"):
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
        # gallery scores: softmax(similarity / T); "auto" fits T on the gallery's own images
        self.product_temperature_setting = product_temperature
        self.product_temperature: float | None = None
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
        out = {}
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

    def submit(self, change: ChangeView) -> Future:
        """Pick the frames now (the ring moves on), analyse them on the worker; the Future's
        result is a VisionResult."""
        if not self._slots.acquire(blocking=self.block_when_busy):
            self.counts["busy"] += 1
            f: Future = Future()
            f.set_result(VisionResult("busy", models=self.model_hashes(), reason="vision queue full"))
            return f
        sel = select_frames(self.ring, change.t_start, change.t_end, margin_s=self.margin_s)
        return self._pool.submit(self._run, change, sel)

    def _run(self, change: ChangeView, sel) -> VisionResult:
        try:
            return self.analyze(change, sel)
        finally:
            self._slots.release()

    def note_timeout(self) -> None:
        self.counts["timeouts"] += 1

    # -- the analysis
    def analyze(self, change: ChangeView, sel=None) -> VisionResult:
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

    def _analyze(self, change: ChangeView, sel=None) -> VisionResult:
        if not self.camera_ok():
            return VisionResult("unavailable", reason=f"camera {self.runner.stats.state}")
        keys = [f"{change.shelf}/{p}" for p in change.plates]
        rois = [self.rois[k] for k in keys if k in self.rois]
        if not rois:
            return VisionResult("no_roi", reason=f"no camera ROI for plate(s) {', '.join(keys)}")
        if sel is None:
            sel = select_frames(self.ring, change.t_start, change.t_end, margin_s=self.margin_s)
        if not sel.usable:
            return VisionResult("no_frames", flags=sel.flags, reason="no frame " + " / ".join(sel.flags))
        roi = union_roi(rois)
        try:
            before = crop(sel.before.image, roi)
            after = crop(sel.after.image, roi)
            if before.shape != after.shape:
                return VisionResult("no_frames", flags=sel.flags + ["size_changed"],
                                    reason="before and after frames differ in size")
            action = self.action_model.classify(before, after) if self.action_model is not None else None
            item = self._item_crop(before, after, change.delta_g)
            skus = self._product_scores(item) if self.product_model is not None else None
        except Exception as exc:  # noqa: BLE001 - one bad inference must not stop the unit
            self._log_once(type(exc).__name__, "vision analysis failed (%s: %s); events go weight-only",
                           type(exc).__name__, exc)
            return VisionResult("error", reason=f"{type(exc).__name__}: {exc}")
        return VisionResult("ok", action=action, skus=skus or None, flags=sel.flags,
                            before=before, after=after, item=item)

    def _gallery(self):
        g = getattr(self.product_model, "gallery", None)
        if g is None or getattr(self.product_model, "head", None) is not None:
            return None
        return g

    def calibrate(self) -> float | None:
        """Set the gallery's scoring temperature (call again after enrolling). With "auto" it is
        fitted on the enrolled images themselves, leave-one-out (``fit_temperature``)."""
        setting = self.product_temperature_setting
        g = self._gallery()
        if g is None or setting in (None, "sidecar"):
            self.product_temperature = None
        elif setting == "auto":
            self.product_temperature = fit_temperature(g.embeddings, g.skus)
        else:
            self.product_temperature = float(setting)
        return self.product_temperature

    def _product_scores(self, item: np.ndarray) -> dict[str, float]:
        g = self._gallery()
        if g is not None and self.product_temperature is not None and len(g):
            return g.scores(self.product_model.embed(item), temperature=self.product_temperature)
        return self.product_model.scores(item)

    @staticmethod
    def _item_crop(before: np.ndarray, after: np.ndarray, delta_g: float) -> np.ndarray:
        src = before if delta_g < 0 else after
        box = changed_box(before, after)
        if box is None:
            return src
        x0, y0, x1, y1 = box
        return src[y0:y1, x0:x1]

    def _log_once(self, key: str, fmt: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, *args)

    # -- figures
    def health(self) -> dict:
        ms = np.array(self._ms) if self._ms else None
        return {"models": {role: sha[:12] for role, sha in self.model_hashes().items()},
                "product_temperature": self.product_temperature,
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
    names = sorted(set(skus))
    lab = np.array([names.index(s) for s in skus])
    if len(names) < 2 or min(np.bincount(lab)) < 2:
        return None
    E = np.asarray(embeddings, np.float32)
    S = E @ E.T
    np.fill_diagonal(S, -np.inf)
    best = np.stack([S[:, lab == k].max(axis=1) for k in range(len(names))], axis=1)  # N × K
    grid = np.exp(np.linspace(np.log(t_min), np.log(t_max), 40))
    ll = []
    for T in grid:
        z = best / T
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ll.append(float(logp[np.arange(len(lab)), lab].mean()))
    return float(grid[int(np.argmax(ll))])
