"""Every sensing backend, one module each: its config model (the keys under ``sensing:``), what
``shelfd check`` refuses for it, and its factory. The driver itself (threads, files, hardware) may
sit in a module of its own that the factory imports when the backend is chosen.

Adding a backend: write ``daemon/sensing/backends/<name>.py`` (copy ``iio.py``: a
:class:`~daemon.sensing.registry.SensingSettings` subclass with ``backend: Literal["<name>"]``, a
factory, and ``register(...)`` as its last line), then add its name to the import below. The
config union, ``sensing.backend``'s error text and ``make_source`` follow from the registry.
"""
from ..registry import SENSING, SensingSettings, register

# The registration list: importing a module registers its backend (one name per backend).
from . import hx711, iio, replay, sim  # noqa: F401

__all__ = ["SENSING", "SensingSettings", "register"]
