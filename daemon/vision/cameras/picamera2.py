"""Camera type ``picamera2``: a Raspberry Pi camera (source: :class:`daemon.vision.camera.Picamera2Source`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..registry import CameraSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..camera import CameraSource
    from ..rois import ROI


class Picamera2Camera(CameraSettings):
    type: Literal["picamera2"]
    camera_num: int = Field(0, ge=0, le=7)


def _make(cfg: Config, layout: Layout, sensing_source: Any) -> tuple[CameraSource, dict[str, ROI] | None]:
    from ..camera import Picamera2Source
    cam = cfg.camera
    assert isinstance(cam, Picamera2Camera)
    return Picamera2Source(cam.camera_num, cam.width, cam.height, cam.fps), None


register("picamera2", Picamera2Camera, _make)
