"""HX711s read through the Linux kernel IIO driver (``compatible = "avia,hx711"``) in sysfs.

The kernel driver bit-bangs with interrupts off around each SCK pulse, so the user-space
preemption problem of :mod:`daemon.sensing.hx711_gpio` does not exist here. What the driver does,
and what that means for us (drivers/iio/adc/hx711.c):

- ``in_voltage0_raw`` is channel A (gain 128 or 64), ``in_voltage1_raw`` channel B (gain 32).
  A read blocks in the kernel until the chip has a conversion ready: up to ~1 s, then a 10 ms
  reset and up to ~1 s more, then ``EIO``. We treat EIO/ETIMEDOUT/EAGAIN/EBUSY as TIMEOUT.
- The value is *offset binary*: the driver XORs the chip's two's complement word with 0x800000,
  so 8388608 means zero. We undo that, so both backends report the same signed counts.
- Scale (``in_voltage_scale``) is shared by both channels and reflects the gain used last; it is
  recorded for diagnostics only (calibration works in counts).
- Reading channel A and B of one chip alternately makes the driver switch gain before each read
  (an extra conversion, and the first word after a gain change is not settled). Prefer one
  channel per chip.
- The driver does not check DOUT after the last pulse, so desyncs are invisible here; all-ones
  and rail words are still caught by :func:`~daemon.sensing.polling.classify_word`.

One reader thread per configured channel: a dead chip blocks its read for ~2 s in the kernel and
must not starve the healthy ones. Row and block semantics are those of
:class:`~daemon.sensing.polling.PolledSource`.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .base import Flag
from .polling import Clock, PolledSource, Reading, classify_word

if TYPE_CHECKING:  # the driver reads its settings; it imports no config code
    from .backends.iio import IioChannel, IioSensing

log = logging.getLogger(__name__)

ReadFile = Callable[[Path], str]

#: errno values the driver returns when the chip did not become ready in time
_TIMEOUT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY}
#: errno values meaning the attribute or device is gone (driver unbound, overlay removed)
_MISSING_ERRNOS = {errno.ENOENT, errno.ENODEV, errno.ENXIO}
#: the driver's offset: raw = word ^ 0x800000
IIO_OFFSET_BIT = 0x800000


def read_sysfs(path: Path) -> str:
    """Read one sysfs attribute afresh (sysfs computes the value on each open+read)."""
    with open(path, "rb", buffering=0) as f:
        return f.read(64).decode("ascii", errors="replace")


class IioSource(PolledSource):
    """:class:`~daemon.sensing.base.SampleSource` over the kernel hx711 IIO driver."""

    _thread_prefix = "iio"

    def __init__(self, cfg: IioSensing, clock: Clock = time.monotonic, wallclock: Clock = time.time,
                 read_file: ReadFile | None = None):
        super().__init__(cfg.channel_names(), cfg.rate_hz, clock, wallclock)
        self.cfg = cfg
        self._read_file = read_file or read_sysfs
        self.raw_paths = [self.device_dir(ch) / f"{ch.channel}_raw" for ch in cfg.channels]
        self._last_good: list[int | None] = [None] * len(cfg.channels)
        self._complained: set[tuple[int, str]] = set()

    def device_dir(self, ch: IioChannel) -> Path:
        if ch.device.startswith("label:"):
            return self._by_label(ch.device[len("label:"):])
        p = Path(ch.device)
        return p if p.is_absolute() else self.cfg.sysfs_root / ch.device

    def _by_label(self, label: str) -> Path:
        """The device whose sysfs ``label`` is ``label`` (the overlay's ``label=`` parameter).

        ``iio:deviceN`` numbers follow probe order and can change when a chip is added or fails
        to probe; the label a technician gave each chip in config.txt does not."""
        found: dict[str, Path] = {}
        try:
            for d in sorted(self.cfg.sysfs_root.iterdir()):
                try:
                    found[self._read_file(d / "label").strip()] = d
                except OSError:
                    continue
        except OSError:
            pass
        if label in found:
            return found[label]
        log.warning("no IIO device labelled %r under %s (labels found: %s); check the dtoverlay "
                    "line's label= in config.txt", label, self.cfg.sysfs_root,
                    ", ".join(sorted(found)) or "none")
        return self.cfg.sysfs_root / f"label:{label}"  # absent: its reads count as missing

    # ------------------------------------------------------------ PolledSource hooks

    def _startup_grace(self) -> float:
        return 3.0 / self.rate_hz

    def _join_timeout(self) -> float:
        return 2.5  # a reader may sit in a ~2 s kernel read of a dead chip; it is a daemon thread

    def _open(self) -> None:
        for i, ch in enumerate(self.cfg.channels):
            info = self.probe(ch)
            self._diag[i].d.extra.update(info)
            if not info["present"]:
                # Keep going: the channel reads MISSING and recovers if the device shows up
                # (overlay loaded late). One missing shelf must not stop the whole unit.
                log.error("iio %s: device directory %s not found", ch.name, self.device_dir(ch))
            elif info.get("name") != "hx711":
                log.warning("iio %s: %s/name is %r, expected 'hx711'", ch.name,
                            self.device_dir(ch), info.get("name"))

    def probe(self, ch: IioChannel) -> dict[str, object]:
        """Device facts for diagnostics: present, name, scale (None where unreadable)."""
        d = self.device_dir(ch)
        info: dict[str, object] = {"path": str(d / f"{ch.channel}_raw"), "present": d.is_dir()}
        info["name"] = self._attr(d / "name")
        # The driver shares scale by type (in_voltage_scale); accept a per-channel one too.
        info["scale"] = self._attr(d / f"{ch.channel}_scale") or self._attr(d / "in_voltage_scale")
        return info

    def _attr(self, path: Path) -> str | None:
        try:
            return self._read_file(path).strip()
        except OSError:
            return None

    def _reader_loop(self, i: int) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            r = self.read_channel(i)
            self._post(i, r)
            next_t += period
            now = time.monotonic()
            if next_t < now - period:
                next_t = now  # a read blocked for long (dead chip): resume, do not burst
            wait = next_t - now
            if wait > 0:
                self._stop.wait(wait)

    # ------------------------------------------------------------ one read

    def read_channel(self, i: int) -> Reading:
        """Read and classify channel ``i`` once (blocks as long as the kernel read blocks)."""
        path = self.raw_paths[i]
        try:
            text = self._read_file(path)
        except OSError as exc:
            return self._failed(i, exc)
        try:
            raw = int(text.strip())
        except ValueError:
            self._complain(i, "garbage", f"non-integer content {text[:20]!r} in {path}")
            return Reading(None, Flag.GLITCH, None, self._clock(), cause="not an integer")
        if not 0 <= raw <= 0xFFFFFF:
            return Reading(None, Flag.GLITCH, None, self._clock(), cause="out of range")
        word = raw ^ IIO_OFFSET_BIT
        value, flag, cause = classify_word(word, self._last_good[i])
        if flag == Flag.OK:
            self._last_good[i] = value
        return Reading(value, flag, word, self._clock(), cause=cause)

    def _failed(self, i: int, exc: OSError) -> Reading:
        code = exc.errno
        if isinstance(exc, FileNotFoundError) or code in _MISSING_ERRNOS:
            self._complain(i, "missing", f"{self.raw_paths[i]} is gone ({exc.strerror})")
            return Reading(None, Flag.MISSING, None, self._clock(), cause="missing")
        if code in _TIMEOUT_ERRNOS:
            return Reading(None, Flag.TIMEOUT, None, self._clock(), cause=f"{errno.errorcode.get(code, code)}")
        # EACCES and the like: a setup problem, not a chip problem; say so once, read MISSING.
        self._complain(i, "oserror", f"cannot read {self.raw_paths[i]}: {exc}")
        return Reading(None, Flag.MISSING, None, self._clock(), cause=str(exc.strerror))

    def _complain(self, i: int, kind: str, msg: str) -> None:
        if (i, kind) not in self._complained:  # once per channel and kind, not 10 times a second
            self._complained.add((i, kind))
            log.error("iio %s: %s", self.channels[i], msg)
