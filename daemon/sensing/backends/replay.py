"""Backend ``replay``: a recording played back, ``shelfd`` (:mod:`daemon.sensing.recording`) or
AiFi (:mod:`daemon.sensing.replay_aifi`, which brings its own shelves and planogram)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ..registry import SensingSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..base import SampleSource


class ReplaySensing(SensingSettings):
    backend: Literal["replay"]
    format: Literal["aifi", "shelfd"] = "shelfd"
    path: Path
    speed: float = Field(1.0, ge=0)

    path_keys: ClassVar[tuple[str, ...]] = ("path",)
    # a recording of a simulated unit carries the simulator's channel names, so the same config
    # (backend switched to replay) maps plates the same way
    names_plate_channels: ClassVar[bool] = True

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        if not self.path.exists():
            return [("sensing.path", f"recording not found: {self.path}")]
        return []

    def brings_layout(self) -> bool:
        return self.format == "aifi"

    def own_layout(self) -> Layout | None:
        if not self.brings_layout():
            return None
        from ..replay_aifi import load_layout
        return load_layout(self.path)[0]


def _make(cfg: Config, layout: Layout) -> SampleSource:
    s = cfg.sensing
    assert isinstance(s, ReplaySensing)
    if s.format == "aifi":
        from ..replay_aifi import AifiReplaySource
        return AifiReplaySource(s.path, layout, speed=s.speed)
    from ..recording import ShelfdReplaySource
    return ShelfdReplaySource(s.path, speed=s.speed)


register("replay", ReplaySensing, _make)
