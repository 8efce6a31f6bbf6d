"""The polling core shared by the two HX711 drivers, :mod:`~daemon.sensing.hx711_gpio` (GPIO
bit-bang) and :mod:`~daemon.sensing.iio` (kernel driver): reader threads post one
:class:`Reading` per attempt, :class:`RowAssembler` turns independent channels into rows, and
:class:`PolledSource` hands out :class:`~daemon.sensing.base.SampleBlock` s and keeps counters and
:class:`ChannelDiagnostics` (docs/sensing.md, "Rows"). Also here: what a 24-bit HX711 word means
(:func:`classify_word`), since both drivers receive the same words.

A driver subclasses :class:`PolledSource` and implements ``_open`` and ``_reader_loop`` (and
optionally ``_shutdown``, ``_startup_grace``, ``_join_timeout``). Nothing here knows about plates,
events or MQTT.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .base import ChannelCounters, Flag, SampleBlock, counters_for

log = logging.getLogger(__name__)

Clock = Callable[[], float]


# ---------------------------------------------------------------- HX711 words


#: A 0xFFFFFF word is -1 in two's complement. It is taken as a real -1 only when the previous good
#: reading was this close to -1 (so a wrong guess costs at most this many counts, about 1 g on a
#: 20 kg cell at gain 128); otherwise it is the classic all-ones glitch.
ALL_ONES_TOLERANCE = 256
WORD_MASK = 0xFFFFFF


def to_signed(word: int) -> int:
    """24-bit two's complement word → signed int."""
    word &= WORD_MASK
    return word - (1 << 24) if word & 0x800000 else word


def classify_word(word: int, last_good: int | None) -> tuple[int | None, Flag, str]:
    """Decide what a clocked-out 24-bit word means: (signed value or None, flag, reason)."""
    word &= WORD_MASK
    if word in (0x7FFFFF, 0x800000):
        # Keep it simple (lead's call): a rail word is a clipped ADC, not a weight.
        return None, Flag.SATURATED, "rail"
    if word == WORD_MASK and (last_good is None or abs(last_good + 1) > ALL_ONES_TOLERANCE):
        return None, Flag.GLITCH, "all-ones"
    return to_signed(word), Flag.OK, ""


# ---------------------------------------------------------------- readings, rows, the source


@dataclass(frozen=True)
class Reading:
    """One attempt to read one channel."""

    value: int | None          # signed counts; None unless flag is OK
    flag: Flag
    word: int | None           # the raw word as received (None when nothing was clocked out)
    t: float                   # injected clock() when the attempt ended
    settling: bool = False     # a good-looking word thrown away because the chip just (re)started
    cause: str = ""            # short human reason: "not ready", "dout held low", "desync", ...


@dataclass
class ChannelDiagnostics:
    """What ``shelfcal diag`` prints per channel (Klipper's measured-vs-expected report)."""

    channel: str
    expected_sps: float
    measured_sps: float        # words received per second over the recent window
    distinct_values: int       # distinct raw words among good reads in the window (1 = stuck)
    window_reads: int
    reads: int = 0             # attempts, all outcomes
    good: int = 0
    timeouts: int = 0
    timeouts_dout_low: int = 0  # not ready *and* DOUT held low: a short / stuck chip, not a dead one
    glitches: int = 0
    desyncs: int = 0
    saturated: int = 0
    timing_violations: int = 0
    settling_discarded: int = 0
    missing: int = 0
    overwritten: int = 0        # good readings replaced before a row took them (chip faster than rows)
    max_sck_high_us: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DiagWindow:
    """Per-channel diagnostic tallies plus a bounded window of recent words."""

    def __init__(self, channel: str, expected_sps: float):
        self.d = ChannelDiagnostics(channel, expected_sps, 0.0, 0, 0)
        n = max(20, int(expected_sps * 10))  # ~10 s of reads
        self.times: deque[float] = deque(maxlen=n)
        self.good_words: deque[int] = deque(maxlen=n)

    def note(self, r: Reading) -> None:
        d = self.d
        d.reads += 1
        if r.word is not None:
            self.times.append(r.t)
        if r.settling:
            d.settling_discarded += 1
            return
        if r.flag == Flag.OK:
            d.good += 1
            if r.word is not None:
                self.good_words.append(r.word)
        if r.flag & Flag.TIMEOUT:
            d.timeouts += 1
            if r.cause == "dout held low":
                d.timeouts_dout_low += 1
        if r.flag & Flag.GLITCH:
            d.glitches += 1
            if r.cause == "desync":
                d.desyncs += 1
        if r.flag & Flag.SATURATED:
            d.saturated += 1
        if r.flag & Flag.TIMING:
            d.timing_violations += 1
        if r.flag & Flag.MISSING:
            d.missing += 1

    def snapshot(self) -> ChannelDiagnostics:
        d = ChannelDiagnostics(**{**asdict(self.d), "extra": dict(self.d.extra)})
        t = self.times
        d.measured_sps = (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0
        d.distinct_values = len(set(self.good_words))
        d.window_reads = len(t)
        return d


class RowAssembler:
    """Turns independent per-channel readings into rows; pure logic, the caller holds the lock.

    Chips have their own oscillators, so a fixed row clock would beat against them and produce
    spurious empty slots. Instead a row is due as soon as every *healthy* channel has a fresh
    reading, or 1.5 periods after the previous row at the latest (a channel with nothing fresh
    then gets TIMEOUT). Channels whose last reading was TIMEOUT/MISSING are "down" and do not hold
    rows back, so a dead chip costs the live ones nothing. With every channel down, rows keep
    coming at the nominal rate (all TIMEOUT) so downstream sees the outage.
    """

    def __init__(self, n: int, period: float, startup_grace: float, now: float):
        self.n = n
        self.period = period
        self.fresh: list[Reading | None] = [None] * n
        self.down = [False] * n
        self.started = [False] * n
        self.overwritten = [0] * n
        self.last: list[Reading | None] = [None] * n
        self.last_row: float | None = None
        self.start_by = now + startup_grace

    def post(self, i: int, r: Reading) -> None:
        old = self.fresh[i]
        if old is not None and old.flag == Flag.OK:
            self.overwritten[i] += 1
        self.fresh[i] = r
        self.down[i] = bool(r.flag & (Flag.TIMEOUT | Flag.MISSING))
        self.last[i] = r
        self.started[i] = True

    def due_in(self, now: float) -> float:
        """0 when a row should be taken now, else seconds to wait (a post may come sooner)."""
        if self.last_row is None:
            # Wait for every channel's first word (settling done) or a bounded startup grace.
            if not all(self.started) and now < self.start_by:
                return min(self.start_by - now, self.period)
            self.last_row = now - self.period
        # A channel still silent after the startup grace (e.g. stuck in a 2 s kernel read) is
        # treated as down until its first reading arrives.
        live = [i for i in range(self.n) if self.started[i] and not self.down[i]]
        if live and all(self.fresh[i] is not None for i in live):
            return 0.0
        limit = self.last_row + (1.5 * self.period if live else self.period)
        return max(0.0, limit - now)

    def take(self, now: float) -> tuple[list[Reading], list[Flag]]:
        """The row, and per channel the flag of any slot loss first seen here (to be counted).

        Fresh readings go in as they are. A down channel repeats its condition (MISSING stays
        MISSING; already counted when posted). A live channel that missed its slot gets TIMEOUT,
        or TIMING while it is resetting after a preempted read (that loss has a known cause). A
        fresh reading replaced before a row took it is counted in ``overwritten``.
        """
        row: list[Reading] = []
        lost: list[Flag] = []
        for i, r in enumerate(self.fresh):
            last = self.last[i]
            loss = Flag.OK
            if r is None:
                if self.down[i] and last is not None:
                    r = Reading(None, last.flag, None, now, cause=last.cause)
                elif last is not None and (last.settling or last.flag & Flag.TIMING):
                    loss = Flag.TIMING
                    r = Reading(None, Flag.TIMING, None, now, cause="resetting")
                else:
                    loss = Flag.TIMEOUT
                    r = Reading(None, Flag.TIMEOUT, None, now, cause="missed slot")
            row.append(r)
            lost.append(loss)
        self.fresh = [None] * self.n
        self.last_row = now
        return row, lost


class PolledSource:
    """Shared core of the threaded hardware backends: reader threads post :class:`Reading` s,
    an emitter thread assembles rows, :meth:`read` hands out the rows gathered since last time.

    Subclasses implement :meth:`_open`, :meth:`_reader_loop` and optionally :meth:`_shutdown`.
    """

    units: Literal["counts", "g"] = "counts"
    #: rows kept for a consumer that stopped calling read(); older rows are dropped and counted
    max_pending_s = 30.0

    def __init__(self, channels: list[str], rate_hz: float, clock: Clock, wallclock: Clock):
        self.channels = list(channels)
        self.rate_hz = float(rate_hz)
        self._clock = clock
        self._wallclock = wallclock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counters = counters_for(self.channels)
        self._diag = [_DiagWindow(c, self.rate_hz) for c in self.channels]
        self._rows: deque[tuple[float, list[Reading]]] = deque()
        self._asm: RowAssembler | None = None
        self.rows_dropped = 0
        self._started = False

    # ------------------------------------------------------------ SampleSource

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._open()
        self._started = True
        self._asm = RowAssembler(len(self.channels), 1.0 / self.rate_hz,
                                  self._startup_grace(), self._clock())
        for i, name in enumerate(self.channels):
            self._spawn(f"{self._thread_prefix}-{name}", self._reader_loop, i)
        self._spawn(f"{self._thread_prefix}-rows", self._emit_loop)

    def read(self, timeout: float = 1.0) -> SampleBlock:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}.read() before start()")
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._rows and not self._stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            rows, self._rows = list(self._rows), deque()
        c = len(self.channels)
        t = np.array([r[0] for r in rows], dtype=np.float64)
        values = np.full((len(rows), c), np.nan, dtype=np.float64)
        flags = np.zeros((len(rows), c), dtype=np.uint8)
        for k, (_, row) in enumerate(rows):
            for j, r in enumerate(row):
                f, v = _cell(r)
                flags[k, j] = f
                if v is not None:
                    values[k, j] = v
        return SampleBlock(t=t, values=values, flags=flags)

    def close(self) -> None:
        if not self._started or self._stop.is_set():
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for th in self._threads:
            th.join(timeout=self._join_timeout())
            if th.is_alive():
                log.warning("thread %s did not stop within %.1f s", th.name, self._join_timeout())
        self._shutdown()

    def counters(self) -> dict[str, ChannelCounters]:
        with self._cond:
            return {k: ChannelCounters(**v.as_dict()) for k, v in self._counters.items()}

    def diagnostics(self) -> dict[str, ChannelDiagnostics]:
        """Per channel: measured vs expected samples/s, distinct raw words, every fault tally."""
        with self._cond:
            out = {}
            for i, w in enumerate(self._diag):
                d = w.snapshot()
                d.overwritten = self._asm.overwritten[i] if self._asm else 0
                out[self.channels[i]] = d
            return out

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # ------------------------------------------------------------ for subclasses

    _thread_prefix = "sensing"

    def _open(self) -> None:
        raise NotImplementedError

    def _reader_loop(self, i: int) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        pass

    def _startup_grace(self) -> float:
        return 2.0

    def _join_timeout(self) -> float:
        return 3.0

    def _post(self, i: int, r: Reading) -> None:
        with self._cond:
            self._diag[i].note(r)
            # Counters count acquisitions as they happen, so a flagged reading that a later one
            # overwrites before the next row is still counted (rows keep the latest reading).
            self._counters[self.channels[i]].count(np.array([_cell(r)[0]], dtype=np.uint8))
            assert self._asm is not None
            self._asm.post(i, r)
            self._cond.notify_all()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        th = threading.Thread(target=self._guard, args=(target, *args), name=name, daemon=True)
        self._threads.append(th)
        th.start()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception:  # a dying reader must be loud, and its channel must read as down
            log.exception("sensing thread %s crashed", threading.current_thread().name)
            if args:  # reader loops get their channel index; the row loop gets none
                self._post(args[0], Reading(None, Flag.MISSING, None, self._clock(),
                                            cause="reader thread crashed"))

    def _emit_loop(self) -> None:
        period = 1.0 / self.rate_hz
        max_rows = max(100, int(self.max_pending_s * self.rate_hz))
        with self._cond:
            assert self._asm is not None
            while not self._stop.is_set():
                wait = self._asm.due_in(self._clock())
                if wait > 0:
                    self._cond.wait(min(wait, period))
                    continue
                row, lost = self._asm.take(self._clock())
                if len(self._rows) >= max_rows:
                    self._rows.popleft()
                    self.rows_dropped += 1
                self._rows.append((self._wallclock(), row))
                for j, loss in enumerate(lost):
                    if loss:  # a live channel missed its slot: that loss is only seen here
                        self._counters[self.channels[j]].count(np.array([loss], dtype=np.uint8))
                self._cond.notify_all()


def _cell(r: Reading) -> tuple[int, int | None]:
    """A reading as one (flag, value) cell of a row."""
    if r.settling:
        # Only posted after a mid-run power-down (a preempted read): the slot was lost to timing.
        return int(Flag.TIMING), None
    if r.flag != Flag.OK or r.value is None:
        return int(r.flag) or int(Flag.GLITCH), None
    return 0, r.value
