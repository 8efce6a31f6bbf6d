"""Replay of AiFi's own export (the AutoCheckout / Nanostore recordings).

``plate_data.json``: one message per line, each a batch for one gondola: ``values.data`` is a base64
float32 array ``[12, shelves+1, plates+1]`` in grams (index 0 is NaN padding), ``timestamp`` the
time of its first sample, samples 1/60 s apart. Gondolas are sampled independently, so this source
merges them onto one 60 Hz grid (each grid row takes every gondola's latest sample at or before
it; ≤ 1/60 s of skew, far below the settle window). ``planogram.json`` and ``products.json`` give
the layout and unit weights. Shelf ids are ``"<gondola>-<shelf>"``; channel ids
``"<gondola>-<shelf>-<plate>"``.

The file is streamed: memory stays bounded whatever the recording's length. A corrupt or truncated
line raises :class:`RecordingError` naming the file and line, after every block before it.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..layout import Layout, Placement, Plate, default_unit_sd
from .base import ChannelCounters, CounterBank, Flag, SampleBlock
from .pacing import Pacer

log = logging.getLogger(__name__)

RATE_HZ = 60.0


class RecordingError(Exception):
    """A recording that cannot be read further; ``str()`` names the file and line."""


def _message(line: str, where: str) -> tuple[int, float, np.ndarray]:
    try:
        m = json.loads(line)
        pd = m["document"]["plate_data"]
        g = int(pd["plate_id"]["shelf_id"]["gondola_id"]["id"])
        ts = float(m["timestamp"])
        v = pd["values"]
        shape = [int(s) for s in v["shape"]]
        arr = np.frombuffer(base64.b64decode(v["data"], validate=True), dtype="<f4")
        if len(shape) != 3 or arr.size != shape[0] * shape[1] * shape[2]:
            raise ValueError(f"data has {arr.size} values, shape says {shape}")
        return g, ts, arr.reshape(shape).astype(np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{where}: not a valid AiFi plate_data message "
                             f"({exc.__class__.__name__}: {exc})") from None


def load_layout(folder: Path) -> tuple[Layout, dict[str, str]]:
    """Layout from planogram.json + products.json (+ the plates present in plate_data.json)."""
    folder = Path(folder)
    products: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    for i, line in enumerate(_lines(folder / "products.json"), 1):
        try:
            d = json.loads(line)
            pid = str(d["product_id"]["id"])
            products[pid] = d["metadata"]
            names[pid] = d["metadata"].get("name", "")
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"{folder / 'products.json'}:{i}: bad product ({exc})") from None
    facings: list[tuple[str, str, tuple[int, ...]]] = []
    for i, line in enumerate(_lines(folder / "planogram.json"), 1):
        try:
            d = json.loads(line)
            if not d.get("planogram_product_id"):
                continue  # an empty facing: plates with no product assigned
            sku = str(d["planogram_product_id"]["id"])
            ids = [(int(p["shelf_id"]["gondola_id"]["id"]), int(p["shelf_id"]["shelf_index"]),
                    int(p["plate_index"])) for p in d["plate_ids"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"{folder / 'planogram.json'}:{i}: bad planogram entry ({exc})") from None
        shelves = {(g, s) for g, s, _ in ids}
        for g, s in shelves:
            facings.append((sku, f"{g}-{s}", tuple(sorted(p for gg, ss, p in ids if (gg, ss) == (g, s)))))
    # plates: every non-padding cell of each gondola's first message that carries data
    present: set[tuple[int, int, int]] = set()
    seen_g: set[int] = set()
    path = folder / "plate_data.json"
    for i, line in enumerate(_lines(path), 1):
        try:
            g, _, arr = _message(line, f"{path}:{i}")
        except RecordingError:
            break  # the streaming pass reports it, after the events before it
        if g in seen_g:
            if len(seen_g) >= 1 and i > 4 * max(1, len(seen_g)) + 8:
                break
            continue
        seen_g.add(g)
        finite = np.isfinite(arr).any(axis=0)
        for s in range(1, arr.shape[1]):
            for p in range(1, arr.shape[2]):
                if finite[s, p]:
                    present.add((g, s, p))
    plates = [Plate(f"{g}-{s}", p, i, (f"{g}-{s}-{p}",))
              for i, (g, s, p) in enumerate(sorted(present))]
    have = {(pl.shelf, pl.id) for pl in plates}
    placements = []
    for sku, shelf, pids in facings:
        meta = products.get(sku)
        if not meta or not meta.get("weight"):
            log.warning("AiFi planogram: SKU %s has no unit weight in products.json; ignored", sku)
            continue
        pids = tuple(p for p in pids if (shelf, p) in have)
        if not pids:
            continue
        w = float(meta["weight"])
        placements.append(Placement(sku, shelf, pids, w, default_unit_sd(w), names.get(sku)))
    return Layout(plates, placements), names


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            for line in fh:
                if line.strip():
                    yield line
    except FileNotFoundError:
        raise RecordingError(f"{path}: not found (an AiFi folder holds plate_data.json, "
                             f"planogram.json and products.json)") from None
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: not UTF-8 text ({exc.reason})") from None


class AifiReplaySource:
    units: Literal["counts", "g"] = "g"
    rate_hz = RATE_HZ

    def __init__(self, folder: Path, layout: Layout, speed: float = 0.0,
                 block_s: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.folder = Path(folder)
        self.layout = layout
        self.channels = list(layout.channels)
        self.speed = speed
        self._col = {c: i for i, c in enumerate(self.channels)}
        self._block_rows = max(1, int(round(block_s * RATE_HZ)))
        self._clock, self._sleep = clock, sleep
        self._counters = CounterBank(self.channels)
        self._it: Iterator[SampleBlock] | None = None
        self._pacer = Pacer(speed, clock, sleep)

    def start(self) -> None:
        self._it = self._blocks()

    def counters(self) -> dict[str, ChannelCounters]:
        return self._counters.as_counters()

    def close(self) -> None:
        self._it = None

    def read(self, timeout: float = 1.0) -> SampleBlock | None:
        if self._it is None:
            self.start()
        return self._pacer.next(self._next_block, timeout)

    def _next_block(self) -> SampleBlock | None:
        block = next(self._it, None)  # type: ignore[arg-type]
        if block is not None:
            self._counters.count(block.flags)
        return block

    # ------------------------------------------------------------------ the merge

    def _blocks(self) -> Iterator[SampleBlock]:
        path = self.folder / "plate_data.json"
        C = len(self.channels)
        dt = 1.0 / RATE_HZ
        # per gondola: pending sample times (m,) and values (m, C_g), and its global columns.
        # The last consumed sample stays pending so later grid rows can still refer to it.
        pend_t: dict[int, np.ndarray] = {}
        pend_v: dict[int, np.ndarray] = {}
        cols: dict[int, np.ndarray] = {}
        srcs: dict[int, np.ndarray] = {}
        last_t: dict[int, float] = {}
        grid_t: float | None = None
        out_t: list[np.ndarray] = []
        out_v: list[np.ndarray] = []
        buffered = 0

        def emit_until(limit: float) -> None:
            nonlocal grid_t, buffered
            if grid_t is None or grid_t > limit + 1e-9:
                return
            k = int(np.floor((limit - grid_t) / dt + 1e-6)) + 1
            T = grid_t + dt * np.arange(k)
            rows = np.full((k, C), np.nan)
            for g in pend_t:
                idx = np.searchsorted(pend_t[g], T + 1e-9, side="right") - 1
                ok = idx >= 0
                rows[np.ix_(ok, cols[g])] = pend_v[g][idx[ok]]
                keep = max(0, int(idx[-1]))
                pend_t[g], pend_v[g] = pend_t[g][keep:], pend_v[g][keep:]
            out_t.append(T)
            out_v.append(rows)
            buffered += k
            grid_t = float(T[-1]) + dt

        def take(force: bool = False) -> Iterator[SampleBlock]:
            nonlocal buffered
            if not out_t:
                return
            t = np.concatenate(out_t)
            v = np.vstack(out_v)
            out_t.clear()
            out_v.clear()
            n = len(t)
            cut = n if force else n - n % self._block_rows
            for a in range(0, cut, self._block_rows):
                b = min(cut, a + self._block_rows)
                vv = v[a:b]
                flags = np.isnan(vv).astype(np.uint8) * np.uint8(Flag.MISSING)
                yield SampleBlock(t[a:b], vv, flags)
            if cut < n:
                out_t.append(t[cut:])
                out_v.append(v[cut:])
            buffered = n - cut

        for i, line in enumerate(_lines(path), 1):
            g, ts, arr = _message(line, f"{path}:{i}")
            n = arr.shape[0]
            if g not in cols:
                S, P = arr.shape[1], arr.shape[2]
                src, dst = [], []
                for s in range(1, S):
                    for p in range(1, P):
                        c = self._col.get(f"{g}-{s}-{p}")
                        if c is not None:
                            src.append(s * P + p)
                            dst.append(c)
                srcs[g] = np.array(src, dtype=np.int64)
                cols[g] = np.array(dst, dtype=np.int64)
                pend_t[g] = np.empty(0)
                pend_v[g] = np.empty((0, len(src)))
            flat = arr.reshape(n, -1)
            if flat.shape[1] <= (srcs[g].max() if len(srcs[g]) else -1):
                raise RecordingError(f"{path}:{i}: gondola {g} changed shape to {list(arr.shape)}")
            pend_t[g] = np.concatenate([pend_t[g], ts + dt * np.arange(n)])
            pend_v[g] = np.vstack([pend_v[g], flat[:, srcs[g]]])
            last_t[g] = ts + (n - 1) * dt
            if grid_t is None:
                grid_t = ts
            # every gondola seen so far has data up to min(last_t): rows before it are final
            emit_until(min(last_t.values()))
            yield from take()
        if last_t:
            emit_until(max(last_t.values()))
        yield from take(force=True)
