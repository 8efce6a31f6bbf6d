"""Pick the backend named by ``sensing.backend``. Hardware modules are imported lazily so x86
never imports GPIO code, and the Pi never imports the simulator's dependencies."""
from __future__ import annotations

from ..config import Config, Hx711Sensing, IioSensing, ReplaySensing, SimSensing
from ..layout import Layout
from .base import SampleSource


def make_source(cfg: Config, layout: Layout) -> SampleSource:
    s = cfg.sensing
    if isinstance(s, Hx711Sensing):
        from .hx711_gpio import Hx711Source
        return Hx711Source(s)
    if isinstance(s, IioSensing):
        from .iio import IioSource
        return IioSource(s)
    if isinstance(s, SimSensing):
        from .sim import SimSource
        return SimSource(cfg, layout)
    if isinstance(s, ReplaySensing):
        if s.format == "aifi":
            from .replay_aifi import AifiReplaySource
            return AifiReplaySource(s.path, layout, speed=s.speed)
        from .recording import ShelfdReplaySource
        return ShelfdReplaySource(s.path, speed=s.speed)
    raise ValueError(f"unknown backend {s!r}")


def layout_for(cfg: Config) -> Layout:
    """The unit's layout; AiFi recordings bring their own shelves and planogram."""
    if isinstance(cfg.sensing, ReplaySensing) and cfg.sensing.format == "aifi":
        from .replay_aifi import load_layout
        return load_layout(cfg.sensing.path)[0]
    return Layout.from_config(cfg)
