"""Camera type ``sim``: renders the simulated shelf in agreement with its weights (source:
:class:`daemon.vision.sim_camera.SimCameraSource`); needs ``sensing.backend: sim``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..registry import CameraSettings, VisionConfigError, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..camera import CameraSource
    from ..rois import ROI


class SimCamera(CameraSettings):
    type: Literal["sim"]
    seed: int | None = None  # default: sensing.seed

    saves_source_rois: ClassVar[bool] = True

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        if cfg.sensing.backend != "sim":
            return [("camera.type", "sim renders the simulated shelf: it needs sensing.backend: sim")]
        return []


def _make(cfg: Config, layout: Layout, sensing_source: Any) -> tuple[CameraSource, dict[str, ROI] | None]:
    from ..render import ShelfGeometry
    from ..sim_camera import SimCameraSource
    cam = cfg.camera
    assert isinstance(cam, SimCamera)
    if not hasattr(sensing_source, "initial_facings"):
        raise VisionConfigError(["camera.type: sim needs the sim sensing backend"])
    geom = ShelfGeometry.from_layout(layout, cam.width, cam.height)
    seed = cam.seed if cam.seed is not None else getattr(cfg.sensing, "seed", 0)
    return SimCameraSource(sensing_source, geom, cam.fps, seed), geom.rois()


register("sim", SimCamera, _make)
