"""Camera type ``replay``: frames recorded by ``shelfd record`` (source:
:class:`daemon.vision.framefile.ReplayCameraSource`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..registry import CameraSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..camera import CameraSource
    from ..rois import ROI

log = logging.getLogger(__name__)


class ReplayCamera(CameraSettings):
    type: Literal["replay"]
    path: Path               # frames file written by `shelfd record` (<recording>.frames)

    path_keys: ClassVar[tuple[str, ...]] = ("path",)

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        if not self.path.exists():
            return [("camera.path", f"frames file not found: {self.path}")]
        return []


def _make(cfg: Config, layout: Layout, sensing_source: Any) -> tuple[CameraSource, dict[str, ROI] | None]:
    from ..framefile import ReplayCameraSource
    cam = cfg.camera
    assert isinstance(cam, ReplayCamera)
    src = ReplayCameraSource(cam.path)
    if (src.width, src.height) != (cam.width, cam.height):
        log.warning("camera.path %s has %d×%d frames; camera says %d×%d: using the file's size",
                    cam.path, src.width, src.height, cam.width, cam.height)
    return src, src.rois


register("replay", ReplayCamera, _make)
