"""Calibration state: offset and scale per load-cell channel, kept in ``state_dir``.

Config is intent; calibration is measured state, written by ``shelfcal`` (and by the simulator for
its factory calibration). grams = (counts - offset) / scale, scale in counts per gram, kept as a
float. Writes are atomic (temporary file, fsync, rename, fsync of the directory) and the previous
version is kept as ``calibration.prev.json`` so a bad calibration can be rolled back. Every version
replaced is also archived in ``calibration.history/`` (the last ``KEEP_VERSIONS``), so no request —
two forced tares in a row, say — can leave the unit without the calibration it had before.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ulid import ULID

from .atomicfile import atomic_write
from .timefmt import file_stamp, now_iso, parse_rfc3339, rfc3339

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

FILENAME = "calibration.json"
PREVIOUS = "calibration.prev.json"
HISTORY = "calibration.history"
KEEP_VERSIONS = 5
SCHEMA = "gondola.calibration/1"


class CalibrationError(Exception):
    pass


@dataclass
class ChannelCal:
    offset: float          # raw counts at zero load
    scale: float           # counts per gram (sign included)
    points: list[list[float]] = field(default_factory=list)  # [[mass_g, counts], ...] used for the fit
    updated: str | None = None  # when this channel's offset or scale last changed (UTC, ISO 8601)

    @overload
    def to_grams(self, counts: float) -> float: ...
    @overload
    def to_grams(self, counts: npt.NDArray[Any]) -> npt.NDArray[np.float64]: ...

    def to_grams(self, counts: float | npt.NDArray[Any]) -> float | npt.NDArray[np.float64]:
        return (counts - self.offset) / self.scale


@dataclass
class CalibrationState:
    unit_id: str
    channels: dict[str, ChannelCal]
    calibration_id: str = field(default_factory=lambda: str(ULID()))
    technician: str | None = None
    created: str = field(default_factory=now_iso)
    source: str = "shelfcal"   # shelfcal | sim-factory

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = SCHEMA
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> CalibrationState:
        try:
            if d.get("schema") != SCHEMA:
                raise CalibrationError(f"{where}: not a Gondola calibration file (schema {d.get('schema')!r})")
            chans = {}
            for name, c in d["channels"].items():
                scale = float(c["scale"])
                if scale == 0 or scale != scale:
                    raise CalibrationError(f"{where}: channel {name!r} has an invalid scale {c['scale']!r}")
                chans[name] = ChannelCal(float(c["offset"]), scale, [list(map(float, p)) for p in c.get("points", [])],
                                         c.get("updated"))
            return cls(unit_id=str(d["unit_id"]), channels=chans, calibration_id=str(d["calibration_id"]),
                       technician=d.get("technician"), created=str(d.get("created", "")),
                       source=str(d.get("source", "shelfcal")))
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(f"{where}: corrupt calibration file ({exc.__class__.__name__}: {exc})") from None


def load(state_dir: Path, unit_id: str) -> CalibrationState | None:
    """The calibration in force, or None when the unit was never calibrated."""
    path = Path(state_dir) / FILENAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: corrupt calibration file ({exc})") from None
    state = CalibrationState.from_json(data, str(path))
    if state.unit_id != unit_id:
        raise CalibrationError(f"{path}: calibration belongs to unit {state.unit_id!r}, not {unit_id!r}")
    return state


def save(state_dir: Path, state: CalibrationState) -> Path:
    """Atomically replace the calibration, keeping the previous one."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILENAME
    _archive(state_dir, path)
    # keeps calibration.prev.json complete at every instant (see daemon.atomicfile)
    atomic_write(path, json.dumps(state.to_json(), indent=2, sort_keys=True), previous=state_dir / PREVIOUS)
    log.info("calibration %s written to %s", state.calibration_id, path)
    return path


def _archive(state_dir: Path, path: Path, keep: int = KEEP_VERSIONS) -> None:
    """Copy the version about to be replaced into calibration.history/ (oldest beyond ``keep``
    removed). Names sort by archiving time: ``<UTC stamp>-<calibration_id>.json``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    try:
        cal_id = str(json.loads(data).get("calibration_id") or "unknown")
    except (ValueError, AttributeError):
        cal_id = "unreadable"  # a corrupt file is archived too: it is evidence
    cal_id = "".join(c for c in cal_id if c.isalnum() or c in "-_")[:40] or "unknown"
    hist = state_dir / HISTORY
    hist.mkdir(exist_ok=True)
    stamp = file_stamp(micros=True)
    atomic_write(hist / f"{stamp}-{cal_id}.json", data)
    versions = sorted(hist.glob("*.json"))
    for old in versions[:max(0, len(versions) - keep)]:
        with contextlib.suppress(OSError):
            old.unlink()


def history(state_dir: Path) -> list[Path]:
    """Archived calibration versions, oldest first."""
    hist = Path(state_dir) / HISTORY
    return sorted(hist.glob("*.json")) if hist.is_dir() else []


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the calibration between shelfcal and a running daemon (a
    tare from the store back-end). An advisory flock, released by the kernel if the holder dies."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / ".calibration.lock", os.O_RDWR | os.O_CREAT, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # temporary files of writers killed mid-write (SIGKILL, power cut) are garbage
        for stale in [*state_dir.glob(".calibration.*.tmp*"), *(state_dir / HISTORY).glob(".*.tmp*")]:
            with contextlib.suppress(OSError):
                stale.unlink()
        yield
    finally:
        os.close(fd)


def update(state_dir: Path, unit_id: str, channels: dict[str, ChannelCal], *, technician: str | None,
           source: str = "shelfcal") -> CalibrationState:
    """A new calibration version: the one in force with ``channels`` replaced, under the lock,
    with a fresh ``calibration_id``; written atomically, the old one kept as calibration.prev.json.

    Raises CalibrationError (and writes nothing) when the file in force is corrupt or belongs to
    another unit: a technician must decide about that, not a tool."""
    with locked(state_dir):
        current = load(state_dir, unit_id)
        merged = dict(current.channels) if current else {}
        now = now_iso()
        for name, cal in channels.items():
            if cal.updated is None:
                cal.updated = now
            merged[name] = cal
        state = CalibrationState(unit_id=unit_id, channels=merged, technician=technician, created=now,
                                 source=source)
        save(state_dir, state)
        return state


# ---------------------------------------------------------------- shelfcal's log, for health

VERIFY_LOG = "shelfcal-log.jsonl"   # shelfcal's service record in state_dir (calibration.guided.LOG)
_verify_cache: dict[Path, tuple[tuple[int, int], dict[str, dict[str, Any]]]] = {}


def verify_entries(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Per plate ("shelf/plate"), the last ``shelfcal verify`` entry of its log, as logged (a
    copy; shelfcal's report prints them). Only entries with a plate name and a pass/fail count.

    Read again only when the file's mtime or size changed. A missing, unreadable or corrupt log
    is no verifies (a corrupt line is skipped): never an error."""
    path = Path(state_dir) / VERIFY_LOG
    try:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        hit = _verify_cache.get(path)
        if hit is None or hit[0] != key:
            hit = (key, _read_verifies(path.read_bytes().decode("utf-8", "replace")))
            _verify_cache[path] = hit
    except OSError:
        _verify_cache.pop(path, None)
        return {}
    return {plate: dict(e) for plate, e in hit[1].items()}


def last_verifies(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Per plate, its last verify as health carries it: ``{"time", "pass"}`` (time in the wire's
    RFC 3339) plus ``mass_g``, ``read_g`` and the ``calibration_id`` it checked, where logged."""
    out: dict[str, dict[str, Any]] = {}
    for plate, e in verify_entries(state_dir).items():
        v: dict[str, Any] = {"time": _wire_time(e.get("time")), "pass": e["pass"]}
        for k in ("mass_g", "read_g"):
            if isinstance(e.get(k), (int, float)) and not isinstance(e.get(k), bool):
                v[k] = e[k]
        if isinstance(e.get("calibration_id"), str):
            v["calibration_id"] = e["calibration_id"]
        out[plate] = v
    return out


def _read_verifies(text: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("kind") == "verify" and isinstance(e.get("plate"), str) \
                and isinstance(e.get("pass"), bool):
            out[e["plate"]] = e
    return out


def _wire_time(s: Any) -> str | None:
    """A logged time as the wire's RFC 3339 (``…T05:06:49.000Z``); a string it cannot read as
    is (evidence for a person), anything else None."""
    t = parse_rfc3339(s)
    if t is not None:
        return rfc3339(t)
    return s if isinstance(s, str) else None


def health_block(state_dir: Path, cal: CalibrationState | None) -> dict[str, Any]:
    """``health.calibration``: the calibration in force (ids null when the unit has none: a
    recording in grams) and the last verify of each plate from shelfcal's log."""
    return {"calibration_id": cal.calibration_id if cal else None,
            "created": _wire_time(cal.created) if cal and cal.created else None,
            "technician": cal.technician if cal else None,
            "source": cal.source if cal else None,
            "last_verify": last_verifies(state_dir)}
