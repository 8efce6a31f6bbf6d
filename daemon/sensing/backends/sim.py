"""Backend ``sim``: the shelf simulator (driver: :mod:`daemon.sensing.sim`, docs/simulator.md)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ..registry import SensingSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..base import SampleSource


class SimSensing(SensingSettings):
    backend: Literal["sim"]
    seed: int = 1
    rate_hz: float = Field(60.0, gt=0, le=200)
    duration_s: float | None = Field(None, gt=0)  # None: run until stopped
    speed: float = Field(1.0, ge=0)  # 1 real time, 0 as fast as possible
    events_per_min: float = Field(20.0, gt=0)
    noise_g: float = Field(0.7, ge=0)
    ground_truth: Path | None = None  # where the simulator writes what really happened
    dead_channels: list[str] = Field(default_factory=list)
    glitch_rate: float = Field(0.0005, ge=0, le=0.1)  # per sample per channel
    # Technician scenarios (shelfcal tests, the README walk-through); see docs/simulator.md.
    shoppers: bool = True           # False: nobody touches the shelves (an installation or service visit)
    stocked: bool = True            # False: every plate starts empty
    factory_calibration: bool = True  # False: the unit starts uncalibrated (shelfd refuses to run)
    scale_error: dict[str, float] = Field(default_factory=dict)  # channel → relative error of the factory scale
    plate_noise_g: dict[str, float] = Field(default_factory=dict)  # "shelf/plate" → white-noise σ
    # Sim-only hook: a JSON file {"shelf/plate": grams} of test masses "placed" on plates; the
    # simulator polls it, so a subprocess (shelfcal, a test) can load a plate of a running sim.
    load_file: Path | None = None
    drift_g_per_min: float = Field(3.0, ge=0)  # steepest temperature drift of a cell
    # Store simulation (aggregator/sim): perform exactly the interactions listed in this JSONL
    # file (daemon/sensing/sim_script.py) instead of random shoppers, and start sample 0 at epoch
    # `t0` (paced on the wall clock from there), so every unit of a simulated store shares one clock.
    script: Path | None = None
    t0: float | None = Field(None, gt=0)

    path_keys: ClassVar[tuple[str, ...]] = ("ground_truth", "load_file", "script")
    names_plate_channels: ClassVar[bool] = True  # sim channels come from the shelves' plates

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        if self.script is None:
            return []
        from ..sim_script import script_problems
        plates_of: dict[str, set[int]] = {}
        for shelf in cfg.shelves:
            plates_of.setdefault(shelf.id, set()).update(p.id for p in shelf.plates)
        weights = {p.sku: p.unit_weight_g for p in cfg.planogram}
        return [("sensing.script", m) for m in script_problems(self.script, plates_of, weights)]


def _make(cfg: Config, layout: Layout) -> SampleSource:
    from ..sim import SimSource
    return SimSource(cfg, layout)


register("sim", SimSensing, _make)
