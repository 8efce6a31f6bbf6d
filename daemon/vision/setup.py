"""Build a unit's camera path from its config: source → runner → ring buffer → engine (+ capture).

``build_vision(cfg, layout, sensing_source, offline=False)`` returns a :class:`VisionSetup` whose
``pipeline_kwargs()`` go straight into :class:`daemon.pipeline.Pipeline`. Without a ``camera``
section it returns None and the unit is weight-only, as before. Model problems raise
:class:`VisionConfigError` with one line per problem (``vision.action_model: <file>: ...``) so
``shelfd check`` and ``shelfd run`` report them as configuration errors (exit 78).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .camera import CameraRunner
from .capture import CaptureStore
from .engine import VisionEngine
from .frames import FrameRing
from .registry import CAMERAS, VisionConfigError
from .rois import ROI, RoiError, load_rois, save_rois

if TYPE_CHECKING:
    from ..config import Config
    from ..layout import Layout
    from .camera import CameraSource
    from .models import ActionModel, ProductModel
    from .registry import CameraSettings

log = logging.getLogger(__name__)

OFFLINE_DEADLINE_S = 30.0  # replay/bench: nothing is live, so wait for every answer


__all__ = ["VisionConfigError", "VisionSetup", "build_vision", "check_vision", "load_models",
           "make_camera_source", "open_camera"]


def load_models(cfg: Config, state_dir: Path | None = None) -> tuple[ActionModel | None, ProductModel | None]:
    """(action model | None, product model | None) or VisionConfigError naming each bad file."""
    from .models import ActionModel, ModelError, ProductModel, load_model

    v = cfg.vision
    if v is None:
        return None, None
    problems: list[str] = []
    action: ActionModel | None = None
    product: ProductModel | None = None
    if v.action_model is not None:
        try:
            model = load_model(v.action_model, role="action", num_threads=v.threads)
            assert isinstance(model, ActionModel)  # load_model checked the sidecar's role
            action = model
        except ModelError as exc:
            problems.append(f"vision.action_model: {exc}")
    if v.product_model is not None:
        try:
            model = load_model(v.product_model, sidecar=v.product_sidecar, state_dir=state_dir,
                               num_threads=v.threads)
            if isinstance(model, ProductModel):  # the product and embedding roles
                product = model
            else:
                problems.append(f"vision.product_model: {v.product_model}: sidecar role is "
                                f"{model.spec.role!r}, expected 'product' or 'embedding'")
        except ModelError as exc:
            problems.append(f"vision.product_model: {exc}")
    if problems:
        raise VisionConfigError(problems)
    return action, product


def check_vision(cfg: Config) -> list[str]:
    """Problems ``shelfd check`` reports for the camera/vision sections (models are loaded)."""
    if cfg.camera is None:
        return []
    problems: list[str] = []
    try:
        load_models(cfg, None)
    except VisionConfigError as exc:
        problems.extend(exc.problems)
    try:
        load_rois(cfg.state_dir, cfg.unit_id)
    except RoiError as exc:
        problems.append(f"camera: {exc}")
    return problems


@dataclass
class VisionSetup:
    engine: VisionEngine
    runner: CameraRunner
    ring: FrameRing
    capture: CaptureStore | None
    tau: float
    floor: float
    deadline_s: float

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"vision": self.engine, "fusion": (self.tau, self.floor),
                "vision_deadline_s": self.deadline_s, "capture": self.capture}

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()
        self.engine.close()

    def health(self) -> dict[str, Any]:
        d: dict[str, Any] = {"camera": self.runner.health(), "vision": self.engine.health()}
        if self.capture is not None:
            d["capture"] = self.capture.health()
        return d

    def degraded_reasons(self) -> list[str]:
        st = self.runner.stats
        if st.state not in ("running", "stopped"):
            return [f"camera {st.state}: {st.last_error or 'no frames'}; events are weight-only"]
        if not self.engine.rois:
            return ["camera has no plate ROIs (run `shelfcal camera`); events are weight-only"]
        return []


def make_camera_source(cfg: Config, layout: Layout,
                       sensing_source: Any) -> tuple[CameraSource, dict[str, ROI] | None]:
    """(source, the ROIs it knows or None) from ``camera.type``'s own factory
    (:mod:`daemon.vision.cameras`)."""
    return CAMERAS.factory_for(_camera(cfg))(cfg, layout, sensing_source)


def _camera(cfg: Config) -> CameraSettings:
    if cfg.camera is None:
        raise VisionConfigError(["camera: the unit has no camera section"])
    return cfg.camera


def build_vision(cfg: Config, layout: Layout, sensing_source: Any, *, offline: bool = False) -> VisionSetup | None:
    if cfg.camera is None:
        return None
    cam = cfg.camera
    state_dir = Path(cfg.state_dir)
    action, product = load_models(cfg, state_dir)
    source, source_rois = make_camera_source(cfg, layout, sensing_source)
    try:
        rois = load_rois(state_dir, cfg.unit_id)
    except RoiError as exc:
        raise VisionConfigError([f"camera: {exc}"]) from None
    if rois is None and source_rois:
        rois = dict(source_rois)
        if cam.saves_source_rois:
            # the sim knows where its plates are: its "factory" ROIs, like its factory calibration
            save_rois(state_dir, rois, unit_id=cfg.unit_id, frame_size=(cam.width, cam.height), technician="sim")
    width, height = getattr(source, "width", cam.width), getattr(source, "height", cam.height)
    ring = FrameRing.for_camera(cam.fps, cam.buffer_s, width, height)
    runner = CameraRunner(source, ring, width=width, height=height, fps=cam.fps, stall_s=cam.stall_s)
    engine = VisionEngine(ring, rois, runner=runner, action_model=action, product_model=product,
                          block_when_busy=offline,
                          product_calibration=cfg.vision.product_calibration if cfg.vision else "auto")
    v = cfg.vision
    capture = None
    if v is not None and v.capture.enabled:
        capture = CaptureStore(v.capture.dir or state_dir / "vision" / "capture",
                               min_confidence=v.capture.min_confidence, max_mb=v.capture.max_mb,
                               max_age_days=v.capture.max_age_days)
    tau, floor = (v.tau, v.floor) if v is not None else (0.9, 1e-5)
    deadline = OFFLINE_DEADLINE_S if offline else ((v.deadline_ms if v is not None else 400) / 1000.0)
    log.info("camera %s %d×%d at %.1f fps, ring %d frames; models: %s; %d ROIs", cam.type, width, height,
             cam.fps, ring.max_frames, ", ".join(f"{r} {s[:12]}" for r, s in engine.model_hashes().items()) or "none",
             len(rois or {}))
    return VisionSetup(engine, runner, ring, capture, tau, floor, deadline)


def open_camera(cfg: Config, layout: Layout,
                sensing_source: Any) -> tuple[CameraRunner, FrameRing, dict[str, ROI] | None]:
    """Just the camera (no models): what ``shelfd record`` needs to save frames beside samples."""
    cam = _camera(cfg)
    source, source_rois = make_camera_source(cfg, layout, sensing_source)
    try:
        rois = load_rois(cfg.state_dir, cfg.unit_id) or source_rois
    except RoiError:
        rois = source_rois
    width, height = getattr(source, "width", cam.width), getattr(source, "height", cam.height)
    ring = FrameRing.for_camera(cam.fps, cam.buffer_s, width, height)
    return CameraRunner(source, ring, width=width, height=height, fps=cam.fps, stall_s=cam.stall_s), ring, rois
