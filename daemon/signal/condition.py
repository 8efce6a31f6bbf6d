"""Counts → grams per plate, and the clean-up every detector needs first.

Stages, each cheap and vectorised over plates:
1. calibration: grams = (counts - offset) / scale per channel (skipped for gram recordings);
2. plate sum: a plate is the sum of its channels; a sample is missing if any channel is;
3. gap fill: short gaps (flagged or NaN samples) hold the last good value, so one lost word does
   not look like a weight change; long gaps mark the plate *unavailable* and the detector re-learns
   its baseline when data returns;
4. spike rejection: a running median over ``median_samples`` removes single-sample bit errors
   (a flipped high bit is a jump of 2^k counts that no hand can make in one sample).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..calstate import CalibrationState
from ..layout import Layout
from ..sensing.base import SampleBlock

log = logging.getLogger(__name__)


class UncalibratedError(Exception):
    pass


@dataclass
class Conditioned:
    t: np.ndarray          # (n,)
    grams: np.ndarray      # (n, P) filtered plate weights, no NaN where available
    available: np.ndarray  # (n, P) bool: False inside a long gap (value is meaningless)
    raw_grams: np.ndarray  # (n, P) before median/gap fill, NaN where missing (for health/noise)


class Conditioner:
    def __init__(self, layout: Layout, channels: list[str], units: str,
                 calibration: CalibrationState | None, rate_hz: float,
                 median_samples: int = 3, max_gap_s: float = 0.5):
        self.layout = layout
        col = {c: i for i, c in enumerate(channels)}
        P = len(layout.plates)
        # channel→plate summing matrix: plate = raw @ M
        self.M = np.zeros((len(channels), P))
        missing = []
        for p in layout.plates:
            for ch in p.channels:
                if ch not in col:
                    missing.append(ch)
                    continue
                self.M[col[ch], p.index] = 1.0
        if missing:
            raise ValueError(f"source provides no channel(s) {', '.join(missing)}")
        self.used = self.M.sum(axis=1) > 0
        # most plates have one channel each: a column gather is far cheaper than a matmul
        self._single = None
        if (self.M.sum(axis=0) == 1).all():
            self._single = np.argmax(self.M, axis=0)
        if units == "counts":
            if calibration is None:
                raise UncalibratedError("no calibration in state_dir: run `shelfcal calibrate` first")
            absent = [c for c in channels if self.used[col[c]] and c not in calibration.channels]
            if absent:
                raise UncalibratedError(f"calibration {calibration.calibration_id} lacks channel(s) "
                                        f"{', '.join(absent)}: run `shelfcal calibrate`")
            self.offset = np.array([calibration.channels[c].offset if c in calibration.channels else 0.0
                                    for c in channels])
            self.scale = np.array([calibration.channels[c].scale if c in calibration.channels else 1.0
                                   for c in channels])
        else:
            self.offset = np.zeros(len(channels))
            self.scale = np.ones(len(channels))
        self.k = max(1, int(median_samples)) | 1  # odd
        self.max_gap = max(1, int(round(max_gap_s * rate_hz)))
        self._last = np.full(P, np.nan)          # last good plate value (gap fill)
        self._gap = np.zeros(P, dtype=np.int64)  # consecutive missing samples
        self._tail = np.empty((0, P))            # last k-1 filled samples for the running median

    def process(self, block: SampleBlock) -> Conditioned:
        vals = np.where(block.flags == 0, block.values, np.nan)
        g = (vals - self.offset) / self.scale
        if self._single is not None:
            plate = g[:, self._single]
        else:
            g[:, ~self.used] = 0.0
            plate = g @ self.M if g.size else np.empty((0, self.M.shape[1]))
        raw = plate.copy()
        n, P = plate.shape
        nan = np.isnan(plate)
        if nan.any():
            # forward fill: each missing sample takes the last good one (from earlier blocks too)
            ext = np.vstack([self._last[None, :], plate])
            good = ~np.isnan(ext)
            idx = np.where(good, np.arange(n + 1)[:, None], 0)
            np.maximum.accumulate(idx, axis=0, out=idx)
            filled_ext = ext[idx, np.arange(P)[None, :]]
            # run length of missing samples, carried across blocks
            run = np.zeros((n + 1, P), dtype=np.int64)
            run[0] = self._gap
            for i in range(1, n + 1):  # n is a block (≈12 rows); vectorised over plates
                run[i] = np.where(good[i], 0, run[i - 1] + 1)
            self._gap = run[-1]
            plate = filled_ext[1:]
            avail = (run[1:] <= self.max_gap) & ~np.isnan(plate)
        else:
            self._gap[:] = 0
            avail = np.ones((n, P), dtype=bool)
        if n:
            last_good = ~np.isnan(plate[-1])
            self._last[last_good] = plate[-1, last_good]
        filled = np.where(np.isnan(plate), 0.0, plate)
        if self.k > 1 and n:
            ext = np.vstack([self._tail, filled])
            if len(ext) >= self.k:
                win = np.lib.stride_tricks.sliding_window_view(ext, self.k, axis=0)
                med = np.median(win, axis=-1)
                # first rows may lack history at stream start: keep them unfiltered
                out = np.vstack([filled[: n - len(med)], med]) if len(med) < n else med[-n:]
            else:
                out = filled
            self._tail = ext[-(self.k - 1):]
            # the median lags (k-1)/2 samples (17 ms at 60 Hz): far below the settle window,
            # so sample times are left as they are
            filled = out
        return Conditioned(block.t, filled, avail, raw)
