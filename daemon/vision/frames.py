"""Frames, the ring buffer of recent ones, and the choice of frames around a weight change.

The ring buffer keeps the last ``buffer_s`` seconds at the camera's rate (``fps``), bounded in
count *and* bytes: 640×480 RGB is 0.92 MB a frame, so the default 8 s at 5 fps holds 40 frames ≈
37 MB. An event is decided ``settle_s`` after the shelf came to rest, so the "after" frame is
already there, and its "before" frame (just before ``t_start``) is still there as long as the
interaction lasted less than ``buffer_s`` minus the settle window; longer ones fall back to the
oldest frame (flagged ``before_late``).

Behind the full-rate buffer a sparse **tail** keeps one frame a second for ``tail_s`` (30 s)
more, JPEG-compressed (≈ 50–100 kB each, ≈ 2–3 MB in all), so an interaction that lasts longer
than the buffer still has a "before" frame.

A frame's pixels may be produced lazily (``Frame.lazy``): the simulated camera in an offline run
records only *when* a frame was taken and renders it if an event asks for it.
"""
from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Frame:
    """One camera frame: epoch time ``t`` and an (H, W, 3) uint8 image."""

    __slots__ = ("t", "_image", "_make", "seq", "_tail_bytes")

    def __init__(self, t: float, image: np.ndarray | None = None,
                 make: Callable[[], np.ndarray] | None = None, seq: int = 0):
        if image is None and make is None:
            raise ValueError("a frame needs an image or a way to make one")
        self.t = float(t)
        self._image = image
        self._make = make
        self.seq = seq
        self._tail_bytes = 0   # size of the compressed copy, for frames kept in the ring's tail

    @classmethod
    def lazy(cls, t: float, make: Callable[[], np.ndarray], seq: int = 0) -> Frame:
        return cls(t, None, make, seq)

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            make = self._make
            assert make is not None  # __init__ demands an image or a way to make one
            self._image = make()
            self._make = None
        return self._image

    @property
    def decoded(self) -> bool:
        """True once the image exists (always for a camera's frames; a lazy frame after ``image``)."""
        return self._image is not None

    @property
    def nbytes(self) -> int:
        return 0 if self._image is None else int(self._image.nbytes)

    def __repr__(self) -> str:
        return f"<Frame t={self.t:.3f} seq={self.seq}{' lazy' if self._image is None else ''}>"


class FrameRing:
    """Thread-safe ring of recent frames in time order (the camera thread pushes, the vision
    worker reads). Bounded by ``max_frames`` and ``max_bytes``; the oldest go first."""

    def __init__(self, max_frames: int, max_bytes: int = 64 << 20, tail_s: float = 30.0,
                 tail_step_s: float = 1.0):
        self.max_frames = max(2, int(max_frames))
        self.max_bytes = int(max_bytes)
        self.tail_s = tail_s
        self.tail_step_s = tail_step_s
        self._frames: list[Frame] = []
        self._times: list[float] = []
        self._bytes = 0
        self._tail: list[Frame] = []      # sparse, compressed, older than the frames above
        self._tail_bytes = 0
        self._lock = threading.Lock()
        self.pushed = 0
        self.evicted = 0
        self.out_of_order = 0

    @classmethod
    def for_camera(cls, fps: float, buffer_s: float, width: int, height: int,
                   max_bytes: int = 64 << 20) -> FrameRing:
        n = int(np.ceil(fps * buffer_s)) + 1
        per = width * height * 3
        return cls(min(n, max(2, max_bytes // per)), max_bytes)

    def push(self, frame: Frame) -> None:
        with self._lock:
            if self._times and frame.t < self._times[-1]:
                self.out_of_order += 1  # a clock step backwards: keep time order, drop it
                return
            self._frames.append(frame)
            self._times.append(frame.t)
            self._bytes += frame.nbytes
            self.pushed += 1
            while len(self._frames) > self.max_frames or (self._bytes > self.max_bytes and len(self._frames) > 2):
                old = self._frames.pop(0)
                self._times.pop(0)
                self._bytes -= old.nbytes
                self.evicted += 1
                self._to_tail(old)
            horizon = self._times[0] - self.tail_s   # the tail covers tail_s before the buffer
            while self._tail and self._tail[0].t < horizon:
                self._tail_bytes -= _tail_size(self._tail.pop(0))

    def _to_tail(self, old: Frame) -> None:
        if self.tail_s <= 0 or (self._tail and old.t - self._tail[-1].t < self.tail_step_s):
            return
        if old._image is None:        # lazy (sim, replay): nothing to compress, keep as is
            kept = old
        else:
            data = _jpeg(old._image)
            kept = Frame.lazy(old.t, functools.partial(_unjpeg, data), seq=old.seq)
            kept._tail_bytes = len(data)
        self._tail.append(kept)
        self._tail_bytes += _tail_size(kept)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(f.nbytes for f in self._frames) + self._tail_bytes

    def span(self) -> tuple[float, float] | None:
        with self._lock:
            return (self._times[0], self._times[-1]) if self._times else None

    def last(self) -> Frame | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def snapshot(self, t0: float, t1: float) -> list[Frame]:
        """Frames with t0 ≤ t ≤ t1 (full-rate buffer only)."""
        with self._lock:
            a = bisect.bisect_left(self._times, t0)
            b = bisect.bisect_right(self._times, t1)
            return list(self._frames[a:b])

    def at_or_before(self, t: float) -> Frame | None:
        """The latest frame at or before ``t``, from the tail when the buffer no longer reaches."""
        with self._lock:
            i = bisect.bisect_right(self._times, t) - 1
            if i >= 0:
                return self._frames[i]
            older = [f for f in self._tail if f.t <= t]
            return older[-1] if older else None

    def at_or_after(self, t: float) -> Frame | None:
        with self._lock:
            i = bisect.bisect_left(self._times, t)
            return self._frames[i] if i < len(self._frames) else None

    def oldest(self) -> Frame | None:
        with self._lock:
            if self._tail:
                return self._tail[0]
            return self._frames[0] if self._frames else None


@dataclass
class Selection:
    """Frames chosen for one weight change."""

    before: Frame | None
    after: Frame | None
    during: list[Frame] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)   # before_late, after_missing, ...

    @property
    def usable(self) -> bool:
        return self.before is not None and self.after is not None


def select_frames(ring: FrameRing, t_start: float, t_end: float, *, margin_s: float = 0.25,
                  max_during: int = 6) -> Selection:
    """Before: the last frame at least ``margin_s`` before ``t_start`` (the hand not yet in);
    after: the first frame at least ``margin_s`` after ``t_end`` (the hand gone); during: up to
    ``max_during`` frames spread over the interaction (the hand in, holding the item)."""
    flags: list[str] = []
    before = ring.at_or_before(t_start - margin_s)
    if before is None:
        before = ring.oldest()
        if before is not None and before.t < t_start:
            flags.append("before_late")
        else:
            before = None
            flags.append("before_missing")
    after = ring.at_or_after(t_end + margin_s)
    if after is None:
        last = ring.last()
        if last is not None and last.t > t_end:
            after = last
            flags.append("after_early")
        else:
            flags.append("after_missing")
    during = ring.snapshot(t_start, t_end)
    if len(during) > max_during:
        idx = np.linspace(0, len(during) - 1, max_during).round().astype(int)
        during = [during[i] for i in idx]
    return Selection(before, after, during, flags)


def _jpeg(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _unjpeg(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _tail_size(f: Frame) -> int:
    return getattr(f, "_tail_bytes", 0) or 0
