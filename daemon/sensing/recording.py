"""The project's own recording format, written by ``shelfd record`` and read by ``shelfd replay``.

JSON lines, so a technician can inspect, cut or mail one, and a damaged line is reported by number:
  line 1: {"format": "gondola.recording/1", "unit_id", "channels", "rate_hz", "units",
           "calibration": {...} | null, "created"}
  then one line per block: {"t": b64 float64[n], "v": b64 float64[n*c], "f": b64 uint8[n*c]}
Raw samples are stored (counts for hardware units) with the calibration that was in force, so a
replay reproduces exactly what the unit saw, and can also be re-run under a newer calibration.
A unit with a camera also writes ``<file>.frames`` beside it (JPEG frames with timestamps and the
plate ROIs in force; ``daemon/vision/framefile.py``); ``shelfd replay`` uses it when present.
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import jsonlines
from ..jsonlines import create_with_header
from .base import ChannelCounters, CounterBank, SampleBlock
from .pacing import Pacer
from .replay_aifi import RecordingError

FORMAT = "gondola.recording/1"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


class RecordingWriter:
    def __init__(self, path: Path, channels: list[str], rate_hz: float, units: str, unit_id: str,
                 calibration: dict[str, Any] | None = None):
        self.path = Path(path)
        self._fh: IO[str] = create_with_header(self.path, {
            "format": FORMAT, "unit_id": unit_id, "channels": channels, "rate_hz": rate_hz, "units": units,
            "calibration": calibration})
        self.rows = 0

    def write(self, block: SampleBlock) -> None:
        if not len(block):
            return
        line = {"t": _b64(block.t.astype("<f8")), "v": _b64(block.values.astype("<f8")),
                "f": _b64(block.flags.astype("u1"))}
        self._fh.write(json.dumps(line) + "\n")
        self.rows += len(block)

    def close(self) -> None:
        self._fh.flush()
        self._fh.close()


def _check_header(h: dict[str, Any]) -> None:
    h["channels"] = [str(c) for c in h["channels"]]
    h["rate_hz"] = float(h["rate_hz"])
    if h["units"] not in ("counts", "g"):
        raise ValueError(f"units {h['units']!r}")


def read_header(path: Path) -> dict[str, Any]:
    return jsonlines.read_header(Path(path), FORMAT, _check_header, error=RecordingError, missing="not found",
                                 noun="recording", header_noun="recording header")


class ShelfdReplaySource:
    def __init__(self, path: Path, speed: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.path = Path(path)
        self.header = read_header(self.path)
        self.channels = self.header["channels"]
        self.rate_hz = self.header["rate_hz"]
        self.units = self.header["units"]
        self.speed = speed
        self._clock, self._sleep = clock, sleep
        self._fh: IO[str] | None = None
        self._line = 1
        self._counters = CounterBank(self.channels)
        self._pacer = Pacer(speed, clock, sleep)

    def start(self) -> None:
        self._fh = open(self.path, encoding="utf-8")
        self._fh.readline()
        self._line = 1

    def read(self, timeout: float = 1.0) -> SampleBlock | None:
        return self._pacer.next(self._next_block, timeout)

    def _next_block(self) -> SampleBlock | None:
        if self._fh is None:
            self.start()
        fh = self._fh
        assert fh is not None  # start() opened it
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError:
                raise RecordingError(f"{self.path}:{self._line + 1}: not text") from None
            if not line:
                return None
            self._line += 1
            if line.strip():
                break
        c = len(self.channels)
        try:
            d = json.loads(line)
            t = np.frombuffer(base64.b64decode(d["t"], validate=True), dtype="<f8")
            v = np.frombuffer(base64.b64decode(d["v"], validate=True), dtype="<f8").reshape(len(t), c)
            f = np.frombuffer(base64.b64decode(d["f"], validate=True), dtype="u1").reshape(len(t), c)
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"{self.path}:{self._line}: corrupt or truncated block "
                                 f"({exc.__class__.__name__}: {exc})") from None
        block = SampleBlock(t.astype(np.float64), v.astype(np.float64), f.astype(np.uint8))
        self._counters.count(block.flags)
        return block

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None

    def counters(self) -> dict[str, ChannelCounters]:
        return self._counters.as_counters()
