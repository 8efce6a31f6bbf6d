"""Simulated shelf unit (``sensing.backend: sim``): raw HX711 counts from a physical model.

Detection is tuned against this simulator and then scored on held-out real traces the same way,
so the model errs on the side of the physics real shelves show (AiFi/CMU AutoCheckout, AIM3S):

* every channel is a load cell behind an HX711: counts = offset + scale * grams, rounded to a
  24-bit integer, clipped at the rails; the technician's calibration (``factory_calibration``)
  knows offset and scale, optionally wrong by ``scale_error``;
* every facing holds real units whose weights are drawn once (a few % spread, like the AIM3S
  weighings); a pick removes *that* unit, so Δ is never exactly the nominal unit weight; a unit
  lying across two plates loads each by the lever rule;
* a shopper's hand presses the plate before it lifts the item (contact transient), the shelf
  flexes so neighbouring plates swing 50–230 g with no net change (AiFi), and a plate-on-spring
  rings after release at a frequency that falls with the load it carries (f ∝ 1/√m);
* leans and presses load and unload the shelf with no net change: detectors must not report them;
* background: temperature-like drift, white noise with AiFi's spread across plates, slow 1/f-ish
  noise, flagged glitch words, unflagged bit flips, dead channels.

Everything is drawn from numpy generators seeded by ``sensing.seed``, split into independent
streams (world, shoppers, noise) so the same seed gives the same shoppers at any noise level.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import numpy.typing as npt

from ..calstate import CalibrationState, ChannelCal
from ..layout import Layout, Placement
from .base import HX711_MAX, HX711_MIN, ChannelCounters, Flag, GroundTruthEvent, SampleBlock, counters_for
from .sim_script import ScriptedInteraction, load_script

if TYPE_CHECKING:  # the driver needs its config, not the config module (no import cycle)
    from ..config import Config
    from .backends.sim import SimSensing

log = logging.getLogger(__name__)

EPOCH_2026 = 1767225600.0  # 2026-01-01T00:00:00Z; simulated time starts here (+ a day per seed)
BLOCK_S = 0.1              # one read() returns about this much signal
LEAD_IN_S = 3.0            # quiet start: the daemon needs a rest baseline before shoppers arrive
SHELF_GAP_S = 1.0          # a shelf rests (force-free) this long between two shoppers' interactions
LIGHT_MAX_G = 80.0         # "light" items: where the AIM3S-style baseline misses most events

# Scenario mix per shopper arrival (weights, renormalised over the kinds the planogram allows).
KIND_WEIGHTS = {
    "single": 0.32, "light": 0.13, "multi": 0.10, "two_plate": 0.10, "simultaneous": 0.08,
    "put_back": 0.10, "misplaced": 0.05, "lean": 0.07, "press": 0.05,
}
REAL_PER_ARRIVAL = 1.0 + KIND_WEIGHTS["simultaneous"] - KIND_WEIGHTS["lean"] - KIND_WEIGHTS["press"]


# ---------------------------------------------------------------- waveform primitives


FloatArray = npt.NDArray[np.floating[Any]]


def _smoothstep(x: FloatArray) -> FloatArray:
    """0→1 with zero slope at both ends: forces from hands and bodies have no corners."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _envelope(tt: FloatArray, rise: float, fall: float, dur: float) -> FloatArray:
    return _smoothstep(tt / rise) * _smoothstep((dur - tt) / fall)


def _ring(tt: FloatArray, t0: float, amp: float, freq: float, tau: float) -> FloatArray:
    """Damped oscillation of the plate-on-load-cell spring after a force change at ``t0``."""
    x = tt - t0
    out: FloatArray = amp * np.exp(-np.maximum(x, 0.0) / tau) * np.sin(2 * np.pi * freq * x)
    out[x < 0] = 0.0
    return out


@dataclass
class _Modulation:
    """Multiplicative fluctuation of a held force: a few sinusoids of random frequency and phase."""

    rel: FloatArray     # relative amplitude of each component
    freq: FloatArray    # Hz
    phase: FloatArray

    def __call__(self, tt: FloatArray) -> FloatArray:
        wobble: FloatArray = (self.rel[:, None] * np.sin(2 * np.pi * self.freq[:, None] * tt
                                                         + self.phase[:, None])).sum(0)
        return 1.0 + wobble

    @classmethod
    def hand(cls, rng: np.random.Generator) -> _Modulation:
        # A reaching hand is not a weight: grip and push force wander by 10–30 % at 0.5–4 Hz while
        # fingers find the item (motor-control force tremor is band-limited, not a constant).
        k = 3
        rel = rng.uniform(0.10, 0.30) * rng.dirichlet(np.ones(k)) * math.sqrt(2.0)
        return cls(rel, rng.uniform(0.5, 4.0, k), rng.uniform(0, 2 * np.pi, k))

    @classmethod
    def sway(cls, rng: np.random.Generator) -> _Modulation:
        # Standing postural sway: one slow component of a few % at 0.3–2 Hz.
        return cls(np.array([rng.uniform(0.02, 0.06)]), np.array([rng.uniform(0.3, 2.0)]),
                   np.array([rng.uniform(0, 2 * np.pi)]))


@dataclass
class _Wave:
    """A force on one plate over ``[start, start+len(wave))``; afterwards the plate keeps ``delta``
    (the items moved). ``wave`` ends at ``delta`` so the handover to the static level is smooth."""

    plate: int
    start: int
    wave: np.ndarray
    delta: float

    @property
    def end(self) -> int:
        return self.start + len(self.wave)


@dataclass
class _Unit:
    weight: float              # true grams of this very unit
    split: np.ndarray          # its share on each plate of the facing (sums to 1)


@dataclass
class _Facing:
    placement: Placement
    plates: list[int]          # layout plate indices, in the placement's order
    units: list[_Unit]
    full: int                  # stock a restock brings it back to

    @property
    def sku(self) -> str:
        return self.placement.sku


@dataclass
class _Truth:
    event: GroundTruthEvent
    t_start: float
    t_end: float
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the source


class SimSource:
    """A shelf unit full of products and shoppers, delivering raw counts (``units == "counts"``).

    Extra knobs beyond the YAML (tests and benches): ``scale_error`` {channel: relative error of
    the factory calibration's scale}, ``plate_noise_g`` {"shelf/plate": white-noise σ overriding
    the lognormal draw}, ``drift_g_per_min`` (0 disables drift), ``sleep`` (injected for pacing).
    """

    units: Literal["counts", "g"] = "counts"

    def __init__(self, cfg: Config, layout: Layout, clock: Callable[[], float] = time.monotonic, *,
                 scale_error: dict[str, float] | None = None,
                 plate_noise_g: dict[str, float] | None = None,
                 drift_g_per_min: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if cfg.sensing.backend != "sim":
            raise ValueError("SimSource needs sensing.backend: sim")
        self.cfg = cfg
        self.sim = cast("SimSensing", cfg.sensing)
        self.layout = layout
        self._clock = clock
        self._sleep = sleep
        self.channels: list[str] = list(layout.channels)
        self.rate_hz = float(self.sim.rate_hz)
        self._dt = 1.0 / self.rate_hz
        self._block = max(1, round(BLOCK_S * self.rate_hz))
        self.t0 = EPOCH_2026 + 86400.0 * (self.sim.seed % 3650) if self.sim.t0 is None else float(self.sim.t0)
        self._total = None if self.sim.duration_s is None else int(round(self.sim.duration_s * self.rate_hz))
        world, shoppers, noise = (np.random.default_rng(s) for s in np.random.SeedSequence(self.sim.seed).spawn(3))
        self._rng_world, self._rng, self._rng_noise = world, shoppers, noise

        self._nplates = len(layout.plates)
        self._shelf_of = [p.shelf for p in layout.plates]
        self._shelf_idx = {s: [p.index for p in layout.shelf_plates(s)] for s in layout.shelves}
        # column → plate; a plate on several cells shares its load equally (the sum is what counts)
        self._ch_plate = np.array([p.index for p in layout.plates for _ in p.channels], dtype=int)
        self._ch_frac = np.array([1.0 / len(p.channels) for p in layout.plates for _ in p.channels])
        # YAML knobs first, constructor arguments (tests, benches) override them
        self._init_channels({**self.sim.scale_error, **(scale_error or {})})
        self._init_noise({**self.sim.plate_noise_g, **(plate_noise_g or {})},
                         self.sim.drift_g_per_min if drift_g_per_min is None else drift_g_per_min)
        self._init_stock()
        # what the sim camera starts from (read-only view: vision replays ``truth`` on top of it)
        self._initial_facings = [(f.sku, f.placement.shelf, tuple(f.placement.plates), len(f.units))
                                 for f in self._facings]

        self.ground_truth: list[GroundTruthEvent] = []
        self._truth: list[_Truth] = []
        self._active: list[_Wave] = []
        self._static = self._stock_loads()            # grams on each plate at rest, as rendered
        self._busy_until = {s: 0 for s in layout.shelves}  # sample index each shelf is free again
        self._in_hand: dict[str, list[float]] = {}    # units shoppers took, by SKU (put-backs)
        self._n = 0
        self._next_arrival = int(LEAD_IN_S * self.rate_hz) + self._poisson_gap()
        if not self.sim.shoppers:
            self._next_arrival = 1 << 62  # a service visit: nobody touches the shelves
        # sensing.script: a store simulation's plan replaces the random shoppers (and restocks)
        self._script = load_script(self.sim.script) if self.sim.script is not None else None
        self._script_i = 0
        if self._script is not None:
            self._next_arrival = 1 << 62
        self._placed: dict[str, float] = {}   # test masses from sensing.load_file, by plate key
        self._load_sig: tuple[int, int] | None = None
        self._counters = counters_for(self.channels)
        self._tallies = np.zeros((4, len(self.channels)), dtype=np.int64)  # ok, timeout, glitch, saturated
        self._started_wall: float | None = None
        self._closed = False
        log.info("sim unit %s: %d shelves, %d plates, %d channels, %d facings, seed %d, %s",
                 cfg.unit_id, len(layout.shelves), self._nplates, len(self.channels), len(self._facings),
                 self.sim.seed, "endless" if self._total is None else f"{self.sim.duration_s:.0f} s")

    # ------------------------------------------------------------ construction

    def _init_channels(self, scale_error: dict[str, float]) -> None:
        rng = self._rng_world
        c = len(self.channels)
        # Offsets: bridge imbalance + mounting preload of a real cell land anywhere in ±200k counts.
        self._offset = rng.uniform(-200_000, 200_000, c).round()
        # 100–450 counts/g spans 20 kg cells at 1–2 mV/V through 5 kg cells at gain 128; cells are
        # mounted either way up, so the sign is arbitrary.
        self._scale = rng.uniform(100.0, 450.0, c) * rng.choice([-1.0, 1.0], c)
        err = np.array([scale_error.get(ch, 0.0) for ch in self.channels])
        self._true_scale = self._scale * (1.0 + err)
        unknown = set(self.sim.dead_channels) - set(self.channels)
        if unknown:
            log.warning("dead_channels not in this layout, ignored: %s", ", ".join(sorted(unknown)))
        self._dead = np.array([ch in self.sim.dead_channels for ch in self.channels])

    def _init_noise(self, plate_noise_g: dict[str, float], drift_g_per_min: float) -> None:
        rng = self._rng_world
        # AiFi plates: σ median 0.7 g, p90 3 g, max 14 g → lognormal with s = ln(3/0.7)/1.2816.
        s = math.log(3.0 / 0.7) / 1.2816
        sig = self.sim.noise_g * np.exp(rng.normal(0.0, s, self._nplates))
        sig = np.minimum(sig, 20.0 * self.sim.noise_g)
        for p in self.layout.plates:
            if p.key in plate_noise_g:
                sig[p.index] = plate_noise_g[p.key]
        self.plate_noise_g = {p.key: float(sig[p.index]) for p in self.layout.plates}
        # Cells of one plate add their noise: each carries σ/√n so the plate sum has σ.
        nper = np.bincount(self._ch_plate, minlength=self._nplates)[self._ch_plate]
        self._white = sig[self._ch_plate] / np.sqrt(nper)
        # Slow noise (air currents, building vibration, supply ripple beat): AR(1), τ ≈ 1.5 s.
        self._lf_a = math.exp(-self._dt / 1.5)
        self._lf_sig = 0.3 * self._white
        self._lf = self._rng_noise.normal(0.0, 1.0, len(self.channels)) * self._lf_sig
        # Drift: one room temperature (periods of tens of minutes) seen through each cell's own
        # temperature coefficient; amplitude set so the steepest slope is ~drift_g_per_min.
        c = len(self.channels)
        self._temp_periods = np.array([rng.uniform(2400, 5400), rng.uniform(600, 1500)])
        self._temp_phase = rng.uniform(0, 2 * np.pi, 2)
        slope_per_unit = 2 * np.pi / self._temp_periods[0] * 60.0  # g/min per g of amplitude
        self._drift_amp = (drift_g_per_min / slope_per_unit) * rng.uniform(0.3, 1.0, c) * rng.choice([-1, 1], c)
        # Ringing: plate + load on a cell spring; f = f0·√(M/(M+load)) (6–15 Hz on real shelves).
        self._f0 = rng.uniform(11.0, 16.0, self._nplates)
        self._plate_mass = rng.uniform(1500.0, 4000.0, self._nplates)

    def _init_stock(self) -> None:
        rng = self._rng_world
        self._facings: list[_Facing] = []
        for pl in self.layout.placements:
            try:
                plates = [self.layout.plate(pl.shelf, pid).index for pid in pl.plates]
            except KeyError:
                log.warning("placement %s on unknown plate of shelf %s, skipped", pl.sku, pl.shelf)
                continue
            # Fill a facing to a couple of kg, as a stocker would: many light units, few heavy ones.
            full = pl.stock if pl.stock is not None else int(np.clip(6000.0 / pl.unit_weight_g, 8, 30))
            f = _Facing(pl, plates, [], max(full, 1))
            f.units = [self._new_unit(f, rng) for _ in range(full if self.sim.stocked else 0)]
            self._facings.append(f)
        self.foreign: dict[int, list[tuple[str, float]]] = {}  # misplaced units lying on a plate

    def _new_unit(self, f: _Facing, rng: np.random.Generator, weight: float | None = None) -> _Unit:
        pl = f.placement
        if weight is None:
            weight = max(0.2 * pl.unit_weight_g, rng.normal(pl.unit_weight_g, pl.unit_weight_sd_g))
        k = len(f.plates)
        split = np.zeros(k)
        if k == 1:
            split[0] = 1.0
        else:
            # Centre of mass somewhere along the facing; a rigid unit between two plate supports
            # loads them by the lever rule.
            u = rng.uniform(0.0, k - 1.0)
            j = min(int(u), k - 2)
            split[j], split[j + 1] = 1.0 - (u - j), u - j
        return _Unit(float(weight), split)

    def _stock_loads(self) -> np.ndarray:
        load = np.zeros(self._nplates)
        for f in self._facings:
            for u in f.units:
                load[f.plates] += u.weight * u.split
        for p, items in self.foreign.items():
            load[p] += sum(w for _, w in items)
        return load

    # ------------------------------------------------------------ public API

    def factory_calibration(self) -> CalibrationState:
        """What a technician measured: offset at empty plate and scale (without ``scale_error``)."""
        chans = {ch: ChannelCal(float(self._offset[i]), float(self._scale[i]),
                                [[0.0, float(self._offset[i])],
                                 [1000.0, float(self._offset[i] + 1000.0 * self._scale[i])]])
                 for i, ch in enumerate(self.channels)}
        return CalibrationState(unit_id=self.cfg.unit_id, channels=chans, technician="sim",
                                source="sim-factory")

    def true_calibration(self) -> CalibrationState:
        """The cells' real offset and scale (``scale_error`` included): what a perfect technician
        would measure. Tests compare shelfcal's fit with it; the daemon never sees it."""
        chans = {ch: ChannelCal(float(self._offset[i]), float(self._true_scale[i]))
                 for i, ch in enumerate(self.channels)}
        return CalibrationState(unit_id=self.cfg.unit_id, channels=chans, technician="truth",
                                source="sim-truth")

    def plate_loads_g(self) -> dict[str, float]:
        """True grams of items resting on each plate at the current stream position (no forces,
        drift or noise): the reference a calibrated, settled pipeline should read."""
        return {p.key: float(self._static[p.index]) for p in self.layout.plates}

    def initial_facings(self) -> list[tuple[str, str, tuple[int, ...], int]]:
        """(sku, shelf, plate ids, units) of every facing as stocked before sample 0. With
        ``truth`` (what changed when and where) it is all a simulated camera needs to draw the
        shelf at any past instant; a read-only view, so sensing never imports vision."""
        return list(self._initial_facings)

    @property
    def stream_time(self) -> float:
        """Epoch time of the next sample ``read`` will deliver: the simulated "now"."""
        return self.t0 + self._n * self._dt

    @property
    def truth(self) -> list[dict[str, Any]]:
        """Ground truth with timing and per-plate weight changes (what the JSON file holds)."""
        return [self._truth_json(t) for t in sorted(self._truth, key=lambda t: t.event.time)]

    def start(self) -> None:
        if self._started_wall is None:
            self._started_wall = self._clock()
            if self.sim.t0 is not None:
                # sample 0 is due at wall time t0: units of one store stay on one clock however
                # late each daemon started (a late one catches up as fast as it can)
                self._started_wall -= time.time() - self.sim.t0

    def read(self, timeout: float = 1.0) -> SampleBlock | None:
        self.start()
        a = self._n
        if self._total is not None and a >= self._total:
            return None
        n = self._block if self._total is None else min(self._block, self._total - a)
        if self.sim.speed > 0:
            assert self._started_wall is not None  # start() set it
            due = self._started_wall + (a + n) * self._dt / self.sim.speed
            wait = due - self._clock()
            if wait > timeout:
                self._sleep(max(timeout, 0.0))
                return self._empty()
            if wait > 0:
                self._sleep(wait)
        self._schedule_until(a + n)
        self._poll_load_file(a)
        block = self._render(a, n)
        self._n = a + n
        self._tally(block.flags)
        return block

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.sim.ground_truth is not None:
            self.write_ground_truth(self.sim.ground_truth)

    def counters(self) -> dict[str, ChannelCounters]:
        for i, ch in enumerate(self.channels):
            c = self._counters[ch]
            c.samples, c.timeouts, c.glitches, c.saturations = (int(v) for v in self._tallies[:, i])
        return self._counters

    def _tally(self, flags: np.ndarray) -> None:
        # numpy running sums per block; ChannelCounters are filled on demand (24 channels × 10 Hz
        # of per-channel Python calls would cost more than rendering the signal itself)
        self._tallies += np.stack([(flags == 0).sum(0), (flags & Flag.TIMEOUT).astype(bool).sum(0),
                                   (flags & Flag.GLITCH).astype(bool).sum(0),
                                   (flags & Flag.SATURATED).astype(bool).sum(0)])

    def write_ground_truth(self, path: str | Path) -> Path:
        """The scorer's format (``shared/checks/score.py``): only real events under ``events``;
        leans, presses and glitches under ``non_events`` so they are not counted as misses."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.truth
        doc: dict[str, Any] = {"time_tolerance_s": 3.0, "source": "gondola-sim", "seed": self.sim.seed,
               "t0": self.t0, "events": [r for r in rows if r["type"] in ("pick", "put_back")],
               "non_events": [r for r in rows if r["type"] not in ("pick", "put_back")]}
        path.write_text(json.dumps(doc, indent=1))
        log.info("ground truth: %d events, %d non-events → %s", len(doc["events"]), len(doc["non_events"]), path)
        return path

    # ------------------------------------------------------------ rendering

    def _empty(self) -> SampleBlock:
        c = len(self.channels)
        return SampleBlock(np.zeros(0), np.zeros((0, c)), np.zeros((0, c), dtype=np.uint8))

    def _render(self, a: int, n: int) -> SampleBlock:
        b = a + n
        idx = np.arange(a, b)
        t = self.t0 + idx * self._dt
        load = np.repeat(self._static[None, :], n, axis=0)
        still: list[_Wave] = []
        for w in self._active:
            if w.start >= b:
                still.append(w)
                continue
            lo, hi = max(w.start, a), min(w.end, b)
            if hi > lo:
                load[lo - a:hi - a, w.plate] += w.wave[lo - w.start:hi - w.start]
            if w.end <= b:
                # the force is gone; what moved stays
                load[max(w.end, a) - a:, w.plate] += w.delta
                self._static[w.plate] += w.delta
            else:
                still.append(w)
        self._active = still

        grams = load[:, self._ch_plate] * self._ch_frac
        if np.any(self._drift_amp):
            ts = (idx * self._dt)[:, None]
            temp = (np.sin(2 * np.pi * ts / self._temp_periods[0] + self._temp_phase[0])
                    + 0.5 * np.sin(2 * np.pi * ts / self._temp_periods[1] + self._temp_phase[1]))
            grams = grams + temp * self._drift_amp
        rng = self._rng_noise
        c = len(self.channels)
        if np.any(self._white):
            grams = grams + rng.standard_normal((n, c)) * self._white
            lf = np.empty((n, c))
            innov = rng.standard_normal((n, c)) * (self._lf_sig * math.sqrt(1 - self._lf_a ** 2))
            x = self._lf
            for i in range(n):
                x = self._lf_a * x + innov[i]
                lf[i] = x
            self._lf = x
            grams = grams + lf

        counts = np.rint(self._offset + self._true_scale * grams)
        flags = np.zeros((n, c), dtype=np.uint8)
        sat = (counts > HX711_MAX) | (counts < HX711_MIN)
        flags[sat] |= np.uint8(Flag.SATURATED)
        rate = self.sim.glitch_rate
        if rate > 0:
            u = rng.random((n, c))
            flags[u < rate] |= np.uint8(Flag.GLITCH)
            # A bit-banged read that loses a clock edge flips one bit yet looks like a valid word:
            # the driver cannot flag it, the signal stage must reject it as an absurd jump.
            flip = (u >= rate) & (u < 1.2 * rate) & (flags == 0) & ~self._dead[None, :]
            if flip.any():
                rows, cols = np.nonzero(flip)
                bits = rng.integers(12, 23, len(rows))
                raw = counts[rows, cols].astype(np.int64) & 0xFFFFFF
                raw ^= (np.int64(1) << bits)
                counts[rows, cols] = ((raw ^ 0x800000) - 0x800000).astype(float)
                for r, col in zip(rows, cols):
                    plate = self.layout.plates[int(self._ch_plate[col])]
                    self._add_truth("glitch", None, 0, float(t[r]), plate.shelf, [plate.id], "bitflip",
                                    float(t[r]), float(t[r]), channel=self.channels[col])
        flags[:, self._dead] = np.uint8(Flag.TIMEOUT)
        values = np.where(flags == 0, counts, np.nan)
        return SampleBlock(t, values, flags)

    # ------------------------------------------------------------ test masses (sensing.load_file)

    def _poll_load_file(self, at: int) -> None:
        """Apply changes of ``sensing.load_file`` ({"shelf/plate": grams}) as a technician's hands
        would: the mass is set down over ~0.3 s and the plate rings. Sim-only; cheap (one stat)."""
        path = self.sim.load_file
        if path is None:
            return
        try:
            st = os.stat(path)
        except OSError:
            if self._load_sig is None:
                return
            self._load_sig, want = None, {}
        else:
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._load_sig:
                return
            try:
                want = json.loads(Path(path).read_text() or "{}")
                if not isinstance(want, dict):
                    raise ValueError("not a JSON object")
                want = {str(k): float(v) for k, v in want.items()}
            except (OSError, ValueError, TypeError) as exc:
                log.warning("sensing.load_file %s unreadable (%s); test masses unchanged", path, exc)
                return
            self._load_sig = sig
        keys = {p.key: p.index for p in self.layout.plates}
        for key in set(want) | set(self._placed):
            if key not in keys:
                log.warning("sensing.load_file: no plate %r in this layout, ignored", key)
                continue
            delta = want.get(key, 0.0) - self._placed.get(key, 0.0)
            if abs(delta) < 1e-9:
                continue
            self._placed[key] = want.get(key, 0.0)
            p = keys[key]
            ramp, tau = 0.3, 0.15
            length = int(math.ceil((0.1 + ramp + 8 * tau) * self.rate_hz))
            tt = np.arange(length) * self._dt
            freq = float(
                np.clip(
                    self._f0[p]
                    * math.sqrt(self._plate_mass[p] / (self._plate_mass[p] + self._static[p] + max(delta, 0))),
                    6.0,
                    15.0,
                )
            )
            taper = np.ones(length)
            ntap = max(2, int(0.25 * 8 * tau * self.rate_hz))
            taper[-ntap:] = 0.5 * (1 + np.cos(np.linspace(0, np.pi, ntap)))
            w = delta * _smoothstep((tt - 0.1) / ramp) + _ring(tt, 0.1 + ramp, 0.1 * abs(delta), freq, tau) * taper
            w[-1] = delta
            self._active.append(_Wave(p, at, w, float(delta)))
            log.info("sim: %+.1f g placed on plate %s (now %.1f g of test masses)", delta, key, self._placed[key])

    # ------------------------------------------------------------ shoppers

    def _poisson_gap(self) -> int:
        return max(1, int(self._rng.exponential(60.0 / self.sim.events_per_min) * self.rate_hz))

    def _schedule_until(self, b: int) -> None:
        while self._script is not None and self._script_i < len(self._script):
            entry = self._script[self._script_i]
            s = int(round(entry.t * self.rate_hz))
            if s >= b:
                break
            self._script_i += 1
            self._scripted(entry, max(s, self._n))
        while self._next_arrival < b:
            s = self._next_arrival
            self._next_arrival = s + self._poisson_gap()
            self._arrival(s)

    def _fits(self, start: int, length_s: float) -> bool:
        """Interactions must finish (and settle) inside a finite run, or their truth is unverifiable."""
        return self._total is None or start + int((length_s + SHELF_GAP_S) * self.rate_hz) < self._total

    def _free_shelves(self, s: int) -> list[str]:
        return [sh for sh, until in self._busy_until.items() if until <= s]

    def _pick_facing(self, kind: str, s: int, exclude_shelf: str | None = None) -> tuple[_Facing, list[int]] | None:
        """A facing fit for ``kind`` on a free shelf (or the earliest free one) and the units' indices."""
        rng = self._rng
        need = int(rng.integers(2, 5)) if kind == "multi" else 1

        def ok(f: _Facing) -> bool:
            if f.placement.shelf == exclude_shelf or len(f.units) < need:
                return False
            if kind == "light":
                return f.placement.unit_weight_g <= LIGHT_MAX_G
            if kind == "two_plate":
                return len(f.plates) >= 2 and any(u.split.max() <= 0.8 for u in f.units)
            if kind == "single":
                return len(f.plates) == 1 or not any(len(g.plates) == 1 for g in self._facings)
            return True

        cands = [f for f in self._facings if ok(f)]
        if not cands:
            return None
        free = set(self._free_shelves(s))
        pool = [f for f in cands if f.placement.shelf in free] or \
            [min(cands, key=lambda f: self._busy_until[f.placement.shelf])]
        f = pool[int(rng.integers(len(pool)))]
        if kind == "two_plate":
            straddling = [i for i, u in enumerate(f.units) if u.split.max() <= 0.8]
            return f, [straddling[int(rng.integers(len(straddling)))]]
        return f, list(rng.choice(len(f.units), need, replace=False))

    def _arrival(self, s: int) -> None:
        rng = self._rng
        kinds = list(KIND_WEIGHTS)
        p = np.array([KIND_WEIGHTS[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        if kind in ("lean", "press"):
            self._non_event(kind, s)
        elif kind in ("put_back", "misplaced"):
            self._put_back(kind, s)
        elif kind == "simultaneous":
            first = self._pick(kind, s)
            if first is not None:
                # a second shopper on another shelf, starting while the first is still busy
                start, dur = first
                s2 = start + int(rng.uniform(0.1, 0.8) * dur * self.rate_hz)
                self._pick(kind, s2, exclude_shelf=self._shelf_of_last_truth())
        else:
            if self._pick(kind, s) is None and kind != "single":
                self._pick("single", s)

    def _shelf_of_last_truth(self) -> str | None:
        return self._truth[-1].event.shelf if self._truth else None

    def _start_on(self, shelf: str, s: int) -> int:
        return max(s, self._busy_until[shelf])

    def _pick(self, kind: str, s: int, exclude_shelf: str | None = None) -> tuple[int, float] | None:
        chosen = self._pick_facing(kind, s, exclude_shelf)
        if chosen is None:
            return None
        f, which = chosen
        if kind == "simultaneous" and exclude_shelf is not None and self._busy_until[f.placement.shelf] > s:
            return None  # no other shelf free right now: not simultaneous after all
        start = self._start_on(f.placement.shelf, s)
        dur = self._rng.uniform(1.0, 3.5)
        if not self._fits(start, dur + 2.5):
            return None
        units = [f.units[i] for i in which]
        for i in sorted(which, reverse=True):
            del f.units[i]
        deltas = np.zeros(self._nplates)
        for u in units:
            np.add.at(deltas, f.plates, -u.weight * u.split)
        self._in_hand.setdefault(f.sku, []).extend(u.weight for u in units)
        self._interaction("pick", f.sku, len(units), f.placement.shelf, deltas, start, dur, kind,
                          unit_weights_g=[round(u.weight, 3) for u in units])
        if len(f.units) < 2 and self._script is None:
            self._restock(f)
        return start, dur

    def _put_back(self, kind: str, s: int) -> None:
        rng = self._rng
        free = set(self._free_shelves(s))
        pool = [f for f in self._facings if f.placement.shelf in free] or self._facings
        if not pool:
            return
        f = pool[int(rng.integers(len(pool)))]
        start = self._start_on(f.placement.shelf, s)
        dur = rng.uniform(1.0, 3.5)
        if not self._fits(start, dur + 2.5):
            return
        deltas = np.zeros(self._nplates)
        if kind == "misplaced":
            # a unit of a SKU that belongs elsewhere, dropped on one plate of this facing
            others = [g for g in self._facings if g.sku != f.sku and not set(g.plates) & set(f.plates)]
            if not others:
                return self._put_back("put_back", s)
            g = others[int(rng.integers(len(others)))]
            w = self._take_from_hand(g)
            plate = f.plates[int(rng.integers(len(f.plates)))]
            deltas[plate] = w
            self.foreign.setdefault(plate, []).append((g.sku, w))
            sku = g.sku
        else:
            u = self._new_unit(f, rng, self._take_from_hand(f))
            f.units.append(u)
            np.add.at(deltas, f.plates, u.weight * u.split)
            sku, w = f.sku, u.weight
        self._interaction("put_back", sku, 1, f.placement.shelf, deltas, start, dur, kind,
                          unit_weights_g=[round(w, 3)])

    def _take_from_hand(self, f: _Facing) -> float:
        """Shoppers put back what they took (its true weight); a fresh unit if nobody holds one."""
        held = self._in_hand.get(f.sku)
        if held:
            return held.pop(int(self._rng.integers(len(held))))
        return self._new_unit(f, self._rng).weight

    def _restock(self, f: _Facing) -> None:
        """A stocker refills a facing running dry: a real, multi-unit put-back on the shelf."""
        shelf = f.placement.shelf
        start = self._busy_until[shelf] + int(self._rng.uniform(5.0, 30.0) * self.rate_hz)
        dur = self._rng.uniform(2.0, 4.0)
        if not self._fits(start, dur + 2.5):
            return
        k = max(1, min(f.full - len(f.units), 8))
        new = [self._new_unit(f, self._rng) for _ in range(k)]
        f.units.extend(new)
        deltas = np.zeros(self._nplates)
        for u in new:
            np.add.at(deltas, f.plates, u.weight * u.split)
        self._interaction("put_back", f.sku, k, shelf, deltas, start, dur, "restock",
                          unit_weights_g=[round(u.weight, 3) for u in new])

    def _non_event(self, kind: str, s: int, shelf: str | None = None) -> None:
        rng = self._rng
        if shelf is None:
            free = self._free_shelves(s) or [min(self._busy_until, key=self._busy_until.__getitem__)]
            shelf = free[int(rng.integers(len(free)))]
        plates = self._shelf_idx[shelf]
        start = self._start_on(shelf, s)
        if kind == "lean":
            # A forearm or hip on the shelf edge: 0.3–3 kg over 2–5 adjacent plates for 1–8 s,
            # with body sway (a standing person oscillates at 0.3–2 Hz by a few %).
            dur = rng.uniform(1.0, 8.0)
            width = min(len(plates), int(rng.integers(2, 6)))
            first = int(rng.integers(0, len(plates) - width + 1))
            touched = plates[first:first + width]
            total = math.exp(rng.uniform(math.log(300.0), math.log(3000.0)))
            share = rng.dirichlet(np.full(width, 2.0))
            force = dict(zip(touched, total * share))
            sway = _Modulation.sway(rng)
            rise, fall = rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
        else:
            # A hand pressing on a plate (steadying oneself, pushing a product back): 150 g–1.5 kg.
            dur = rng.uniform(0.4, 1.5)
            touched = [plates[int(rng.integers(len(plates)))]]
            force = {touched[0]: math.exp(rng.uniform(math.log(150.0), math.log(1500.0)))}
            sway = _Modulation.hand(rng)
            rise, fall = rng.uniform(0.1, 0.3) * dur, rng.uniform(0.1, 0.3) * dur
        if not self._fits(start, dur + 2.5):
            return
        waves, t_end_s = self._forces(shelf, force, np.zeros(self._nplates), start, dur, rise, fall,
                                      sway=sway, lift_at=None, neighbours=(kind == "press"))
        t_quiet = self._commit(waves, shelf, start)
        ids = [self.layout.plates[p].id for p in touched]
        t_a = self.t0 + start * self._dt
        self._add_truth(kind, None, 0, t_a + t_end_s / 2, shelf, ids, kind, t_a, t_a + t_end_s,
                        t_quiet=round(t_quiet, 3), peak_g=round(float(sum(force.values())), 1))

    # ------------------------------------------------------------ scripted interactions

    def _scripted(self, e: ScriptedInteraction, s: int) -> None:
        """Perform one planned interaction at sample ``s`` (``sensing.script``), with the same
        physics as a random shopper's. The plan keeps shelves apart; an overlap is logged."""
        rng = self._rng
        if self._busy_until.get(e.shelf, 0) > s:
            log.warning("script: shelf %s still busy at t=%.2f s; %s performed anyway", e.shelf, e.t, e.type)
        if e.type in ("lean", "press"):
            self._non_event(e.type, s, shelf=e.shelf)
            return
        sku = e.sku
        assert sku is not None  # load_script requires a sku for a pick or a put_back
        dur = e.dur if e.dur is not None else float(rng.uniform(1.0, 3.5))
        info = {k: v for k, v in (("script_id", e.id), ("session_id", e.session_id)) if v is not None}
        own = [f for f in self._facings if f.sku == sku and f.placement.shelf == e.shelf
               and (not e.plates or set(f.plates) & {self.layout.plate(e.shelf, p).index for p in e.plates})]
        deltas = np.zeros(self._nplates)
        if e.type == "pick":
            if not own:
                log.warning("script: no facing of %s on shelf %s at t=%.2f s; pick skipped", sku, e.shelf, e.t)
                return
            f = own[0]
            q = min(e.quantity, len(f.units))
            if q < e.quantity:
                log.warning("script: facing %s on shelf %s holds %d, %d planned", sku, e.shelf, q, e.quantity)
            if q == 0:
                return
            which = sorted(rng.choice(len(f.units), q, replace=False).tolist(), reverse=True)
            units = [f.units.pop(i) for i in which]
            for u in units:
                np.add.at(deltas, f.plates, -u.weight * u.split)
            self._in_hand.setdefault(f.sku, []).extend(u.weight for u in units)
            self._interaction("pick", f.sku, q, e.shelf, deltas, s, dur, "scripted",
                              unit_weights_g=[round(u.weight, 3) for u in units], **info)
            return
        weights: list[float] = []
        if own:                      # back where it belongs
            f = own[0]
            for _ in range(e.quantity):
                u = self._new_unit(f, rng, self._take_from_hand(f))
                f.units.append(u)
                np.add.at(deltas, f.plates, u.weight * u.split)
                weights.append(u.weight)
            self._interaction("put_back", sku, e.quantity, e.shelf, deltas, s, dur, "scripted",
                              unit_weights_g=[round(w, 3) for w in weights], **info)
            return
        # misplaced: set down on a plate that is not this product's facing
        pids = e.plates or [p.id for p in self.layout.shelf_plates(e.shelf)]
        plate = self.layout.plate(e.shelf, pids[0] if e.plates else pids[int(rng.integers(len(pids)))]).index
        home = next((f for f in self._facings if f.sku == sku), None)
        for _ in range(e.quantity):
            held = self._in_hand.get(sku)
            if held:
                w = held.pop(int(rng.integers(len(held))))
            elif e.unit_weight_g is not None:
                sd = e.unit_weight_sd_g or max(1.5, 0.025 * e.unit_weight_g)
                w = max(0.2 * e.unit_weight_g, float(rng.normal(e.unit_weight_g, sd)))
            elif home is not None:
                w = self._new_unit(home, rng).weight
            else:  # script_problems() rejects such a script up front
                raise ValueError(f"script: put_back of {sku!r} at t={e.t} needs unit_weight_g "
                                 "(no facing of it on this unit)")
            weights.append(w)
            self.foreign.setdefault(plate, []).append((sku, w))
        deltas[plate] = sum(weights)
        self._interaction("put_back", sku, e.quantity, e.shelf, deltas, s, dur, "misplaced",
                          unit_weights_g=[round(w, 3) for w in weights], **info)

    # ------------------------------------------------------------ physics of one interaction

    def _interaction(self, typ: str, sku: str, qty: int, shelf: str, deltas: np.ndarray, start: int,
                     dur: float, kind: str, **extra: Any) -> None:
        rng = self._rng
        moved = np.abs(deltas)
        total = moved.sum()
        # The hand presses where the item is: contact force shared like the item's weight.
        amp = rng.uniform(150.0, 600.0)
        force = {int(p): amp * moved[p] / total for p in np.nonzero(moved > 0)[0]}
        rise = rng.uniform(0.2, min(0.8, dur / 3))
        fall = rng.uniform(0.2, min(0.8, dur / 3))
        # the item leaves (or lands) while the hand holds on: somewhere in the hold phase
        lift_at = rng.uniform(rise, dur - fall)
        waves, t_end_s = self._forces(shelf, force, deltas, start, dur, rise, fall,
                                      sway=_Modulation.hand(rng),
                                      lift_at=lift_at, neighbours=True)
        t_quiet = self._commit(waves, shelf, start)
        thresh = 0.05 * total
        ids = [self.layout.plates[p].id for p in range(self._nplates) if moved[p] >= thresh]
        t_a = self.t0 + start * self._dt
        self._add_truth(typ, sku, qty, t_a + t_end_s / 2, shelf, ids, kind, t_a, t_a + t_end_s,
                        t_quiet=round(t_quiet, 3), delta_g=round(float(deltas.sum()), 3),
                        plate_delta_g={str(self.layout.plates[p].id): round(float(deltas[p]), 3)
                                       for p in np.nonzero(moved > 0)[0]}, **extra)

    def _forces(self, shelf: str, force: dict[int, float], deltas: np.ndarray, start: int, dur: float,
                rise: float, fall: float, *, sway: _Modulation, lift_at: float | None,
                neighbours: bool) -> tuple[list[_Wave], float]:
        """Waves for every plate of ``shelf`` touched directly (``force``), moved (``deltas``) or
        swinging along. Returns them and the time after ``start`` at which the shelf is at rest."""
        rng = self._rng
        shelf_plates = self._shelf_idx[shelf]
        tau = rng.uniform(0.1, 0.3)
        tail = 8.0 * tau
        length = int(math.ceil((dur + tail) * self.rate_hz))
        tt = np.arange(length) * self._dt
        env = _envelope(tt, rise, fall, dur)
        mod = sway(tt)
        env_sway = env * mod
        # Ring-down must die out exactly at the end of the wave so the static level takes over.
        taper = np.ones(length)
        ntap = max(2, int(0.25 * tail * self.rate_hz))
        taper[-ntap:] = 0.5 * (1 + np.cos(np.linspace(0, np.pi, ntap)))
        touched = set(force) | {int(p) for p in np.nonzero(deltas)[0]}
        waves: list[_Wave] = []
        for p in shelf_plates:
            load = self._static[p]
            freq = float(
                np.clip(self._f0[p] * math.sqrt(self._plate_mass[p] / (self._plate_mass[p] + load)), 6.0, 15.0)
            )
            if p in touched:
                f = force.get(p, 0.0)
                w = f * env_sway
                ringing_amp = rng.uniform(0.05, 0.25) * (f + abs(deltas[p]))
                if lift_at is not None and deltas[p] != 0.0:
                    ramp = rng.uniform(0.1, 0.3)
                    w = w + deltas[p] * _smoothstep((tt - lift_at) / ramp)
                    # an item snatched off (or set down on) the plate kicks it into ringing too
                    w = w + _ring(tt, lift_at + ramp, rng.uniform(0.1, 0.3) * abs(deltas[p]), freq, tau)
            elif neighbours:
                # shelf flex: nearby plates swing with the contact, up or down, no net change
                dist = min(abs(shelf_plates.index(p) - shelf_plates.index(q)) for q in touched)
                if dist > 2:
                    continue
                amp = rng.uniform(50.0, 230.0) * (0.35 ** (dist - 1)) * rng.choice([-1.0, 1.0])
                lag = rng.uniform(0.0, 0.1)
                # the same hand force, through the shelf's flex, so neighbours move with it
                w = amp * _envelope(tt - lag, rise, fall, dur) * mod
                ringing_amp = rng.uniform(0.1, 0.3) * abs(amp)
            else:
                continue
            w = w + _ring(tt, dur, ringing_amp, freq, tau) * taper
            w[-1] = deltas[p]  # exact handover; the taper has already brought the wave there
            waves.append(_Wave(p, start, w, float(deltas[p])))
        return waves, dur + 3.0 * tau  # ringing below noise after ~3τ

    def _commit(self, waves: list[_Wave], shelf: str, start: int) -> float:
        """Start the waves; the shelf is busy until the last ring-down is over, plus a gap.
        Returns the epoch time at which every force is gone (``t_quiet`` in the truth)."""
        self._active.extend(waves)
        end = max(w.end for w in waves)
        self._busy_until[shelf] = max(self._busy_until[shelf], end + int(SHELF_GAP_S * self.rate_hz))
        return self.t0 + end * self._dt

    def _add_truth(self, typ: str, sku: str | None, qty: int, t: float, shelf: str, plates: list[int],
                   kind: str, t_start: float, t_end: float, **extra: Any) -> None:
        ev = GroundTruthEvent(type=typ, sku=sku, quantity=qty, time=t, shelf=shelf, plates=sorted(plates), kind=kind)
        self.ground_truth.append(ev)
        self._truth.append(_Truth(ev, t_start, t_end, extra))

    @staticmethod
    def _truth_json(t: _Truth) -> dict[str, Any]:
        e = t.event
        return {"type": e.type, "sku": e.sku, "quantity": e.quantity, "time": round(e.time, 3),
                "shelf": e.shelf, "plates": e.plates, "kind": e.kind,
                "t_start": round(t.t_start, 3), "t_end": round(t.t_end, 3), **t.extra}


def expected_real_events(duration_s: float, events_per_min: float) -> float:
    """Roughly how many pick/put_back events a run of ``duration_s`` produces (restocks aside)."""
    return duration_s / 60.0 * events_per_min * REAL_PER_ARRIVAL
