"""What a running unit answers to ``shelfcal`` and to the store back-end: tare / re-zero of plates,
rest checks, raw samples, per-channel diagnostics and calibration reloads.

One code path for every requester: `shelfcal` over the local control socket, the store back-end
over MQTT (``{topic_base}/req/tare`` → ``.../res/tare``), and `shelfcal` itself when no daemon
runs (it then opens the drivers and hosts this same object in-process). All handlers run in the
sample thread (``in_pipeline``) between two blocks, so they read the ring buffer and swap the
calibration without locks, and each answers at once: waiting for a plate to come to rest is the
requester's job (it polls ``rest``), never the sample loop's.

Rest, level and noise are judged on raw counts from :class:`RawRing`, the last ~20 s of samples
with their fault flags, so a tare uses exactly the samples the drivers produced.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import calstate
from .calstate import CalibrationError, CalibrationState, ChannelCal
from .control import CommandError, Commands, Request
from .layout import Layout, Plate
from .sensing.base import HX711_MAX, Flag, SampleBlock, SampleSource

if TYPE_CHECKING:
    from .config import Config
    from .pipeline import Pipeline

log = logging.getLogger(__name__)

ADC_HALF_RANGE = float(HX711_MAX + 1)  # 2^23 counts: "offset as a share of the range"
DEFAULT_WINDOW_S = 1.5                 # rest window for a tare or a calibration point
SUSPICIOUS_OFFSET_SHARE = 0.5          # a zero beyond half the ADC range leaves little headroom
MAX_RAW_ROWS = 20_000                  # one `raw` reply at most (≈ 5 min at 60 Hz on one channel)
NOISE_WINDOW_S = 3.0                   # `shelfcal diag` and `shelfcal live` judge noise over this


# ---------------------------------------------------------------- raw sample history


class RawRing:
    """The last ``seconds`` of raw rows (values NaN where flagged), fed by the sample loop."""

    def __init__(self, channels: list[str], rate_hz: float, seconds: float = 20.0):
        self.channels = list(channels)
        self.cap = max(64, int(math.ceil(seconds * rate_hz)))
        c = len(channels)
        self.t = np.full(self.cap, np.nan)
        self.v = np.full((self.cap, c), np.nan)
        self.f = np.zeros((self.cap, c), dtype=np.uint8)
        self.n = 0  # rows ever fed

    def feed(self, block: SampleBlock) -> None:
        k = len(block)
        if not k:
            return
        if k > self.cap:
            block = SampleBlock(block.t[-self.cap:], block.values[-self.cap:], block.flags[-self.cap:])
            self.n += k - self.cap
            k = self.cap
        idx = (self.n + np.arange(k)) % self.cap
        self.t[idx] = block.t
        self.v[idx] = block.values
        self.f[idx] = block.flags
        self.n += k

    def last(
        self, seconds: float | None = None, since: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows in time order: the last ``seconds`` (by sample time) and/or those after ``since``."""
        k = min(self.n, self.cap)
        idx = (self.n - k + np.arange(k)) % self.cap
        t, v, f = self.t[idx], self.v[idx], self.f[idx]
        if k and seconds is not None:
            keep = t > t[-1] - seconds
            t, v, f = t[keep], v[keep], f[keep]
        if since is not None:
            keep = t > since
            t, v, f = t[keep], v[keep], f[keep]
        return t, v, f

    @property
    def t_last(self) -> float | None:
        return None if self.n == 0 else float(self.t[(self.n - 1) % self.cap])


# ---------------------------------------------------------------- rest and noise


def white_sigma(x: np.ndarray) -> float:
    """Robust white-noise σ from first differences (immune to level changes and slow drift)."""
    x = x[~np.isnan(x)]
    if len(x) < 4:
        return float("nan")
    d = np.diff(x)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def noise_g(grams: np.ndarray) -> float | None:
    """The noise figure shelfcal shows (diag per channel, live per plate, report): the white σ
    of a gram series (NaN where a sample was flagged), None below 4 samples. A channel is the
    series of its own grams, a plate the sum of its channels'."""
    sig = white_sigma(grams)
    return None if math.isnan(sig) else round(sig, 3)


def assess_rest(values: np.ndarray, flags: np.ndarray, rate_hz: float, window_s: float,
                scales: list[float | None]) -> dict[str, Any]:
    """Is a plate (its channels' raw columns) at rest over the window, and at what level?

    Rest: the means of four consecutive quarters of the window agree within what the plate's own
    noise allows (6σ/√m for white noise plus 0.5σ for the slow part), never tighter than 0.2 g
    (or 20 counts on an uncalibrated channel). A mass still being set down, a hand on the plate
    or a creeping cell moves the quarter means far more than that; ringing averages out.
    Works on the plate's gram sum when every channel has a scale, else channel by channel."""
    n, c = values.shape
    need = max(8, int(0.8 * window_s * rate_hz))
    good = flags == 0
    out: dict[str, Any] = {"samples": int(n), "good": int(good.all(axis=1).sum()),
                           "saturated": int(np.count_nonzero(flags & Flag.SATURATED)),
                           "faults": int(np.count_nonzero(flags)), "rest": False}
    sat_reason = f"{out['saturated']} saturated samples: the cell is at the ADC rail (overload or a broken wire)"
    if n == 0 or out["good"] < need:
        out["reason"] = sat_reason if out["saturated"] else \
            "no data" if out["good"] == 0 else f"only {out['good']} good samples of {need} needed"
        return out
    v = values[good.all(axis=1)]
    means = np.nanmean(v, axis=0)
    out["level_counts"] = [float(m) for m in means]
    sig_c = [white_sigma(v[:, j]) for j in range(c)]
    out["sigma_counts"] = sig_c
    calibrated = all(s is not None for s in scales)
    if calibrated:
        series = [(v / np.array(scales, dtype=float)).sum(axis=1)]
        floors = [0.2]
    else:
        series = [v[:, j] for j in range(c)]
        floors = [20.0] * c
    spreads, limits = [], []
    for x, floor in zip(series, floors):
        q = np.array_split(x, 4)
        qm = np.array([a.mean() for a in q])
        m = min(len(a) for a in q)
        s = white_sigma(x)
        spreads.append(float(np.ptp(qm)))
        limits.append(float(max(floor, 6.0 * s / math.sqrt(m) + 0.5 * s)))
    out["spread"] = max(spreads)
    out["limit"] = limits[int(np.argmax(np.array(spreads) - np.array(limits)))]
    out["units"] = "g" if calibrated else "counts"
    if calibrated:
        out["sigma_g"] = white_sigma(series[0])
    out["rest"] = bool(all(s <= lim for s, lim in zip(spreads, limits))) and out["saturated"] == 0
    if out["saturated"]:
        out["reason"] = sat_reason
    elif not out["rest"]:
        out["reason"] = f"moving by {out['spread']:.1f} {out['units']} (limit {out['limit']:.1f})"
    return out


# ---------------------------------------------------------------- the handlers


class UnitControl:
    """The unit's control surface. ``pipeline`` may be None (shelfcal on an uncalibrated unit)."""

    def __init__(self, cfg: Config, layout: Layout, channels: list[str], rate_hz: float, state_dir: Path,
                 pipeline: Pipeline | None = None, source: SampleSource | None = None,
                 on_calibration: Callable[[CalibrationState], None] | None = None):
        self.cfg = cfg
        self.layout = layout
        self.channels = list(channels)
        self.col = {c: i for i, c in enumerate(self.channels)}
        self.rate_hz = float(rate_hz)
        self.state_dir = Path(state_dir)
        self.pipeline = pipeline
        self.source = source
        self.ring = RawRing(self.channels, self.rate_hz)
        self.on_calibration = on_calibration
        self.calibration: CalibrationState | None = pipeline.calibration if pipeline is not None else None
        self.counters = {"tares": 0, "reloads": 0}

    # ------------------------------------------------------------ wiring

    def feed(self, block: SampleBlock) -> None:
        self.ring.feed(block)

    def register(self, commands: Commands) -> None:
        for name, fn in (("info", self.info), ("snapshot", self.snapshot), ("raw", self.raw),
                         ("rest", self.rest), ("tare", self.tare), ("rezero", self.rezero),
                         ("calibration_reload", self.calibration_reload), ("maintenance", self.maintenance)):
            commands.register(name, fn, in_pipeline=True)

    # ------------------------------------------------------------ helpers

    def plate(self, name: Any) -> Plate:
        """``"shelf/plate"``, or a bare plate id when only one shelf has it."""
        s = str(name).strip()
        if "/" in s:
            shelf, _, pid = s.rpartition("/")
            try:
                return self.layout.plate(shelf, int(pid))
            except (KeyError, ValueError):
                pass
        else:
            hits = [p for p in self.layout.plates if str(p.id) == s]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise CommandError(f"plate {s} is on shelves {', '.join(p.shelf for p in hits)}: "
                                   f"write it as {hits[0].shelf}/{s}")
        known = ", ".join(p.key for p in self.layout.plates)
        raise CommandError(f"no plate {s!r} on this unit; plates are {known}")

    def _plates_arg(self, req: Request) -> list[Plate]:
        raw = req.args.get("plates", req.args.get("plate"))
        if raw is None:
            raise CommandError("name the plate(s): {\"plates\": [\"1/2\"]}")
        names = raw if isinstance(raw, list) else [raw]
        if not names:
            raise CommandError("plates is empty")
        return [self.plate(n) for n in names]

    def _scale(self, ch: str) -> float | None:
        cal = self.calibration.channels.get(ch) if self.calibration else None
        return cal.scale if cal else None

    def _window(self, req: Request) -> float:
        try:
            w = float(req.args.get("window_s", DEFAULT_WINDOW_S))
        except (TypeError, ValueError):
            raise CommandError("window_s must be a number of seconds") from None
        if not 0.3 <= w <= 15.0:
            raise CommandError(f"window_s must be 0.3..15 s, got {w}")
        return w

    def _assess(self, plate: Plate, window_s: float) -> dict[str, Any]:
        t, v, f = self.ring.last(window_s)
        cols = [self.col[c] for c in plate.channels]
        out = assess_rest(v[:, cols], f[:, cols], self.rate_hz, window_s,
                          [self._scale(c) for c in plate.channels])
        out["plate"] = plate.key
        out["channels"] = list(plate.channels)
        out["t"] = self.ring.t_last
        if out.get("level_counts") and self.calibration is not None and all(self._scale(c) for c in plate.channels):
            cal = self.calibration.channels
            out["grams"] = float(sum((m - cal[c].offset) / cal[c].scale
                                     for m, c in zip(out["level_counts"], plate.channels)))
        return out

    # ------------------------------------------------------------ read-only commands

    def info(self, req: Request) -> dict[str, Any]:
        cal = self.calibration
        return {"unit_id": self.cfg.unit_id, "store_id": self.cfg.store_id, "backend": self.cfg.sensing.backend,
                "rate_hz": self.rate_hz, "channels": self.channels,
                "plates": [{"key": p.key, "channels": list(p.channels), "capacity_g": p.capacity_g}
                           for p in self.layout.plates],
                "calibration_id": cal.calibration_id if cal else None,
                "calibrated_channels": sorted(cal.channels) if cal else [],
                "t": self.ring.t_last, "running": self.pipeline is not None,
                "maintenance": self._maintenance_left()}

    def _maintenance_left(self) -> dict[str, float]:
        """Plates in maintenance → seconds left (what shelfcal restores when it is done)."""
        held = getattr(self.pipeline, "maintenance", None) or {}
        now = time.monotonic()
        return {k: round(u - now, 1) for k, u in held.items() if u > now}

    def rest(self, req: Request) -> dict[str, Any]:
        return {"plates": {p.key: self._assess(p, self._window(req)) for p in self._plates_arg(req)}}

    def raw(self, req: Request) -> dict[str, Any]:
        chans = req.args.get("channels") or self.channels
        if isinstance(chans, str):
            chans = [chans]
        bad = [c for c in chans if c not in self.col]
        if bad:
            raise CommandError(
                f"unknown channel(s) {', '.join(map(str, bad))}; channels are {', '.join(self.channels)}"
            )
        since = req.args.get("since")
        seconds = req.args.get("seconds")
        t, v, f = self.ring.last(float(seconds) if seconds is not None else None,
                                 float(since) if since is not None else None)
        t, v, f = t[-MAX_RAW_ROWS:], v[-MAX_RAW_ROWS:], f[-MAX_RAW_ROWS:]
        cols = [self.col[c] for c in chans]
        return {"t": [float(x) for x in t], "t_last": self.ring.t_last,
                "values": {c: [None if math.isnan(x) else int(x) for x in v[:, j]] for c, j in zip(chans, cols)},
                "flags": {c: [int(x) for x in f[:, j]] for c, j in zip(chans, cols)}}

    def snapshot(self, req: Request) -> dict[str, Any]:
        """Per channel: what `shelfcal diag` judges; per plate: what `shelfcal live` shows."""
        seconds = float(req.args.get("seconds", NOISE_WINDOW_S))
        t, v, f = self.ring.last(seconds)
        grams = {}  # channel → its grams over the window (NaN where flagged), when calibrated
        for ch, j in self.col.items():
            cal = self.calibration.channels.get(ch) if self.calibration else None
            if cal is not None:
                grams[ch] = np.where(f[:, j] == 0, (v[:, j] - cal.offset) / cal.scale, np.nan)
        span = float(t[-1] - t[0]) + 1.0 / self.rate_hz if len(t) else 0.0
        counters = self.source.counters() if self.source is not None else {}
        diags = {}
        if self.source is not None and hasattr(self.source, "diagnostics"):
            try:
                diags = {ch: _plain(d) for ch, d in self.source.diagnostics().items()}
            except Exception:  # diagnostics are a bonus, never a failure
                log.warning("diagnostics() failed", exc_info=True)
        chans = {}
        for ch, j in self.col.items():
            col, fl = v[:, j], f[:, j]
            good = col[fl == 0]
            cal = self.calibration.channels.get(ch) if self.calibration else None
            sig = white_sigma(good) if len(good) >= 4 else float("nan")
            ref = cal.offset if cal else (float(np.mean(good)) if len(good) else float("nan"))
            chans[ch] = {
                "samples": int(len(fl)), "good": int(len(good)),
                "measured_sps": round(len(good) / span, 2) if span > 0 else 0.0,
                "expected_sps": self.rate_hz,
                "timeouts": int(np.count_nonzero(fl & Flag.TIMEOUT)),
                "glitches": int(np.count_nonzero(fl & Flag.GLITCH)),
                "saturations": int(np.count_nonzero(fl & Flag.SATURATED)),
                "missing": int(np.count_nonzero(fl & Flag.MISSING)),
                "timing": int(np.count_nonzero(fl & Flag.TIMING)),
                "distinct_values": int(len(np.unique(good))),
                "mean_counts": None if not len(good) else float(np.mean(good)),
                "noise_counts": None if math.isnan(sig) else round(sig, 2),
                "noise_g": noise_g(grams[ch]) if ch in grams else None,
                "offset_share": None if math.isnan(ref) else round(abs(ref) / ADC_HALF_RANGE, 4),
                "scale": cal.scale if cal else None,
                "since_start": counters[ch].as_dict() if ch in counters else None,
                "diagnostics": diags.get(ch),
            }
        plates = {}
        pipe = self.pipeline
        states = pipe.detector.plate_states() if pipe is not None else []
        for p in self.layout.plates:
            d: dict[str, Any] = {"channels": list(p.channels), "capacity_g": p.capacity_g}
            if pipe is not None:
                g = pipe.last_grams[p.index]
                d.update(weight_g=None if math.isnan(g) else round(float(g), 1), state=states[p.index])
            else:
                d.update(weight_g=None, state="uncalibrated")
            # the same figure as diag's per channel (one-channel plates: equal), over the same window
            calibrated = bool(p.channels) and all(c in grams for c in p.channels)
            d["noise_g"] = noise_g(sum((grams[c] for c in p.channels), np.zeros(len(t)))) if calibrated else None
            plates[p.key] = d
        return {"t": self.ring.t_last, "seconds": round(span, 2), "unit_id": self.cfg.unit_id,
                "calibration_id": self.calibration.calibration_id if self.calibration else None,
                "channels": chans, "plates": plates}

    # ------------------------------------------------------------ commands that change state

    def tare(self, req: Request) -> dict[str, Any]:
        """Zero plates: the plate (empty, or holding ``load_g`` known grams) must be at rest over
        the last ``window_s``; its channels' offsets become the rest level. Refuses a suspicious
        zero (far from the last one, or near the ADC rail) unless ``force`` is true."""
        plates = self._plates_arg(req)
        try:
            load_g = float(req.args.get("load_g", 0.0))
        except (TypeError, ValueError):
            raise CommandError("load_g must be a number of grams") from None
        force = bool(req.args.get("force", False))
        window = self._window(req)
        # who is on record in calibration.json: shelfcal's --technician, else the requester's identity
        technician = str(req.args.get("technician") or req.identity)
        new: dict[str, ChannelCal] = {}
        report: dict[str, Any] = {}
        warnings_all: list[str] = []
        for p in plates:
            if load_g < 0 or load_g > p.capacity_g:
                raise CommandError(f"load_g must be 0..{p.capacity_g:g} g (plate {p.key}'s rating), got {load_g:g}")
            missing = [c for c in p.channels if self._scale(c) is None]
            if missing:
                raise CommandError(f"plate {p.key} is not calibrated yet (channel {missing[0]}): "
                                   f"run `shelfcal calibrate --plate {p.key}`")
            cal = self.calibration
            assert cal is not None  # its channels (a plate has one at least) all have a scale
            a = self._assess(p, window)
            if not a["rest"]:
                raise CommandError(f"plate {p.key} is not at rest ({a.get('reason')}): "
                                   f"keep hands off the shelf and retry")
            warnings, offsets, shift = [], {}, 0.0
            share = load_g / len(p.channels)
            for ch, level in zip(p.channels, a["level_counts"]):
                old = cal.channels[ch]
                off = level - share * old.scale
                offsets[ch] = off
                shift += (off - old.offset) / old.scale
                if abs(off) > SUSPICIOUS_OFFSET_SHARE * ADC_HALF_RANGE:
                    warnings.append(f"channel {ch}: zero at {abs(off) / ADC_HALF_RANGE:.0%} of the ADC range "
                                    f"(little headroom: preloaded or miswired cell)")
                new[ch] = ChannelCal(off, old.scale, old.points)
            if abs(shift) > max(50.0, 0.02 * p.capacity_g):
                warnings.append(f"plate {p.key}: zero moved by {shift:+.1f} g since calibration "
                                f"{cal.calibration_id}: is something still on the plate?")
            report[p.key] = {"offsets": offsets, "shift_g": round(shift, 2), "warnings": warnings,
                             "noise_g": a.get("sigma_g")}
            warnings_all += warnings
        if warnings_all and not force:
            raise CommandError(f"suspicious zero: {warnings_all[0]}; send force=true to tare anyway")
        state = self._write(new, technician)
        self.counters["tares"] += 1
        log.info("tare of %s by %s (%s): calibration %s", ", ".join(report), technician, req.origin,
                 state.calibration_id)
        return {"calibration_id": state.calibration_id, "plates": report}

    def rezero(self, req: Request) -> dict[str, Any]:
        """The store back-end's re-zero: a tare of plates whose content it knows (``load_g``,
        required so a stocked plate is never zeroed by mistake)."""
        if "load_g" not in req.args:
            raise CommandError("rezero needs load_g: the grams the back-end knows are on the plate (0 if empty)")
        return self.tare(req)

    def maintenance(self, req: Request) -> dict[str, Any]:
        """Plates under a technician's hands: their weight changes are not events for ``seconds``
        (default 600, at most 3600; 0 ends it). The unit reports them in its status meanwhile."""
        plates = self._plates_arg(req)
        try:
            seconds = float(req.args.get("seconds", 600.0))
        except (TypeError, ValueError):
            raise CommandError("seconds must be a number") from None
        if not 0 <= seconds <= 3600:
            raise CommandError(f"seconds must be 0..3600, got {seconds:g}")
        if self.pipeline is None or not hasattr(self.pipeline, "set_maintenance"):
            return {"maintenance": {}}
        left = self.pipeline.set_maintenance([p.key for p in plates], seconds)
        log.info("maintenance %s for %s (%s)", "on" if seconds else "off", ", ".join(p.key for p in plates), req.origin)
        return {"maintenance": left}

    def calibration_reload(self, req: Request) -> dict[str, Any]:
        """Adopt the calibration file shelfcal just wrote. A bad file is refused; the one in
        force stays."""
        try:
            state = calstate.load(self.state_dir, self.cfg.unit_id)
        except CalibrationError as exc:
            raise CommandError(f"{exc}; the calibration in force is unchanged") from None
        if state is None:
            raise CommandError("no calibration.json in state_dir; the calibration in force is unchanged")
        changed = self._apply(state)
        self.counters["reloads"] += 1
        return {"calibration_id": state.calibration_id, "plates_rebaselined": changed}

    def _write(self, channels: dict[str, ChannelCal], technician: str) -> CalibrationState:
        try:
            state = calstate.update(self.state_dir, self.cfg.unit_id, channels, technician=technician)
        except CalibrationError as exc:
            raise CommandError(f"{exc}; nothing written") from None
        except OSError as exc:
            raise CommandError(f"cannot write calibration in {self.state_dir}: {exc.strerror}") from None
        self._apply(state)
        return state

    def _apply(self, state: CalibrationState) -> list[str]:
        self.calibration = state
        changed: list[str] = []
        if self.pipeline is not None:
            try:
                changed = self.pipeline.apply_calibration(state)
            except Exception as exc:  # noqa: BLE001 - e.g. a channel missing: keep running on the old
                raise CommandError(f"calibration {state.calibration_id} cannot be applied: {exc}") from None
        if self.on_calibration is not None:
            self.on_calibration(state)
        return changed


def _plain(d: Any) -> Any:
    if is_dataclass(d) and not isinstance(d, type):
        return {k: _plain(v) for k, v in asdict(d).items()}
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(x) for x in d]
    if isinstance(d, float) and math.isnan(d):
        return None
    return d
