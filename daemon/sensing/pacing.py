"""Real-time pacing of recorded samples, so a replay at ``speed > 0`` behaves like a live driver.

A recording stores samples in blocks (0.2 s for AiFi's merge, whatever ``shelfd record`` read);
releasing a whole block when its *last* sample is due would hold the first samples back by the
block length and make a real-time replay slower to react than the unit it recorded. The pacer
instead releases, at each call, exactly the samples that are due by now, sleeping until the next
one is due, as an HX711 thread hands over rows as they arrive.

The mapping between recording time and this host's monotonic clock is logged once at INFO
(``replay paced …``): CLOCK_MONOTONIC is system-wide, so a benchmark in another process can
compute how long after a sample was "measured" its consequence reached it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from .base import SampleBlock

log = logging.getLogger(__name__)


class Pacer:
    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.speed = speed
        self._clock, self._sleep = clock, sleep
        self._buf: SampleBlock | None = None
        self.t0: tuple[float, float] | None = None  # (monotonic, recording time) of the first sample

    def due(self, t: float) -> float:
        """Monotonic time at which recording time ``t`` is released."""
        assert self.t0 is not None
        return self.t0[0] + (t - self.t0[1]) / self.speed

    def next(self, fetch: Callable[[], SampleBlock | None], timeout: float | None = None) -> SampleBlock | None:
        """The next samples due (at least one), or None when ``fetch`` has nothing more.

        With ``timeout``, a wait longer than that (a gap in the recording) returns an empty
        block after ``timeout`` s, as a live driver's read does, so the caller stays responsive
        (SIGTERM, control requests) through the gap."""
        if self.speed <= 0:
            return fetch()
        while self._buf is None or len(self._buf) == 0:
            self._buf = fetch()
            if self._buf is None:
                return None
        buf = self._buf
        if self.t0 is None:
            self.t0 = (self._clock(), float(buf.t[0]))
            log.info("replay paced at %gx: recording t=%.6f is monotonic %.6f", self.speed,
                     self.t0[1], self.t0[0])
        delay = self.due(float(buf.t[0])) - self._clock()
        if timeout is not None and delay > timeout:
            self._sleep(max(0.0, timeout))
            return SampleBlock(buf.t[:0], buf.values[:0], buf.flags[:0])
        if delay > 0:
            self._sleep(delay)
        now_rec = self.t0[1] + (self._clock() - self.t0[0]) * self.speed
        k = max(1, int(np.searchsorted(buf.t, now_rec, side="right")))
        if k >= len(buf):
            self._buf = None
            return buf
        self._buf = SampleBlock(buf.t[k:], buf.values[k:], buf.flags[k:])
        return SampleBlock(buf.t[:k], buf.values[:k], buf.flags[:k])
