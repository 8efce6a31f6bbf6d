"""Build the sample source named by ``sensing.backend``: the backend's own factory, found in the
registry (:mod:`daemon.sensing.backends`). Factories import their drivers lazily so x86 never
imports GPIO code, and the Pi never imports the simulator's dependencies."""
from __future__ import annotations

from ..config import Config
from ..layout import Layout
from .base import SampleSource
from .registry import SENSING


def make_source(cfg: Config, layout: Layout) -> SampleSource:
    return SENSING.factory_for(cfg.sensing)(cfg, layout)


def layout_for(cfg: Config) -> Layout:
    """The unit's layout; a source that brings its own (AiFi recordings) provides it."""
    own = cfg.sensing.own_layout()
    return own if own is not None else Layout.from_config(cfg)
