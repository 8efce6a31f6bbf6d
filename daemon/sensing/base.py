"""The one small interface every load-cell backend implements.

A backend produces :class:`SampleBlock` s: rows of simultaneous-enough readings, one column per
channel, with a per-sample integrity flag. Hardware backends deliver raw ADC counts; recordings of
already-calibrated stores (AiFi) deliver grams. Nothing here knows about plates, events or MQTT.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np


class Flag(enum.IntFlag):
    """Per-sample acquisition conditions (Klipper-style named faults). 0 means a good sample."""

    OK = 0
    TIMEOUT = 1      # chip never became ready before the deadline (value is NaN)
    GLITCH = 2       # a 2^n-1 style word: 0x7FFFFF, 0x800000, 0xFFFFFF, or a desync read
    SATURATED = 4    # ADC at its rail (legitimately clipped, weight unknown)
    MISSING = 8      # no value at all (NaN in a recording, dead channel)
    TIMING = 16      # the read was preempted / clock held high too long; value rejected


# 24-bit two's complement rails of the HX711.
HX711_MAX = 0x7FFFFF
HX711_MIN = -0x800000


@dataclass
class SampleBlock:
    """``n`` consecutive sample rows of ``c`` channels.

    t:      (n,) float64, epoch seconds of each row
    values: (n, c) float64, raw counts (``units == "counts"``) or grams (``units == "g"``);
            NaN wherever ``flags`` is not OK
    flags:  (n, c) uint8, :class:`Flag` bits
    """

    t: np.ndarray
    values: np.ndarray
    flags: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.t)
        if self.values.shape[0] != n or self.flags.shape != self.values.shape:
            raise ValueError(
                f"SampleBlock shapes disagree: t={self.t.shape} values={self.values.shape} "
                f"flags={self.flags.shape}"
            )

    def __len__(self) -> int:
        return len(self.t)


@dataclass
class ChannelCounters:
    """Acquisition counters per channel, reported in `health` and by `shelfcal diag`."""

    samples: int = 0
    timeouts: int = 0
    glitches: int = 0
    saturations: int = 0
    missing: int = 0
    timing: int = 0

    def count(self, flags: np.ndarray) -> None:
        self.samples += int(np.count_nonzero(flags == 0))
        self.timeouts += int(np.count_nonzero(flags & Flag.TIMEOUT))
        self.glitches += int(np.count_nonzero(flags & Flag.GLITCH))
        self.saturations += int(np.count_nonzero(flags & Flag.SATURATED))
        self.missing += int(np.count_nonzero(flags & Flag.MISSING))
        self.timing += int(np.count_nonzero(flags & Flag.TIMING))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@runtime_checkable
class SampleSource(Protocol):
    """What every backend offers. Implementations: hx711_gpio, iio, sim, replay."""

    #: channel names, in column order of every block
    channels: list[str]
    #: nominal sample rate per channel
    rate_hz: float
    #: "counts" (needs calibration) or "g" (already grams)
    units: Literal["counts", "g"]

    def start(self) -> None: ...

    def read(self, timeout: float = 1.0) -> SampleBlock | None:
        """Next block; an empty block when nothing arrived within ``timeout``; None at end of
        stream (recordings and finite simulations only)."""

    def close(self) -> None: ...

    def counters(self) -> dict[str, ChannelCounters]: ...


def counters_for(channels: list[str]) -> dict[str, ChannelCounters]:
    return {c: ChannelCounters() for c in channels}


@dataclass
class GroundTruthEvent:
    """What really happened on a simulated shelf (written by the simulator, read by benchmarks)."""

    type: str            # pick | put_back | lean | press | glitch | drift ...
    sku: str | None
    quantity: int
    time: float          # epoch seconds, middle of the interaction
    shelf: str
    plates: list[int] = field(default_factory=list)
    kind: str = ""       # scenario label: light, multi, two_plate, simultaneous, misplaced ...


class CounterBank:
    """Vectorised counters for sources with hundreds of channels (whole-store recordings)."""

    _FIELDS = (("timeouts", Flag.TIMEOUT), ("glitches", Flag.GLITCH), ("saturations", Flag.SATURATED),
               ("missing", Flag.MISSING), ("timing", Flag.TIMING))

    def __init__(self, channels: list[str]):
        self.channels = list(channels)
        self.samples = np.zeros(len(channels), dtype=np.int64)
        self.bits = {name: np.zeros(len(channels), dtype=np.int64) for name, _ in self._FIELDS}

    def count(self, flags: np.ndarray) -> None:
        self.samples += np.count_nonzero(flags == 0, axis=0)
        if flags.any():
            for name, bit in self._FIELDS:
                self.bits[name] += np.count_nonzero(flags & bit, axis=0)

    def as_counters(self) -> dict[str, ChannelCounters]:
        return {c: ChannelCounters(int(self.samples[i]), *(int(self.bits[n][i]) for n, _ in self._FIELDS))
                for i, c in enumerate(self.channels)}
