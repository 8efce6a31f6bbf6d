"""Per-plate regions of interest, kept with the calibration state (``state_dir/camera.json``).

A ROI is where a plate lies in the camera's picture, normalised ``(x0, y0, x1, y1)`` in 0..1 so it
survives a change of resolution. ``shelfcal camera`` sets them (on a technician's say-so);
``load_rois`` / ``save_rois`` are the only way in and out. Written atomically (temporary file,
fsync, rename, fsync of the folder) with the previous version kept as ``camera.prev.json``, like
the calibration.

    {"schema": "gondola.camera/1", "unit_id": "shelf-a3", "updated": "...", "technician": null,
     "frame": [640, 480], "rois": {"1/1": [0.02, 0.05, 0.18, 0.45], ...}}
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomicfile import atomic_write
from ..timefmt import now_iso

log = logging.getLogger(__name__)

FILENAME = "camera.json"
PREVIOUS = "camera.prev.json"
SCHEMA = "gondola.camera/1"

ROI = tuple[float, float, float, float]


class RoiError(Exception):
    """camera.json unusable; one line naming the file and the problem."""


def _check(key: str, v: Any, where: str) -> ROI:
    if not (isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(x, (int, float)) for x in v)):
        raise RoiError(f"{where}: rois[{key!r}] must be [x0, y0, x1, y1], got {v!r}")
    x0, y0, x1, y1 = (float(x) for x in v)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise RoiError(f"{where}: rois[{key!r}] must satisfy 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1, got {v!r}")
    return x0, y0, x1, y1


def load_rois(state_dir: str | Path, unit_id: str | None = None) -> dict[str, ROI] | None:
    """{"shelf/plate": roi} or None when no camera.json exists yet. Raises RoiError when the file
    is corrupt or belongs to another unit."""
    path = Path(state_dir) / FILENAME
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RoiError(f"{path}: corrupt camera file ({exc})") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise RoiError(
            f"{path}: not a Gondola camera file (schema {d.get('schema') if isinstance(d, dict) else None!r})"
        )
    if unit_id is not None and d.get("unit_id") not in (None, unit_id):
        raise RoiError(f"{path}: camera file belongs to unit {d.get('unit_id')!r}, not {unit_id!r}")
    rois = d.get("rois")
    if not isinstance(rois, dict):
        raise RoiError(f"{path}: rois must be a mapping of \"shelf/plate\" to [x0, y0, x1, y1]")
    return {str(k): _check(str(k), v, str(path)) for k, v in rois.items()}


def save_rois(state_dir: str | Path, rois: Mapping[str, Sequence[float]], *, unit_id: str | None = None,
              frame_size: tuple[int, int] | None = None, technician: str | None = None) -> Path:
    """Atomically replace camera.json (the previous one kept as camera.prev.json); every ROI is
    checked first (RoiError)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILENAME
    checked = {str(k): list(_check(str(k), v, "rois")) for k, v in rois.items()}
    doc = {"schema": SCHEMA, "unit_id": unit_id, "technician": technician,
           "updated": now_iso(),
           "frame": list(frame_size) if frame_size else None, "rois": checked}
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True), previous=state_dir / PREVIOUS)
    log.info("camera ROIs for %d plates written to %s", len(checked), path)
    return path
