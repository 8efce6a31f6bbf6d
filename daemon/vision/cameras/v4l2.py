"""Camera type ``v4l2``: a USB camera through linuxpy (source: :class:`daemon.vision.camera.V4l2Source`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..registry import CameraSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..camera import CameraSource
    from ..rois import ROI


class V4l2Camera(CameraSettings):
    type: Literal["v4l2"]
    device: str = "/dev/video0"
    pixel_format: Literal["MJPG", "YUYV"] = "MJPG"


def _make(cfg: Config, layout: Layout, sensing_source: Any) -> tuple[CameraSource, dict[str, ROI] | None]:
    from ..camera import V4l2Source
    cam = cfg.camera
    assert isinstance(cam, V4l2Camera)
    return V4l2Source(cam.device, cam.width, cam.height, cam.fps, cam.pixel_format), None


register("v4l2", V4l2Camera, _make)
