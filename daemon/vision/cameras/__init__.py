"""Every camera type, one module each: its config model (the keys under ``camera:``), what
``shelfd check`` refuses for it, and its factory. The source itself (threads, device, decoding)
lives in :mod:`daemon.vision.camera` or a module of its own that the factory imports.

Adding a camera type: write ``daemon/vision/cameras/<name>.py`` (copy ``v4l2.py``: a
:class:`~daemon.vision.registry.CameraSettings` subclass with ``type: Literal["<name>"]``, a
factory returning ``(source, rois or None)``, and ``register(...)`` as its last line), then add its
name to the import below. The config union, ``camera.type``'s error text and
:func:`daemon.vision.setup.make_camera_source` follow from the registry.
"""
from ..registry import CAMERAS, CameraSettings, register

# The registration list: importing a module registers its camera type (one name per type).
from . import picamera2, replay, sim, v4l2  # noqa: F401

__all__ = ["CAMERAS", "CameraSettings", "register"]
