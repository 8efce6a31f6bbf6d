"""Real-time replay releases samples as they fall due, not whole recorded blocks late."""
from __future__ import annotations

import numpy as np

from daemon.sensing.base import SampleBlock
from daemon.sensing.pacing import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _blocks(n_blocks: int, per: int, rate: float = 50.0):
    t = 1000.0
    for _ in range(n_blocks):
        tt = t + np.arange(per) / rate
        t = tt[-1] + 1 / rate
        yield SampleBlock(tt, np.zeros((per, 2)), np.zeros((per, 2), np.uint8))


def test_speed_one_releases_each_sample_when_due():
    clock = FakeClock()
    it = _blocks(3, 10)
    p = Pacer(1.0, clock, clock.sleep)
    got = []
    while (b := p.next(lambda: next(it, None))) is not None:
        # a live driver hands over a sample no earlier than it was measured, and not later either
        assert abs(clock.now - p.due(float(b.t[-1]))) < 1e-9
        got.append(b)
    assert sum(len(b) for b in got) == 30 and all(len(b) == 1 for b in got)
    assert np.all(np.diff(np.concatenate([b.t for b in got])) > 0)
    assert abs(clock.now - 100.0 - 29 / 50) < 1e-9  # total replay time = recording span


def test_late_reader_gets_everything_already_due_at_once_and_speed_zero_is_untouched():
    clock = FakeClock()
    it = _blocks(2, 10)
    p = Pacer(2.0, clock, clock.sleep)
    first = p.next(lambda: next(it, None))
    assert len(first) == 1
    clock.now += 0.1  # the pipeline was busy for 0.1 s: 0.2 s of recording (10 samples) fell due
    second = p.next(lambda: next(it, None))
    assert len(second) == 9  # the rest of block 1, not more: block 2 is fetched on the next call
    third = p.next(lambda: next(it, None))
    assert len(third) == 1 and third.t[0] > second.t[-1]
    it0 = _blocks(2, 10)
    p0 = Pacer(0.0, clock, clock.sleep)
    assert len(p0.next(lambda: next(it0, None))) == 10


def test_a_gap_in_the_recording_returns_empty_blocks_after_the_timeout():
    clock = FakeClock()
    t = np.array([0.0, 10.0])  # ten seconds of silence between two samples
    blocks = iter([SampleBlock(1000 + t, np.zeros((2, 1)), np.zeros((2, 1), np.uint8))])
    p = Pacer(1.0, clock, clock.sleep)
    fetch = lambda: next(blocks, None)  # noqa: E731
    assert len(p.next(fetch, timeout=0.5)) == 1
    empties = 0
    while len(b := p.next(fetch, timeout=0.5)) == 0:
        empties += 1
        assert clock.slept[-1] <= 0.5  # never blocks longer than asked
    assert empties == 19 and b.t[0] == 1010.0
