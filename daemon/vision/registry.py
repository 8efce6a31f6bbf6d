"""The camera types (``camera.type``): the keys every camera shares, what each type's config model
offers, and the registry :mod:`daemon.config` builds the ``camera`` union and its error texts from.

To add a camera type, see :mod:`daemon.vision.cameras` (and docs/vision.md).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from ..registry import Registry, StrictModel

if TYPE_CHECKING:
    from ..config import Config
    from ..layout import Layout
    from .camera import CameraSource
    from .rois import ROI


class VisionConfigError(Exception):
    """Camera or model problems found while building the camera path: one line per problem
    (``vision.action_model: <file>: ...``), reported like any config error (exit 78)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


#: ``factory(cfg, layout, sensing_source) -> (source, rois the source knows or None)``; imports
#: camera libraries when called (or in the source's ``start()``)
CameraFactory = Callable[["Config", "Layout", Any], "tuple[CameraSource, dict[str, ROI] | None]"]

CAMERAS: Registry[CameraFactory] = Registry("camera", "type", "camera type")


class CameraSettings(StrictModel):
    """Base of a camera type's config model (the keys under ``camera:``). Frames kept in the ring
    buffer: width × height × 3 bytes each, fps × buffer_s of them (640×480 at 5 fps for 8 s ≈
    37 MB); see docs/vision.md. A subclass declares ``type: Literal["name"]`` and its own keys."""

    type: str  # each camera type narrows it to Literal["<name>"], the union's discriminator
    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=48, le=4096)
    fps: float = Field(5.0, gt=0, le=60)
    buffer_s: float = Field(8.0, ge=1.0, le=60.0)  # pre-roll: an event's "before" frame must still be here
    stall_s: float = Field(3.0, gt=0, le=60)       # no frame this long → the source is restarted

    #: keys holding file paths; a relative one is taken relative to the config file
    path_keys: ClassVar[tuple[str, ...]] = ()
    #: the ROIs the source reports are saved as the unit's own when it has none yet (the
    #: simulator knows where its plates are, like its factory calibration)
    saves_source_rois: ClassVar[bool] = False

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        """(key path, message) for what ``shelfd check`` refuses for this camera."""
        return []


def register(name: str, model: type[CameraSettings], factory: CameraFactory) -> None:
    """One line at the bottom of a camera type's module: ``register("v4l2", V4l2Camera, _make)``."""
    CAMERAS.register(name, model, factory)
