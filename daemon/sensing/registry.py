"""The sensing backends (``sensing.backend``): what every backend's config model offers, and the
registry :mod:`daemon.config` builds the ``sensing`` union and its error texts from.

To add a backend, see :mod:`daemon.sensing.backends` (and docs/sensing.md, "Adding a backend").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry, StrictModel

if TYPE_CHECKING:
    from ..config import Config
    from ..layout import Layout
    from .base import SampleSource

#: ``factory(cfg, layout) -> SampleSource``; imports its driver when called, so x86 never imports
#: GPIO code and a Pi never imports the simulator
SourceFactory = Callable[["Config", "Layout"], "SampleSource"]

SENSING: Registry[SourceFactory] = Registry("sensing", "backend", "backend")


class SensingSettings(StrictModel):
    """Base of a backend's config model (the keys under ``sensing:``). A subclass declares
    ``backend: Literal["name"]`` and its own keys, and overrides what applies to it below."""

    backend: str  # each backend narrows it to Literal["<name>"], the union's discriminator

    #: keys holding file paths; a relative one is taken relative to the config file
    path_keys: ClassVar[tuple[str, ...]] = ()
    #: a plate listing no channels gets the simulator's channel name (``sim-<shelf>-<plate>``)
    #: instead of being refused: the simulator names its own channels, and a recording of it
    #: carries those names
    names_plate_channels: ClassVar[bool] = False

    def channel_names(self) -> list[str]:
        """Channels declared under this section; [] when the backend names its own."""
        return []

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        """(key path, message) for each thing the driver would refuse at ``run``, found by
        ``shelfd check``: pins or channels used twice, files that are not there."""
        return []

    def own_layout(self) -> Layout | None:
        """The shelves and planogram this source brings with it (an AiFi recording), else None
        (the config's ``shelves`` then describe the unit and must not be empty)."""
        return None

    def brings_layout(self) -> bool:
        """Cheap check (no file read) that :meth:`own_layout` is not None."""
        return False


def register(name: str, model: type[SensingSettings], factory: SourceFactory) -> None:
    """One line at the bottom of a backend's module: ``register("hx711", Hx711Sensing, _make)``."""
    SENSING.register(name, model, factory)
