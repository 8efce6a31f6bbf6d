"""Camera sources behind one small interface, and the runner that keeps one alive.

A source (``CameraSource``) is the hardware or its stand-in:

| member | meaning |
| --- | --- |
| ``start()`` / ``close()`` | open the device / release it (``close`` may be called from another thread to unblock a stuck ``read``) |
| ``read(timeout)`` | the next ``(t, image)``, image (H, W, 3) uint8 RGB; ``None`` if nothing came within ``timeout``; raises ``CameraError`` (or ``OSError``) when the device is gone |
| ``synchronous`` | True for sources that follow the *data* clock (``sim``, ``replay``): they make frames when the pipeline says how far the sample stream has got (``frames_until(t)``), so an offline run at 300× real time still has a frame for every instant |

``picamera2`` and ``v4l2`` are hardware, read on a thread by :class:`CameraRunner`, which
validates every frame (wrong size or format: rejected and counted, never a crash), restarts a
source that fails or stalls with exponential back-off (0.5 s doubling to 30 s), and keeps figures
for ``health`` (fps, frames, rejected, restarts, state, last error). Weight events never wait on
the camera: the runner owns its thread and the ring buffer is all the rest of the unit sees.

Imports of camera libraries happen in ``start()``, so this module loads on any machine.
"""
from __future__ import annotations

import io
import logging
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .frames import Frame, FrameRing

log = logging.getLogger(__name__)

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


class CameraError(Exception):
    """The camera cannot deliver (gone, not found, refused); one line saying which and why."""


class CameraSource(Protocol):
    width: int
    height: int
    synchronous: bool

    def start(self) -> None: ...

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None: ...

    def close(self) -> None: ...


@runtime_checkable
class FrameClockedSource(CameraSource, Protocol):
    """A ``synchronous`` source (sim, replay): the sample thread advances it by stream time."""

    def frames_until(self, t: float) -> Iterator[Frame]: ...


# ---------------------------------------------------------------- decoding (v4l2)


def decode_mjpeg(data: bytes) -> np.ndarray:
    """One MJPEG frame (a JPEG) → (H, W, 3) uint8 RGB. Raises ValueError for anything that is
    not a decodable JPEG (USB cameras deliver truncated frames when the bus is overloaded)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise ValueError(f"not a JPEG frame ({len(data)} bytes, starts {data[:4].hex()})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt JPEG frame ({exc})") from None


def decode_yuyv(data: bytes, width: int, height: int) -> np.ndarray:
    """YUYV 4:2:2 (the other format every UVC camera offers) → (H, W, 3) uint8 RGB, BT.601."""
    need = width * height * 2
    if len(data) < need:
        raise ValueError(f"short YUYV frame: {len(data)} bytes, {need} expected for {width}×{height}")
    a = np.frombuffer(data, np.uint8, need).reshape(height, width // 2, 4).astype(np.float32)
    y = np.empty((height, width), np.float32)
    y[:, 0::2], y[:, 1::2] = a[..., 0], a[..., 2]
    u = np.repeat(a[..., 1], 2, axis=1) - 128.0
    v = np.repeat(a[..., 3], 2, axis=1) - 128.0
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
    return rgb.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- hardware sources


class V4l2Source:
    """A USB (UVC) camera through V4L2, via the pure-Python ``linuxpy`` package (optional extra
    ``usb-camera``); MJPEG decoded with Pillow, or raw YUYV."""

    synchronous = False

    def __init__(self, device: str, width: int, height: int, fps: float, pixel_format: str = "MJPG",
                 clock: Callable[[], float] = time.time):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.pixel_format = pixel_format
        self._clock = clock
        self._dev = None
        self._cap = None
        self._frames = None

    def start(self) -> None:
        try:
            from linuxpy.video.device import BufferType, Device, VideoCapture
        except ImportError:
            raise CameraError("v4l2 camera needs the linuxpy package (pip install 'gondola[usb-camera]')") from None
        try:
            dev = Device(self.device)
            dev.open()
            dev.set_format(BufferType.VIDEO_CAPTURE, self.width, self.height, self.pixel_format)
            try:
                dev.set_fps(BufferType.VIDEO_CAPTURE, self.fps)
            except Exception:  # noqa: BLE001 - some cameras have fixed rates; frames are still fine
                log.info("camera %s: cannot set %.1f fps, using its own rate", self.device, self.fps)
            # streaming on before the first select(): buffers queued, frames start to arrive
            cap = VideoCapture(dev)
            cap.open()
        except (OSError, Exception) as exc:  # noqa: BLE001 - linuxpy raises its own error types
            raise CameraError(f"{self.device}: cannot open V4L2 camera ({exc})") from None
        self._dev = dev
        self._cap = cap
        self._frames = iter(cap)

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None:
        if self._dev is None:
            raise CameraError(f"{self.device}: not open")
        try:
            ready, _, _ = select.select([self._dev.fileno()], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise CameraError(f"{self.device}: gone ({exc})") from None
        if not ready:
            return None
        try:
            fr = next(self._frames)
        except (StopIteration, OSError) as exc:
            raise CameraError(f"{self.device}: capture failed ({exc})") from None
        data = bytes(fr.data)
        img = decode_mjpeg(data) if self.pixel_format == "MJPG" else decode_yuyv(data, self.width, self.height)
        return self._clock(), img

    def close(self) -> None:
        cap, self._cap = self._cap, None
        dev, self._dev = self._dev, None
        for part in (cap, dev):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - closing a vanished device may fail; it is gone anyway
                    pass


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (Raspberry Pi OS's ``python3-picamera2``; the
    venv must be created with ``--system-site-packages`` to see it). Imported only in ``start``."""

    synchronous = False

    def __init__(self, camera_num: int, width: int, height: int, fps: float,
                 clock: Callable[[], float] = time.time):
        self.camera_num, self.width, self.height, self.fps = camera_num, width, height, fps
        self._clock = clock
        self._cam = None

    def start(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("picamera2 is not importable: apt install python3-picamera2 and create the venv "
                              "with --system-site-packages") from None
        try:
            cam = Picamera2(self.camera_num)
            conf = cam.create_video_configuration(main={"size": (self.width, self.height), "format": "RGB888"},
                                                  controls={"FrameRate": float(self.fps)})
            cam.configure(conf)
            cam.start()
        except Exception as exc:  # noqa: BLE001 - libcamera errors come in many types
            raise CameraError(f"picamera2 camera {self.camera_num}: cannot start ({exc})") from None
        self._cam = cam

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None:
        if self._cam is None:
            raise CameraError(f"picamera2 camera {self.camera_num}: not open")
        try:
            # RGB888 in libcamera terms is B,G,R in memory: flip to RGB
            img = self._cam.capture_array("main")
        except Exception as exc:  # noqa: BLE001
            raise CameraError(f"picamera2 camera {self.camera_num}: capture failed ({exc})") from None
        return self._clock(), np.ascontiguousarray(img[..., 2::-1]) if img.ndim == 3 and img.shape[2] >= 3 else img

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
                cam.close()
            except Exception:  # noqa: BLE001
                pass


# ---------------------------------------------------------------- the runner


@dataclass
class CameraStats:
    frames: int = 0
    rejected: int = 0
    restarts: int = 0
    errors: int = 0
    stalls: int = 0
    state: str = "stopped"       # starting | running | restarting | stopped | unavailable
    last_error: str | None = None
    last_frame_wall: float | None = None


class CameraRunner:
    """Feeds a ring buffer from a source, validating frames and restarting the source on faults.

    Threaded sources run on the runner's own thread; synchronous ones (sim, replay) are advanced
    by ``pump(t)`` from the sample thread (cheap: they hand out lazy frames)."""

    def __init__(self, source: CameraSource, ring: FrameRing, *, width: int, height: int, fps: float,
                 stall_s: float = 3.0, wall: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None):
        self.source = source
        self.ring = ring
        self.width, self.height, self.fps = width, height, fps
        self.stall_s = stall_s
        self.stats = CameraStats()
        self._wall = wall
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        self._rate_window: list[float] = []
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    # -- lifecycle
    def start(self) -> None:
        if getattr(self.source, "synchronous", False):
            try:
                self.source.start()
                self.stats.state = "running"
            except (CameraError, OSError) as exc:
                self._fault(f"cannot start: {exc}")
                self.stats.state = "unavailable"
            return
        self._thread = threading.Thread(target=self._loop, name="camera", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self.source.close()
        except Exception:  # noqa: BLE001
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self.stats.state = "stopped"

    # -- synchronous sources
    def pump(self, t: float) -> int:
        """Frames of a data-clocked source up to stream time ``t`` into the ring; returns how many."""
        if not getattr(self.source, "synchronous", False) or self.stats.state == "unavailable":
            return 0
        src = self.source
        assert isinstance(src, FrameClockedSource)  # every synchronous source is frame-clocked
        n = 0
        try:
            for fr in src.frames_until(t):
                if fr.decoded and not self._valid(fr.image):
                    continue
                self.ring.push(fr)
                self._count_frame()
                n += 1
        except (CameraError, OSError, ValueError) as exc:
            self._fault(str(exc))
        return n

    # -- the thread
    def _loop(self) -> None:
        backoff = BACKOFF_MIN_S
        first = True
        while not self._stop.is_set():
            self.stats.state = "starting" if first else "restarting"
            try:
                self.source.start()
            except (CameraError, OSError) as exc:
                self._fault(f"cannot start: {exc}")
                self.stats.state = "restarting"
                self._sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                if not first:
                    self.stats.restarts += 1
                first = False
                continue
            if not first:
                self.stats.restarts += 1
                log.info("camera back after restart %d", self.stats.restarts)
            first = False
            self.stats.state = "running"
            last = self._wall()
            try:
                while not self._stop.is_set():
                    got = self.source.read(min(0.5, self.stall_s))
                    now = self._wall()
                    if got is None:
                        if now - last > self.stall_s:
                            self.stats.stalls += 1
                            raise CameraError(f"stalled: no frame for {now - last:.1f} s")
                        continue
                    t, img = got
                    last = now
                    if not self._valid(img):
                        continue
                    self.ring.push(Frame(t, img))
                    self._count_frame()
                    backoff = BACKOFF_MIN_S  # healthy again: next fault starts from the short wait
            except (CameraError, OSError, ValueError, RuntimeError) as exc:
                if self._stop.is_set():
                    break
                self._fault(str(exc))
            finally:
                try:
                    self.source.close()
                except Exception:  # noqa: BLE001
                    pass
            if self._stop.is_set():
                break
            self.stats.state = "restarting"
            self._sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    # -- checks and figures
    def _valid(self, img: object) -> bool:
        ok = isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 \
            and img.shape[2] == 3 and img.shape[0] == self.height and img.shape[1] == self.width
        if not ok:
            self.stats.rejected += 1
            desc = f"{type(img).__name__} {getattr(img, 'shape', '')} {getattr(img, 'dtype', '')}"
            self._log_once("reject", "camera frame rejected (%s; expected (%d, %d, 3) uint8); counting further ones",
                           desc, self.height, self.width)
        return ok

    def _count_frame(self) -> None:
        now = self._wall()
        with self._lock:
            self.stats.frames += 1
            self.stats.last_frame_wall = now
            self._rate_window.append(now)
            while self._rate_window and now - self._rate_window[0] > 5.0:
                self._rate_window.pop(0)

    def _fault(self, msg: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = msg
        self._log_once(msg.split(":")[0], "camera: %s (restarting with back-off; weight events continue)", msg)

    def _log_once(self, key: str, fmt: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, *args)

    def fps_measured(self) -> float:
        with self._lock:
            w = self._rate_window
            if len(w) < 2 or w[-1] <= w[0]:
                return 0.0
            return (len(w) - 1) / (w[-1] - w[0])

    @property
    def healthy(self) -> bool:
        return self.stats.state == "running"

    def health(self) -> dict[str, Any]:
        s = self.stats
        return {"state": s.state, "fps": round(self.fps_measured(), 2), "expected_fps": self.fps,
                "frames": s.frames, "rejected": s.rejected, "dropped": s.rejected + self.ring.out_of_order,
                "restarts": s.restarts, "stalls": s.stalls, "errors": s.errors, "last_error": s.last_error,
                "buffer_frames": len(self.ring), "buffer_mb": round(self.ring.nbytes / 1e6, 1)}
