"""The GPIO bit-bang HX711 backend against the bit-exact fake chip.

Single reads run on a simulated clock (deterministic, including preemption); the threaded source
runs in real time at 80 Hz for well under a second per test, on a :class:`PulseClock`: inside a
read the reader thread's time is simulated, so a loaded machine preempting a thread mid-word does
not become a timing violation (only an injected ``preempt_next`` does). Waits for something to
happen are conditions with a generous deadline, never a fixed number of real seconds.
"""
from __future__ import annotations

import importlib
import sys
import time
import types

import numpy as np
import pytest

from daemon.config import Hx711Chip, Hx711Sensing
from daemon.sensing.base import Flag, SampleSource
from daemon.sensing.hx711_gpio import ChipReader, Hx711Source
from daemon.sensing.polling import Reading, RowAssembler, classify_word, to_signed
from tests.fakes.fake_gpio import FakeGPIO, FakeHx711, PulseClock, SimClock

DOUT, SCK = 5, 6


def make_reader(value=0, gain=128, rate=80, deadline=0.3, settle=4, **chip_kw):
    clk = SimClock()
    gpio = FakeGPIO(clk)
    chip = gpio.attach(FakeHx711(dout=DOUT, sck=SCK, value=value, rate_hz=rate, **chip_kw))
    gpio.setmode(gpio.BCM)
    reader = ChipReader(gpio, Hx711Chip(name="c0", dout=DOUT, sck=SCK, gain=gain), rate, deadline,
                        clk, clk.sleep, settle_reads=settle)
    reader.setup()
    reader.power_cycle()
    return clk, gpio, chip, reader


def settled(reader: ChipReader) -> None:
    while reader.settle_left:
        r = reader.read()
        assert r is not None and r.settling, r


# ---------------------------------------------------------------- decoding, bit for bit


@pytest.mark.parametrize("value", [0, 1, 2, 1234, -1234, 123456, -123456, 0x555555 & 0x7FFFFF,
                                   -0x2AAAAA, 0x7FFFFE, -0x7FFFFF])
def test_decodes_known_values_bit_exact(value):
    _, _, chip, reader = make_reader(value)
    settled(reader)
    r = reader.read()
    assert r.flag == Flag.OK and r.value == value  # 0 included: the hx711 package drops it
    assert r.word == value & 0xFFFFFF


def test_fake_protocol_agrees_with_the_hx711_package(monkeypatch):
    """An independent decoder (the PyPI package's own _read) reads the same values off the fake,
    so the fake's bit order and sign handling are not just agreeing with themselves."""
    clk = SimClock()
    gpio = FakeGPIO(clk)
    chip = gpio.attach(FakeHx711(dout=DOUT, sck=SCK, value=0, rate_hz=80))
    rpi = types.ModuleType("RPi")
    rpi.GPIO = gpio
    monkeypatch.setitem(sys.modules, "RPi", rpi)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", gpio)
    monkeypatch.delitem(sys.modules, "hx711", raising=False)
    pkg = importlib.import_module("hx711")
    # Its constructor sleeps and it times pulses with perf_counter: give it the simulated clock.
    monkeypatch.setattr(pkg, "time", types.SimpleNamespace(sleep=clk.sleep, perf_counter=clk))
    try:
        dev = pkg.HX711(dout_pin=DOUT, pd_sck_pin=SCK, gain=128, channel="A")
        for v in (4321, -4321, 0x123456, -0x654321, 1):
            chip.value = v
            got = [dev._read() for _ in range(4)][-1]  # flush settling/old conversions
            assert got == v
    finally:
        sys.modules.pop("hx711", None)


@pytest.mark.parametrize("gain,pulses", [(128, 25), (32, 26), (64, 27)])
def test_gain_sets_the_number_of_pulses(gain, pulses):
    clk, _, chip, reader = make_reader(777, gain=gain)
    for _ in range(6):
        reader.read()
    clk.sleep(0.05)
    chip.dout_level(clk())  # lets the fake finish its last read record
    done = [rec for rec in chip.reads if not rec.aborted]
    assert len(done) >= 6
    assert {rec.pulses for rec in done} == {pulses}
    assert chip.gain == gain and chip.overclocked == 0


def test_settling_reads_are_discarded_and_counted():
    _, _, chip, reader = make_reader(5000, gain=64)
    results = [reader.read() for _ in range(6)]
    assert [r.settling for r in results] == [True] * 4 + [False] * 2
    # the fake's unsettled words (power-up, then the gain change to 64) never come out as values
    assert all(r.value == 5000 for r in results[4:])
    assert any(r.word != 5000 for r in results[:4])


# ---------------------------------------------------------------- named fault conditions


def test_dead_chip_times_out_at_the_deadline():
    clk, _, _, reader = make_reader(1, dead=True, deadline=0.2)
    t0 = clk()
    r = reader.read()
    assert r.flag == Flag.TIMEOUT and r.value is None and r.cause == "not ready"
    assert 0.2 <= clk() - t0 < 0.2 + 0.01


def test_stuck_dout_high_is_timeout_and_stuck_low_is_desync_then_timeout():
    _, _, _, high = make_reader(1, stuck_dout=1, deadline=0.05)
    assert high.read().flag == Flag.TIMEOUT
    _, _, _, low = make_reader(1, stuck_dout=0, deadline=0.05)
    first, second = low.read(), low.read()
    assert first.flag == Flag.GLITCH and first.cause == "desync" and first.word == 0
    assert second.flag == Flag.TIMEOUT and second.cause == "dout held low"


@pytest.mark.parametrize("word,flag", [(0x7FFFFF, Flag.SATURATED), (0x800000, Flag.SATURATED),
                                       (0xFFFFFF, Flag.GLITCH)])
def test_injected_glitch_and_rail_words_are_flagged(word, flag):
    _, _, chip, reader = make_reader(250000)
    settled(reader)
    assert reader.read().value == 250000
    chip.inject_words(word)
    r = reader.read()
    assert r.flag == flag and r.value is None and r.word == word
    assert reader.read().value == 250000


def test_all_ones_near_zero_is_a_real_minus_one():
    _, _, chip, reader = make_reader(0)
    settled(reader)
    assert reader.read().value == 0
    chip.value = -1
    r = reader.read()
    assert r.flag == Flag.OK and r.value == -1


def test_desync_is_flagged_then_reads_recover():
    _, _, chip, reader = make_reader(-42)
    settled(reader)
    chip.desync_next()
    r = reader.read()
    assert r.flag == Flag.GLITCH and r.cause == "desync"
    assert reader.read().value == -42


def test_preempted_clock_pulse_is_a_timing_violation_and_the_chip_resettles():
    _, _, chip, reader = make_reader(31337)
    settled(reader)
    ups = chip.power_ups
    chip.preempt_next(pulse=10, stretch_s=100e-6)
    r = reader.read()
    assert r.flag == Flag.TIMING and "pulse 10" in r.cause
    assert chip.power_ups >= ups + 1            # the fake chip really powered down and reset
    assert reader.max_high_s > 60e-6
    after = [reader.read() for _ in range(5)]
    assert [x.settling for x in after] == [True] * 4 + [False]
    assert after[-1].value == 31337


def test_short_stretch_below_60us_is_harmless():
    _, _, chip, reader = make_reader(31337)
    settled(reader)
    chip.preempt_next(pulse=3, stretch_s=40e-6)
    r = reader.read()
    assert r.flag == Flag.OK and r.value == 31337
    assert 40e-6 <= reader.max_high_s <= 60e-6


def test_classify_word_and_sign():
    assert to_signed(0x800000) == -0x800000 and to_signed(0x7FFFFF) == 0x7FFFFF
    assert classify_word(0, None) == (0, Flag.OK, "")
    assert classify_word(0xFFFFFF, None)[1] == Flag.GLITCH
    assert classify_word(0xFFFFFF, 10)[:2] == (-1, Flag.OK)
    assert classify_word(0xFFFFFF, 100000)[1] == Flag.GLITCH


# ---------------------------------------------------------------- rows


def test_row_assembler_does_not_wait_for_a_down_chip():
    asm = RowAssembler(2, period=0.1, startup_grace=1.0, now=0.0)
    asm.post(0, Reading(5, Flag.OK, 5, 0.0))
    asm.post(1, Reading(None, Flag.TIMEOUT, None, 0.0))
    assert asm.due_in(0.01) == 0.0
    row, lost = asm.take(0.01)
    assert row[0].value == 5 and row[1].flag == Flag.TIMEOUT
    assert lost == [Flag.OK, Flag.OK]  # the TIMEOUT was counted when it was posted
    # chip 1 is down: a fresh reading on chip 0 alone makes the next row due
    assert asm.due_in(0.02) > 0
    asm.post(0, Reading(6, Flag.OK, 6, 0.05))
    assert asm.due_in(0.05) == 0.0


def test_row_assembler_gives_a_late_live_chip_timeout_after_1_5_periods():
    asm = RowAssembler(2, period=0.1, startup_grace=1.0, now=0.0)
    asm.post(0, Reading(1, Flag.OK, 1, 0.0))
    asm.post(1, Reading(2, Flag.OK, 2, 0.0))
    asm.take(0.0)
    asm.post(0, Reading(3, Flag.OK, 3, 0.1))
    assert asm.due_in(0.1) == pytest.approx(0.05)
    assert asm.due_in(0.149) > 0
    assert asm.due_in(0.151) == 0.0
    row, lost = asm.take(0.151)
    assert row[0].value == 3 and row[1].flag == Flag.TIMEOUT and lost == [Flag.OK, Flag.TIMEOUT]
    # while a chip resets after a preempted read, its missed slots are TIMING, not TIMEOUT
    asm.post(1, Reading(None, Flag.TIMING, None, 0.2))
    asm.take(0.2)
    row, lost = asm.take(0.4)
    assert row[1].flag == Flag.TIMING and lost[1] == Flag.TIMING


def test_shared_pins_are_rejected():
    cfg = Hx711Sensing(backend="hx711", chips=[Hx711Chip(name="a", dout=5, sck=6),
                                               Hx711Chip(name="b", dout=13, sck=6)])
    with pytest.raises(ValueError, match="GPIO 6"):
        Hx711Source(cfg, gpio=FakeGPIO())


def test_missing_gpio_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "RPi", None)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", None)
    cfg = Hx711Sensing(backend="hx711", chips=[Hx711Chip(name="a", dout=5, sck=6)])
    src = Hx711Source(cfg)  # constructing never touches the hardware
    with pytest.raises(RuntimeError, match="rpi-lgpio"):
        src.start()


# ---------------------------------------------------------------- the threaded source, real time


CLOCK = PulseClock()  # one per process is enough: holds are per thread


def three_chips(dead_c=True):
    gpio = FakeGPIO(CLOCK)
    a = gpio.attach(FakeHx711(dout=5, sck=6, value=4321, rate_hz=80))
    b = gpio.attach(FakeHx711(dout=13, sck=19, value=lambda t: -700 - int(t * 1000) % 50, rate_hz=80))
    c = gpio.attach(FakeHx711(dout=20, sck=21, value=99, rate_hz=80, dead=dead_c))
    cfg = Hx711Sensing(backend="hx711", rate_hz=80, read_deadline_ms=60, chips=[
        Hx711Chip(name="a", dout=5, sck=6), Hx711Chip(name="b", dout=13, sck=19),
        Hx711Chip(name="c", dout=20, sck=21)])
    return gpio, (a, b, c), cfg


def pulse_source(cfg, gpio) -> Hx711Source:
    """The threaded source sharing the fake's PulseClock (its sleep releases a hold)."""
    return Hx711Source(cfg, gpio=gpio, clock=CLOCK, sleep=CLOCK.sleep)


def wait_for(what, cond, src, timeout=20.0):
    """Keep reading rows until ``cond()`` holds; fail after ``timeout`` s (a deadline, not a luck window)."""
    blocks, end = [], time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        blk = src.read(0.05)
        if len(blk):
            blocks.append(blk)
    return blocks


def collect(src, seconds):
    blocks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        blk = src.read(0.05)
        if len(blk):
            blocks.append(blk)
    t = np.concatenate([b.t for b in blocks])
    return t, np.vstack([b.values for b in blocks]), np.vstack([b.flags for b in blocks])


def test_dead_chip_is_timeout_while_the_others_keep_producing():
    gpio, (a, b, c), cfg = three_chips()
    src = pulse_source(cfg, gpio)
    assert isinstance(src, SampleSource)
    src.start()
    try:
        t, values, flags = collect(src, 0.7)
    finally:
        src.close()
    assert src.channels == ["a", "b", "c"] and src.units == "counts"
    assert (flags[:, 2] == Flag.TIMEOUT).all() and np.isnan(values[:, 2]).all()
    ok_a, ok_b = flags[:, 0] == 0, flags[:, 1] == 0
    # A loaded test machine really preempts a pulse now and then (each costs ~6 slots: the
    # TIMING read and the settling reads after the reset) or stalls a thread past its slot
    # (TIMEOUT); those are the only losses allowed.
    assert set(np.unique(flags[:, :2])) <= {0, int(Flag.TIMING), int(Flag.TIMEOUT)}
    assert ok_a.mean() > 0.5 and ok_b.mean() > 0.5
    assert (values[ok_a, 0] == 4321).all()
    assert ((values[ok_b, 1] <= -700) & (values[ok_b, 1] > -750)).all()
    assert np.isnan(values[~ok_a, 0]).all()
    rate = (len(t) - 1) / (t[-1] - t[0])
    assert 50 < rate < 100, rate                 # rows follow the live chips at ~80 Hz
    assert (np.diff(t) >= 0).all()
    cnt, diag = src.counters(), src.diagnostics()
    # counters count acquisitions: one timeout per 60 ms deadline for the dead chip
    assert cnt["c"].timeouts == diag["c"].timeouts >= 8 and cnt["c"].samples == 0
    assert cnt["a"].samples == diag["a"].good >= int(ok_a.sum())
    assert 60 < diag["a"].measured_sps < 100
    assert diag["a"].distinct_values == 1 and diag["b"].distinct_values > 1
    assert diag["c"].measured_sps == 0 and diag["c"].timeouts > 0
    assert diag["a"].settling_discarded >= 4     # more if a pulse really got preempted


def test_glitches_desync_and_rails_are_flagged_and_counted():
    gpio, (a, b, c), cfg = three_chips(dead_c=False)
    src = pulse_source(cfg, gpio)
    src.start()
    try:
        # every chip settled and delivering (a starved thread just takes longer to get there)
        wait_for("settled chips", lambda: all(d.good >= 2 for d in src.diagnostics().values()), src)
        good_a = src.diagnostics()["a"].good
        a.inject_words(0xFFFFFF, 0x7FFFFF)
        b.desync_next()
        blocks = wait_for("the injected words to be read",
                          lambda: not a._injected and src.diagnostics()["b"].desyncs >= 1, src)
        blocks += wait_for("two more good reads of a", lambda: src.diagnostics()["a"].good >= good_a + 2, src)
    finally:
        src.close()
    flags = np.vstack([blk.flags for blk in blocks])
    values = np.vstack([blk.values for blk in blocks])
    cnt, diag = src.counters(), src.diagnostics()
    # pulses run on simulated time: no scheduling delay can turn into a timing violation or eat an
    # injected word as a settling read, so the counters are exact under any load
    assert diag["a"].timing_violations == 0 and diag["b"].timing_violations == 0
    assert cnt["a"].glitches == 1 and cnt["a"].saturations == 1
    assert diag["b"].desyncs == 1 and cnt["b"].glitches == 1
    # rows keep the latest reading per chip: a row can carry a newer reading than the glitch when
    # a loaded machine delays the row, so rows are checked only against what was overwritten
    assert (flags[:, 0] & (Flag.GLITCH | Flag.SATURATED)).any() or diag["a"].overwritten
    assert (flags[:, 1] == Flag.GLITCH).any() or diag["b"].overwritten
    assert (values[flags[:, 2] == 0, 2] == 99).all()


def test_timing_violation_is_counted_and_the_source_recovers():
    gpio, (a, b, c), cfg = three_chips(dead_c=False)
    src = pulse_source(cfg, gpio)
    src.start()
    try:
        collect(src, 0.15)
        ups = a.power_ups
        a.preempt_next(pulse=12, stretch_s=150e-6)
        t, values, flags = collect(src, 0.35)
    finally:
        src.close()
    assert a.power_ups >= ups + 1
    diag = src.diagnostics()["a"]
    assert diag.timing_violations >= 1 and diag.max_sck_high_us > 60
    assert src.counters()["a"].timing >= 1
    assert (flags[:, 0] == Flag.TIMING).sum() >= 1
    first_bad = int(np.argmax(flags[:, 0] == Flag.TIMING))
    recovered = values[first_bad:, 0][flags[first_bad:, 0] == 0]
    assert len(recovered) >= 5 and (recovered == 4321).all()  # settled again, true values


def test_close_stops_threads_and_powers_chips_down():
    gpio, chips, cfg = three_chips()
    src = pulse_source(cfg, gpio)
    src.start()
    src.read(0.2)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert not any(th.is_alive() for th in src.threads)
    assert all(th.daemon for th in src.threads)
    assert sorted(gpio.cleaned) == [5, 6, 13, 19, 20, 21]
    assert all(ch._sck == 1 for ch in chips)     # SCK left high: chips powered down
    t0 = time.monotonic()
    assert len(src.read(0.5)) == 0 and time.monotonic() - t0 < 0.1
    src.close()  # idempotent
