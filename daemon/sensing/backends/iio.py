"""Backend ``iio``: HX711s read through the kernel's ``avia,hx711`` driver in sysfs
(driver: :mod:`daemon.sensing.iio`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ...registry import StrictModel
from ..registry import SensingSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..base import SampleSource


class IioChannel(StrictModel):
    name: str
    device: str  # "label:<label>" (the overlay's label=, stable), "iio:device0", or an absolute sysfs path
    channel: str = "in_voltage0"  # attribute prefix; reads <channel>_raw


class IioSensing(SensingSettings):
    backend: Literal["iio"]
    rate_hz: float = Field(10.0, gt=0, le=100)
    sysfs_root: Path = Path("/sys/bus/iio/devices")
    channels: list[IioChannel] = Field(min_length=1)

    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        """Duplicate channel names, and two channels on one device attribute."""
        problems: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        wired: dict[tuple[str, str], int] = {}
        for i, ch in enumerate(self.channels):
            if ch.name in seen:
                problems.append((f"sensing.channels[{i}].name",
                                 f"duplicate channel name {ch.name!r} (also channels[{seen[ch.name]}])"))
            seen.setdefault(ch.name, i)
            key = (ch.device, ch.channel)
            if key in wired:
                problems.append((f"sensing.channels[{i}].channel",
                                 f"{ch.device} {ch.channel} is already channels[{wired[key]}]"))
            wired.setdefault(key, i)
        return problems


def _make(cfg: Config, layout: Layout) -> SampleSource:
    from ..iio import IioSource
    assert isinstance(cfg.sensing, IioSensing)
    return IioSource(cfg.sensing)


register("iio", IioSensing, _make)
