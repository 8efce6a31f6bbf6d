"""Least-squares calibration of one channel and the checks that refuse a bad point.

counts = offset + scale · grams, fitted over the zero point and every known-mass point, with the
slope kept as a float (never rounded to an integer "reference unit"). Residuals are in grams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daemon.sensing.base import HX711_MAX, HX711_MIN

MIN_SCALE = 5.0          # counts/g: below this the mass made no real difference (20 kg cells give ~100)
MIN_CHANGE_SIGMA = 20.0  # a mass must move the reading by ≥ 20 σ of the channel's noise


@dataclass
class ChannelFit:
    channel: str
    offset: float
    scale: float
    residuals_g: list[float]
    capacity_g: float         # grams at which this channel reaches the ADC rail
    points: list[list[float]]  # [[grams on this channel, counts], ...]

    @property
    def max_residual_g(self) -> float:
        return max((abs(r) for r in self.residuals_g), default=0.0)


def fit_channel(channel: str, points: list[tuple[float, float]]) -> ChannelFit:
    """``points`` are (grams on this channel, mean counts); at least two distinct masses."""
    m = np.array([p[0] for p in points], dtype=float)
    c = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or np.ptp(m) <= 0:
        raise ValueError("need at least two different masses (the empty plate counts as one)")
    A = np.vstack([np.ones_like(m), m]).T
    (offset, scale), *_ = np.linalg.lstsq(A, c, rcond=None)
    offset, scale = float(offset), float(scale)
    res = (c - (offset + scale * m)) / scale if scale else np.full_like(m, math.nan)
    rail = HX711_MAX if scale > 0 else HX711_MIN
    capacity = (rail - offset) / scale if scale else math.nan
    return ChannelFit(channel, offset, scale, [float(r) for r in res], float(capacity),
                      [[float(a), float(b)] for a, b in zip(m, c)])


def duplicate_mass(mass_g: float, masses_so_far: list[float]) -> str | None:
    for prev in masses_so_far:
        if abs(prev - mass_g) < max(1.0, 0.02 * max(prev, mass_g)):
            return (f"{mass_g:g} g is the same as the {prev:g} g point already recorded: "
                    f"use a clearly different mass")
    return None


def check_point(mass_g: float, counts: list[float], zero: list[float], sigma_counts: list[float],
                masses_so_far: list[float]) -> str | None:
    """Why a new point must be refused, or None. ``counts``/``zero``/``sigma_counts`` per channel."""
    dup = duplicate_mass(mass_g, masses_so_far)
    if dup:
        return dup
    for i, (c, z) in enumerate(zip(counts, zero)):
        change = abs(c - z)
        sig = sigma_counts[i] if sigma_counts[i] and not math.isnan(sigma_counts[i]) else 0.0
        if change < max(MIN_CHANGE_SIGMA * sig, MIN_SCALE * mass_g / len(counts)):
            return (f"the reading moved by only {change:.0f} counts for {mass_g:g} g (noise {sig:.0f} counts): "
                    f"is the mass on this plate, and is the plate free of the shelf edge?")
    return None
