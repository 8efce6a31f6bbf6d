"""The technician's steps, independent of how they are asked for (prompts or --yes flags).

Each step talks to the unit only through a link's ``call`` (daemon socket or in-process drivers),
and writes calibration only through :func:`daemon.calstate.update` (lock, temp file, fsync,
rename, previous kept). Points of an unfinished calibration live in a small session file next to
the calibration (``shelfcal-session.json``), so a scripted calibration can span several
invocations (tare, then one `calibrate --mass-g` per mass) and a killed shelfcal loses nothing
that was in force.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import calstate
from daemon.atomicfile import atomic_write
from daemon.calstate import CalibrationError, CalibrationState, ChannelCal
from daemon.control_handlers import ADC_HALF_RANGE, SUSPICIOUS_OFFSET_SHARE
from daemon.exitcodes import EX_CANTCREAT, EX_DATAERR, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from daemon.timefmt import now_iso

from .errors import ShelfcalError
from .fit import ChannelFit, check_point, fit_channel

if TYPE_CHECKING:
    from daemon.config import Config

    from .link import DaemonLink, LocalUnit

SESSION = "shelfcal-session.json"
SESSION_MAX_AGE_S = 3600.0  # a calibration session's zero is trusted this long
LOG = "shelfcal-log.jsonl"

Progress = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------- unit facts


@dataclass
class PlateInfo:
    key: str
    channels: list[str]
    capacity_g: float


class Unit:
    """The unit shelfcal works on: plates from the config at once (so bad input is refused before
    any hardware is touched), the link to its load cells opened on first use."""

    def __init__(self, cfg: Config, connect: Callable[[], DaemonLink | LocalUnit]):
        from daemon.sensing.factory import layout_for
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.unit_id = cfg.unit_id
        layout = layout_for(cfg)
        self.plates = {p.key: PlateInfo(p.key, list(p.channels), p.capacity_g) for p in layout.plates}
        self._connect = connect
        self._link: DaemonLink | LocalUnit | None = None
        # plates this shelfcal put in maintenance → monotonic end of the maintenance they were in
        # before (0: none): every exit ends ours and gives back what was left of theirs
        self._held: dict[str, float] = {}

    @property
    def link(self) -> DaemonLink | LocalUnit:
        if self._link is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._link = self._connect()
        return self._link

    def close(self) -> list[str]:
        """End the maintenance this shelfcal started, then let the load cells go. Returns warnings
        (a daemon that no longer answers cannot be told)."""
        warnings = self.release() if self._link is not None else []
        if self._link is not None:
            self._link.close()
        return warnings

    def hold(self, plate: PlateInfo, seconds: float) -> None:
        """Put the plate in maintenance on a running shelfd for ``seconds`` (0 ends it); remembers
        the maintenance it was in before, for :meth:`release`."""
        if self.link.kind != "daemon":
            return
        if plate.key not in self._held:
            before = float(self.link.call("info").get("maintenance", {}).get(plate.key, 0.0))
            self._held[plate.key] = time.monotonic() + before if before > 0 else 0.0
        self.link.call("maintenance", plates=[plate.key], seconds=seconds)

    def release(self) -> list[str]:
        """Every plate :meth:`hold` took back in service, or back to what was left of the
        maintenance it was already in (``shelfcal maintenance``)."""
        warnings = []
        for key, until in list(self._held.items()):
            left = until - time.monotonic() if until else 0.0
            try:
                self.link.call("maintenance", plates=[key], seconds=round(left, 1) if left >= 1.0 else 0)
                del self._held[key]
            except ShelfcalError as exc:
                warnings.append(f"plate {key} could not be put back in service ({exc}); "
                                f"run `shelfcal maintenance --plate {key} --off`")
        return warnings

    def plate(self, name: str) -> PlateInfo:
        s = str(name).strip()
        if s in self.plates:
            return self.plates[s]
        hits = [p for k, p in self.plates.items() if k.rpartition("/")[2] == s]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ShelfcalError(f"plate {s} exists on several shelves ({', '.join(p.key for p in hits)}): "
                                f"write it as SHELF/PLATE", EX_USAGE)
        raise ShelfcalError(f"no plate {s!r} on unit {self.unit_id}; plates are {', '.join(self.plates)}", EX_USAGE)

    def check_mass(self, plate: PlateInfo, mass_g: float) -> None:
        if not (mass_g > 0) or math.isinf(mass_g):
            raise ShelfcalError(f"--mass-g must be more than 0 g, got {mass_g:g}", EX_USAGE)
        if mass_g > plate.capacity_g:
            raise ShelfcalError(f"{mass_g:g} g is beyond plate {plate.key}'s rating of {plate.capacity_g:g} g "
                                f"(shelves[].plates[].capacity_g): use a lighter mass", EX_USAGE)

    def calibration(self) -> CalibrationState | None:
        try:
            return calstate.load(self.state_dir, self.unit_id)
        except CalibrationError as exc:
            raise ShelfcalError(f"{exc}: restore calibration.prev.json or move the file away; nothing written",
                                EX_DATAERR) from None

    # ------------------------------------------------------------ session (points not yet written)

    def session(self) -> dict[str, Any]:
        p = self.state_dir / SESSION
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a session is a convenience; a damaged one is simply started afresh
        return doc if isinstance(doc, dict) and doc.get("unit_id") == self.unit_id else {}

    def save_session(self, doc: dict[str, Any]) -> None:
        doc["unit_id"] = self.unit_id
        try:
            atomic_write(self.state_dir / SESSION, json.dumps(doc, indent=1))
        except OSError as exc:
            raise ShelfcalError(f"cannot write {self.state_dir / SESSION}: {exc.strerror}", EX_CANTCREAT) from None

    def log(self, entry: dict[str, Any]) -> None:
        """The service record `shelfcal report` summarises (append-only JSON lines)."""
        entry = {"time": now_iso(), **entry}
        try:
            with open(self.state_dir / LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError:
            pass


# ---------------------------------------------------------------- waiting for rest


def wait_rest(unit: Unit, plate: PlateInfo, *, timeout_s: float, window_s: float = 1.5,
              progress: Progress | None = None, fresh: bool = True) -> dict[str, Any]:
    """Poll the unit until the plate has rested for ``window_s`` of samples taken after this call
    (``fresh``), or raise after ``timeout_s``. Saturation and silence are errors at once."""
    start_t = unit.link.call("info").get("t") if fresh else None
    deadline = time.monotonic() + timeout_s
    no_data_since = None
    last: dict[str, Any] = {}
    while True:
        r: dict[str, Any] = unit.link.call("rest", plates=[plate.key], window_s=window_s)["plates"][plate.key]
        last = r
        new_enough = start_t is None or (r.get("t") is not None and r["t"] - window_s >= start_t)
        if r.get("saturated"):
            raise ShelfcalError(f"plate {plate.key}: {r['reason']}; unload it and check the cell's wires", EX_DATAERR)
        if r.get("reason") == "no data":
            # a whole fresh window of flagged samples (or nothing at all until the deadline)
            no_data_since = no_data_since or time.monotonic()
            if (r.get("samples") and new_enough) or time.monotonic() > deadline:
                raise ShelfcalError(f"plate {plate.key}: no data from channel(s) {', '.join(plate.channels)}: "
                                    f"run `shelfcal diag`", EX_UNAVAILABLE)
        else:
            no_data_since = None
        if r.get("rest") and new_enough:
            return r
        if progress:
            progress({**r, "waiting": not new_enough, "left_s": deadline - time.monotonic()})
        if time.monotonic() > deadline:
            why = last.get("reason") or "still settling"
            raise ShelfcalError(f"plate {plate.key} did not come to rest within {timeout_s:g} s ({why}): keep "
                                f"hands and cables off the shelf, make sure the plate touches nothing, retry",
                                EX_TEMPFAIL)
        time.sleep(0.2)


# ---------------------------------------------------------------- tare


def zero_warnings(unit: Unit, plate: PlateInfo, levels: list[float]) -> list[str]:
    out = []
    cal = unit.calibration()
    shift = 0.0
    known = cal is not None and all(c in cal.channels for c in plate.channels)
    for ch, lv in zip(plate.channels, levels):
        if abs(lv) > SUSPICIOUS_OFFSET_SHARE * ADC_HALF_RANGE:
            out.append(f"channel {ch}: zero at {abs(lv) / ADC_HALF_RANGE:.0%} of the ADC range "
                       f"(little headroom: preloaded or miswired cell)")
        if known and cal is not None:
            shift += (lv - cal.channels[ch].offset) / cal.channels[ch].scale
    if known and cal is not None and abs(shift) > max(50.0, 0.02 * plate.capacity_g):
        out.append(f"plate {plate.key}: zero moved by {shift:+.1f} g since calibration {cal.calibration_id}: "
                   f"is something still on the plate?")
    return out


def record_zero(unit: Unit, plate: PlateInfo, rest: dict[str, Any]) -> None:
    """Start a calibration session for the plate from this empty-plate reading."""
    doc = unit.session()
    doc.setdefault("plates", {})[plate.key] = {
        "started": now_iso(), "zero": rest["level_counts"], "zero_sigma": rest.get("sigma_counts"),
        "points": []}
    unit.save_session(doc)


# ---------------------------------------------------------------- calibrate


@dataclass
class PlateFit:
    plate: PlateInfo
    masses: list[float]
    fits: list[ChannelFit]
    previous_scale: dict[str, float]

    @property
    def residuals_g(self) -> list[float]:
        # plate residual at each point = sum of channel residuals
        return [sum(f.residuals_g[i] for f in self.fits) for i in range(len(self.masses))]

    @property
    def capacity_g(self) -> float:
        n = len(self.fits)
        return min(f.capacity_g for f in self.fits) * n

    def to_channels(self, technician: str | None) -> dict[str, ChannelCal]:
        return {f.channel: ChannelCal(f.offset, f.scale, f.points) for f in self.fits}

    def summary(self) -> dict[str, Any]:
        return {"plate": self.plate.key, "masses_g": self.masses,
                "residuals_g": [round(r, 3) for r in self.residuals_g],
                "capacity_g": round(self.capacity_g, 0),
                "channels": {f.channel: {"offset": f.offset, "scale": f.scale,
                                         "previous_scale": self.previous_scale.get(f.channel)} for f in self.fits}}


def session_points(unit: Unit, plate: PlateInfo) -> dict[str, Any]:
    s: dict[str, Any] | None = unit.session().get("plates", {}).get(plate.key)
    if not s:
        raise ShelfcalError(f"no empty-plate reading for plate {plate.key} in this session: empty the plate "
                            f"and run `shelfcal tare --plate {plate.key}` first", EX_USAGE)
    try:
        age = (datetime.now(UTC) - datetime.fromisoformat(s["started"])).total_seconds()
    except (KeyError, ValueError, TypeError):
        age = math.inf
    if age > SESSION_MAX_AGE_S:
        # cells drift with temperature: a zero from hours ago would bend the fit
        raise ShelfcalError(f"the empty-plate reading of plate {plate.key} is from {s.get('started', '?')}, over "
                            f"{SESSION_MAX_AGE_S / 3600:g} h ago: empty the plate and run `shelfcal tare --plate "
                            f"{plate.key}` again", EX_USAGE)
    return s


def add_point(unit: Unit, plate: PlateInfo, mass_g: float, rest: dict[str, Any]) -> dict[str, Any]:
    """Check and keep a known-mass point; returns the plate's session."""
    doc = unit.session()
    s: dict[str, Any] = doc.get("plates", {}).get(plate.key)
    if not s:
        session_points(unit, plate)  # raises
    sig = [x if x is not None else math.nan for x in (rest.get("sigma_counts") or [math.nan] * len(plate.channels))]
    why = check_point(mass_g, rest["level_counts"], s["zero"], sig, [p[0] for p in s["points"]])
    if why:
        raise ShelfcalError(f"point refused: {why}", EX_DATAERR)
    s["points"].append([mass_g, rest["level_counts"]])
    unit.save_session(doc)
    return s


def fit_plate(unit: Unit, plate: PlateInfo, s: dict[str, Any]) -> PlateFit:
    n = len(plate.channels)
    fits = []
    for j, ch in enumerate(plate.channels):
        pts = [(0.0, s["zero"][j])] + [(m / n, counts[j]) for m, counts in s["points"]]
        fits.append(fit_channel(ch, pts))
    cal = unit.calibration()
    prev = {ch: cal.channels[ch].scale for ch in plate.channels if cal and ch in cal.channels}
    return PlateFit(plate, [0.0] + [p[0] for p in s["points"]], fits, prev)


def write_fit(unit: Unit, pf: PlateFit, technician: str | None) -> str:
    """The atomic write of a new calibration version, then the daemon adopts it."""
    try:
        state = calstate.update(unit.state_dir, unit.unit_id, pf.to_channels(technician), technician=technician)
    except CalibrationError as exc:
        raise ShelfcalError(f"{exc}: restore calibration.prev.json or move the file away; nothing written",
                            EX_DATAERR) from None
    except OSError as exc:
        raise ShelfcalError(f"cannot write the calibration in {unit.state_dir}: {exc.strerror}", EX_CANTCREAT) from None
    unit.log({"kind": "calibrate", "calibration_id": state.calibration_id, "technician": technician,
              **pf.summary()})
    return state.calibration_id
