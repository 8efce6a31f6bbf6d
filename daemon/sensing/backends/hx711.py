"""Backend ``hx711``: HX711 chips bit-banged on GPIO pins (driver: :mod:`daemon.sensing.hx711_gpio`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ...registry import StrictModel
from ..registry import SensingSettings, register

if TYPE_CHECKING:
    from ...config import Config
    from ...layout import Layout
    from ..base import SampleSource


class Hx711Chip(StrictModel):
    name: str
    dout: int = Field(ge=0, le=53)  # BCM pin numbers
    sck: int = Field(ge=0, le=53)
    gain: Literal[128, 64, 32] = 128  # 128/64 = channel A, 32 = channel B


class Hx711Sensing(SensingSettings):
    backend: Literal["hx711"]
    rate_hz: Literal[10, 80] = 10  # the chip's RATE pin
    read_deadline_ms: int = Field(300, ge=20, le=5000)
    chips: list[Hx711Chip] = Field(min_length=1)

    def channel_names(self) -> list[str]:
        return [c.name for c in self.chips]

    def problems(self, cfg: Config) -> list[tuple[str, str]]:
        """Duplicate chip names, and any pin used twice: shared DOUT or SCK, a DOUT on another
        chip's SCK, a chip's DOUT on its own SCK. Each reader thread owns its two pins; shared
        pins corrupt both words."""
        problems: list[tuple[str, str]] = []
        names: dict[str, int] = {}
        for i, chip in enumerate(self.chips):
            if chip.name in names:
                problems.append((f"sensing.chips[{i}].name",
                                 f"duplicate chip name {chip.name!r} (also chips[{names[chip.name]}])"))
            names.setdefault(chip.name, i)
        owner: dict[int, tuple[int, str]] = {}
        for i, chip in enumerate(self.chips):
            for role, pin in (("dout", chip.dout), ("sck", chip.sck)):
                if pin in owner:
                    j, other = owner[pin]
                    if j == i:
                        what = f"GPIO {pin} is also this chip's {other}: DOUT and SCK need two pins"
                    elif other == role:
                        what = (f"GPIO {pin} is already chips[{j}].{other} ({self.chips[j].name!r}): "
                                f"every chip needs its own {role.upper()}")
                    else:
                        what = (f"GPIO {pin} is already chips[{j}].{other} ({self.chips[j].name!r}): "
                                f"a {role.upper()} wired to another chip's {other.upper()}")
                    problems.append((f"sensing.chips[{i}].{role}", what))
                else:
                    owner[pin] = (i, role)
        return problems


def _make(cfg: Config, layout: Layout) -> SampleSource:
    from ..hx711_gpio import Hx711Source
    assert isinstance(cfg.sensing, Hx711Sensing)
    return Hx711Source(cfg.sensing)


register("hx711", Hx711Sensing, _make)
