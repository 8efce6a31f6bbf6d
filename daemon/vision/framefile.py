"""Camera frames beside a ``shelfd record`` recording, and the ``replay`` camera that reads them.

``shelfd record --out case.jsonl`` on a unit with a camera also writes ``case.jsonl.frames``:
JSON lines like the sample recording, so one can be cut and inspected the same way:

    line 1: {"format": "gondola.frames/1", "unit_id", "width", "height", "fps",
             "rois": {"shelf/plate": [x0, y0, x1, y1]} | null, "created"}
    then:   {"t": <epoch s>, "jpeg": "<base64 JPEG>"}        one per frame, in time order

JPEG at quality 90 (≈ 30–60 kB for 640×480, so a minute at 5 fps is ≈ 10–20 MB). The ROIs in
force are stored with the frames, so a replay crops exactly what the unit cropped.

``ReplayCameraSource`` follows the data clock like the sample replay: the pipeline pumps it to
the time of the samples it has processed, and frames are decoded only when an event asks.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import jsonlines
from ..jsonlines import create_with_header
from .camera import CameraError
from .frames import Frame
from .rois import ROI

log = logging.getLogger(__name__)

FORMAT = "gondola.frames/1"


def frames_path(recording: str | Path) -> Path:
    return Path(str(recording) + ".frames")


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class FrameWriter:
    def __init__(self, path: str | Path, *, unit_id: str, width: int, height: int, fps: float,
                 rois: dict[str, ROI] | None = None, quality: int = 90):
        self.path = Path(path)
        self.quality = quality
        self._fh: IO[str] = create_with_header(self.path, {
            "format": FORMAT, "unit_id": unit_id, "width": width, "height": height, "fps": fps,
            "rois": {k: list(v) for k, v in rois.items()} if rois else None})
        self.frames = 0

    def write(self, frame: Frame) -> None:
        data = encode_jpeg(frame.image, self.quality)
        self._fh.write(json.dumps({"t": round(frame.t, 4), "jpeg": base64.b64encode(data).decode()}) + "\n")
        self.frames += 1

    def close(self) -> None:
        self._fh.flush()
        self._fh.close()


def _check_header(h: dict[str, Any]) -> None:
    h["width"], h["height"], h["fps"] = int(h["width"]), int(h["height"]), float(h["fps"])


def read_header(path: str | Path) -> dict[str, Any]:
    return jsonlines.read_header(Path(path), FORMAT, _check_header, error=CameraError, missing="frames file not found",
                                 noun="frames file", header_noun="frames header")


class ReplayCameraSource:
    """Frames of a ``.frames`` file, released as the sample stream passes their time."""

    synchronous = True

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header = read_header(self.path)
        self.width, self.height = self.header["width"], self.header["height"]
        self.rois = self.header.get("rois")
        self._fh: IO[str] | None = None
        self._line = 1
        self._pending: tuple[float, str] | None = None
        self.corrupt = 0

    def start(self) -> None:
        self._fh = open(self.path, encoding="utf-8")
        self._fh.readline()
        self._line = 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None:  # pragma: no cover - pumped instead
        raise NotImplementedError("the replay camera is pumped with frames_until(t)")

    def _next(self) -> tuple[float, str] | None:
        while self._fh is not None:
            line = self._fh.readline()
            if not line:
                return None
            self._line += 1
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                return float(d["t"]), str(d["jpeg"])
            except (ValueError, KeyError, TypeError):
                self.corrupt += 1
                if self.corrupt == 1:
                    log.warning("%s:%d: corrupt frame line skipped (counting further ones)", self.path, self._line)
        return None

    def frames_until(self, t: float) -> Iterator[Frame]:
        if self._fh is None:
            self.start()
        while True:
            if self._pending is None:
                self._pending = self._next()
                if self._pending is None:
                    return
            tf, b64 = self._pending
            if tf > t:
                return
            self._pending = None
            yield Frame.lazy(tf, functools.partial(_decode_b64_jpeg, b64))


def _decode_b64_jpeg(b64: str) -> np.ndarray:
    from .camera import decode_mjpeg

    return decode_mjpeg(base64.b64decode(b64))
