"""A fake ``/sys/bus/iio/devices`` tree for the kernel hx711 driver, in a temporary directory.

Layout per device, as the real driver creates it::

    iio:device0/name                          "hx711"
    iio:device0/in_voltage0_raw               channel A, offset binary (word ^ 0x800000)
    iio:device0/in_voltage1_raw               channel B
    iio:device0/in_voltage_scale              shared by type
    iio:device0/in_voltage0_scale_available   "0.000152590 0.000305180 "
    iio:device0/in_voltage1_scale_available

Tests change values with :meth:`FakeIioTree.set_counts` (signed counts, encoded as the driver
does) or :meth:`write_raw` (any text). Faults: :meth:`remove` (the file vanishes), garbage text
via ``write_raw``, and :meth:`fail` (reads raise ``OSError(EIO)``, as the driver does for a chip
that never becomes ready). Real files cannot raise EIO, so failures need the tree's own reader:
pass ``read_file=tree.read_file`` to ``IioSource``; it reads the real files otherwise.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter
from pathlib import Path


def encode_counts(value: int) -> int:
    """Signed counts → what the driver prints in ``*_raw``."""
    value = max(-0x800000, min(0x7FFFFF, int(value)))
    return (value & 0xFFFFFF) ^ 0x800000


class FakeIioTree:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.reads: Counter[Path] = Counter()
        self.read_delay_s = 0.0          # simulate the kernel read blocking until a conversion
        self._fail: dict[Path, tuple[int, int | None]] = {}
        self._lock = threading.Lock()

    def add_device(self, index: int = 0, name: str = "hx711", counts: tuple[int, int] = (0, 0),
                   scale: str | None = "0.000152590", label: str | None = None) -> Path:
        d = self.root / f"iio:device{index}"
        d.mkdir(parents=True, exist_ok=True)
        self._write(d / "name", name + "\n")
        if label is not None:  # the DT node's label property (kernel ≥ 5.13 exposes it)
            self._write(d / "label", label + "\n")
        for ch, v in enumerate(counts):
            self._write(d / f"in_voltage{ch}_raw", f"{encode_counts(v)}\n")
        if scale is not None:
            self._write(d / "in_voltage_scale", scale + "\n")
        self._write(d / "in_voltage0_scale_available", "0.000152590 0.000305180 \n")
        self._write(d / "in_voltage1_scale_available", "0.000610360 \n")
        return d

    def raw_path(self, device: str | int, channel: str = "in_voltage0") -> Path:
        dev = f"iio:device{device}" if isinstance(device, int) else device
        return self.root / dev / f"{channel}_raw"

    # ------------------------------------------------------------ values and faults

    def set_counts(self, device: str | int, value: int, channel: str = "in_voltage0") -> None:
        self.write_raw(device, f"{encode_counts(value)}\n", channel)

    def write_raw(self, device: str | int, text: str, channel: str = "in_voltage0") -> None:
        self._write(self.raw_path(device, channel), text)

    def remove(self, device: str | int, channel: str = "in_voltage0") -> None:
        self.raw_path(device, channel).unlink(missing_ok=True)

    def fail(self, device: str | int, channel: str = "in_voltage0", code: int = errno.EIO,
             times: int | None = None) -> None:
        """Reads of this attribute raise ``OSError(code)`` (``times`` times, or until healed)."""
        with self._lock:
            self._fail[self.raw_path(device, channel)] = (code, times)

    def heal(self, device: str | int, channel: str = "in_voltage0") -> None:
        with self._lock:
            self._fail.pop(self.raw_path(device, channel), None)

    # ------------------------------------------------------------ the injectable reader

    def read_file(self, path: Path) -> str:
        path = Path(path)
        with self._lock:
            self.reads[path] += 1
            fault = self._fail.get(path)
            if fault is not None:
                code, times = fault
                if times is not None:
                    if times <= 1:
                        del self._fail[path]
                    else:
                        self._fail[path] = (code, times - 1)
        if fault is not None:
            raise OSError(fault[0], os.strerror(fault[0]), str(path))
        if self.read_delay_s and path.name.endswith("_raw"):
            time.sleep(self.read_delay_s)
        with open(path, "rb") as f:
            return f.read(64).decode("ascii", errors="replace")

    # ------------------------------------------------------------ internals

    @staticmethod
    def _write(path: Path, text: str) -> None:
        # Atomic replace: a concurrent reader sees the old or the new value, never half of one.
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
