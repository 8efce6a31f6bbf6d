"""Opt-in capture (``vision.capture.enabled``): the unit labels its own crops for training.

When a weight event is confident *from weight alone* (``weight confidence ≥ min_confidence``;
the camera's own opinion never labels its training data), its crops are saved under
``<state_dir>/vision/capture`` (or ``capture.dir``):

    <dir>/<YYYY-MM-DD>/<t_end ms>-<type>-<sku>-{before,after,item}.png
    <dir>/index.jsonl     one line per capture: files, type, sku, quantity, confidences, shelf, plates

Images never leave the unit. The folder is kept under ``max_mb`` and ``max_age_days``: after each
capture the oldest day folders (and files) go first. ``training/`` scripts read ``index.jsonl``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .engine import VisionResult

log = logging.getLogger(__name__)


class CaptureStore:
    def __init__(self, folder: str | Path, *, min_confidence: float = 0.98, max_mb: float = 200.0,
                 max_age_days: float = 14.0, clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.min_confidence = min_confidence
        self.max_bytes = int(max_mb * 1e6)
        self.max_age_s = max_age_days * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self.saved = 0
        self.skipped = 0
        self.pruned = 0
        self.errors = 0

    def offer(self, event: dict[str, Any], weight_confidence: float, result: VisionResult) -> bool:
        """Save the crops of ``event`` if weight alone was sure; never raises."""
        if event.get("type") not in ("pick", "put_back") or event.get("sku") is None \
                or weight_confidence < self.min_confidence or result.before is None:
            self.skipped += 1
            return False
        try:
            with self._lock:
                self._save(event, weight_confidence, result)
                self._prune()
            return True
        except OSError as exc:
            self.errors += 1
            log.warning("capture: cannot save crops (%s); capture continues", exc)
            return False

    def _save(self, event: dict[str, Any], conf: float, result: VisionResult) -> None:
        from PIL import Image

        now = self._clock()
        day = datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")
        d = self.folder / day
        d.mkdir(parents=True, exist_ok=True)
        safe_sku = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(event["sku"]))
        stem = f"{int(now * 1000)}-{event['type']}-{safe_sku}"
        files: dict[str, str] = {}
        for name, img in (("before", result.before), ("after", result.after), ("item", result.item)):
            if img is None or not isinstance(img, np.ndarray) or img.size == 0:
                continue
            path = d / f"{stem}-{name}.png"
            tmp = path.with_suffix(".png.tmp")
            Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
            os.replace(tmp, path)
            files[name] = str(path.relative_to(self.folder))
        row = {"t": round(now, 3), "files": files, "type": event["type"], "sku": event["sku"],
               "quantity": event.get("quantity"), "weight_confidence": round(conf, 4),
               "shelf": event.get("shelf"), "plates": event.get("plates"), "t_end": event.get("t_end"),
               "vision": {k: v for k, v in (event.get("vision") or {}).items() if k in ("action", "skus", "models")}}
        with open(self.folder / "index.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.saved += 1

    def _prune(self) -> None:
        now = self._clock()
        days = sorted(p for p in self.folder.iterdir() if p.is_dir())
        for p in days:
            try:
                age = now - datetime.strptime(p.name, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() - 86400
            except ValueError:
                continue
            if age > self.max_age_s:
                n = sum(1 for _ in p.iterdir())
                shutil.rmtree(p, ignore_errors=True)
                self.pruned += n
        files = sorted((f for f in self.folder.glob("*/*.png")), key=lambda f: f.name)
        total = sum(f.stat().st_size for f in files)
        for f in files:   # names start with the capture time: oldest first
            if total <= self.max_bytes:
                break
            total -= f.stat().st_size
            f.unlink()
            self.pruned += 1

    def usage_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*/*.png")) if self.folder.exists() else 0

    def health(self) -> dict[str, Any]:
        return {"saved": self.saved, "skipped": self.skipped, "pruned": self.pruned, "errors": self.errors,
                "mb": round(self.usage_bytes() / 1e6, 2)}
