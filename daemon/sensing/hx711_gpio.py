"""HX711 load-cell amplifiers bit-banged from user space through an ``RPi.GPIO``-style module.

This replaces the read path of the ``hx711`` PyPI package (the design card's choice), whose
``get_raw_data`` retries forever when a chip never answers, whose constructor sleeps, and which
drops legitimate readings of 0 and -1 (``data not in [False, -1]`` is true for 0 because
``0 == False``). Here every read has a deadline, runs in its own thread, and every way a read can
go wrong is a named, counted :class:`~daemon.sensing.base.Flag` (Klipper style).

The protocol (HX711 datasheet): DOUT low means a conversion is ready; 24 SCK pulses shift it out
MSB first (two's complement); 1, 2 or 3 more pulses choose the gain of the *next* conversion
(A/128, B/32, A/64); after the last pulse DOUT returns high (ESPHome checks this); SCK held high
for more than 60 us powers the chip down and the next low edge resets it to A/128, after which the
first conversions are unsettled.

The row machinery (:class:`~daemon.sensing.polling.PolledSource`, ``Reading``,
``ChannelDiagnostics``, ``classify_word``) is shared with the kernel-IIO backend
(:mod:`daemon.sensing.iio`) and lives in :mod:`daemon.sensing.polling`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import Flag
from .polling import Clock, PolledSource, Reading, classify_word

if TYPE_CHECKING:  # the driver reads its settings; it imports no config code
    from .backends.hx711 import Hx711Chip, Hx711Sensing

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]

#: SCK high longer than this powers the chip down (datasheet: 60 us).
POWER_DOWN_S = 60e-6
#: How long start() holds SCK high to reset a chip. The kernel driver found that resets shorter
#: than ~10 ms give an unstable first value, so we use its number rather than the 60 us minimum.
RESET_HOLD_S = 0.010
#: Extra SCK pulses after the 24 data bits, per gain (sets the gain of the next conversion).
GAIN_PULSES = {128: 1, 32: 2, 64: 3}


# ---------------------------------------------------------------- the bit-bang read path


class ChipReader:
    """One HX711's read path. The source runs one per thread; tests and ``shelfcal`` may call
    :meth:`read` directly (with a simulated clock, it is fully deterministic)."""

    def __init__(self, gpio: Any, chip: Hx711Chip, rate_hz: float, deadline_s: float,
                 clock: Clock = time.monotonic, sleep: Sleep = time.sleep, settle_reads: int = 4,
                 stop: threading.Event | None = None):
        self.gpio = gpio
        self.chip = chip
        self.name = chip.name
        self.deadline_s = deadline_s
        self.clock = clock
        self.sleep = sleep
        self.settle_reads = settle_reads
        self.stop = stop or threading.Event()
        # Poll DOUT often enough to catch an 80 Hz conversion early, rarely enough to stay idle.
        self.poll_s = min(0.001, 0.1 / rate_hz)
        self.extra_pulses = GAIN_PULSES[chip.gain]
        self.settle_left = settle_reads
        self.last_good: int | None = None
        # DOUT must be seen high after a read before a low counts as "ready" again; otherwise a
        # chip that never releases DOUT (desync, short) would be re-read in a tight loop.
        self.armed = True
        self.max_high_s = 0.0
        self.power_cycles = 0
        self.needs_reset = False

    def setup(self) -> None:
        g = self.gpio
        g.setup(self.chip.sck, g.OUT, initial=g.LOW)
        # Pull-up: a disconnected DOUT then reads "never ready" (TIMEOUT), not a stream of zeros.
        g.setup(self.chip.dout, g.IN, pull_up_down=g.PUD_UP)

    def power_cycle(self) -> None:
        """Reset the chip: SCK high well past 60 us, then low. It restarts at gain 128."""
        g = self.gpio
        g.output(self.chip.sck, g.HIGH)
        self.sleep(RESET_HOLD_S)
        g.output(self.chip.sck, g.LOW)
        self.power_cycles += 1
        self.settle_left = self.settle_reads
        self.armed = True

    def power_down(self) -> None:
        g = self.gpio
        g.output(self.chip.sck, g.HIGH)
        self.sleep(RESET_HOLD_S)

    def read(self) -> Reading | None:
        """One attempt: wait for ready (deadline), clock the word, classify it. None if stopped."""
        if self.needs_reset:
            self.needs_reset = False
            self.power_cycle()
        g = self.gpio
        dout, sck = self.chip.dout, self.chip.sck
        inp, out, HIGH, LOW = g.input, g.output, g.HIGH, g.LOW
        clock = self.clock
        deadline = clock() + self.deadline_s
        while True:
            level = inp(dout)
            if level:
                self.armed = True
            elif self.armed:
                break
            if self.stop.is_set():
                return None
            if clock() >= deadline:
                cause = "not ready" if level else "dout held low"
                return Reading(None, Flag.TIMEOUT, None, clock(), cause=cause)
            self.sleep(self.poll_s)

        word = 0
        worst = 0.0
        for k in range(24 + self.extra_pulses):
            t0 = clock()
            out(sck, HIGH)
            out(sck, LOW)
            high = clock() - t0
            if high > worst:
                worst = high
            if high > POWER_DOWN_S:
                # The chip may have powered down mid-word and reset on the low edge (gain back
                # to 128), or may not have: our measurement is an upper bound. Either way the
                # word is lost and we no longer know where the chip is in its protocol, so reset
                # it for certain and let it settle again rather than guess.
                self.max_high_s = max(self.max_high_s, worst)
                self.needs_reset = True  # done at the start of the next read, so this TIMING
                # reading is posted now instead of 10 ms late (which would also miss a row slot)
                self.settle_left = self.settle_reads
                return Reading(None, Flag.TIMING, None, clock(),
                               cause=f"sck high {high * 1e6:.0f} us at pulse {k + 1}")
            if k < 24:
                # Sample after the falling edge, as the kernel driver does: the bit stays valid
                # until the next rising edge and SCK spends less time high.
                word = (word << 1) | (1 if inp(dout) else 0)
        self.max_high_s = max(self.max_high_s, worst)
        released = bool(inp(dout))
        self.armed = released
        t = clock()
        if not released:
            # ESPHome's check: after the last pulse DOUT must be high. If not, we and the chip
            # disagree about where the word started; the bits are not trustworthy.
            return Reading(None, Flag.GLITCH, word, t, cause="desync")
        if self.settle_left > 0:
            self.settle_left -= 1
            return Reading(None, Flag.OK, word, t, settling=True, cause="settling")
        value, flag, cause = classify_word(word, self.last_good)
        if flag == Flag.OK:
            self.last_good = value
        return Reading(value, flag, word, t, cause=cause)


def _import_gpio() -> Any:
    try:
        import RPi.GPIO as GPIO
    except (ImportError, RuntimeError) as exc:  # RPi.GPIO raises RuntimeError off a Pi
        raise RuntimeError(
            "the hx711 sensing backend needs the RPi.GPIO module: on a Raspberry Pi 5 install "
            "'rpi-lgpio' (it provides RPi.GPIO; uninstall RPi.GPIO first), on older Pis 'RPi.GPIO'; "
            f"or use the 'iio' backend with the kernel hx711 driver ({exc})"
        ) from exc
    return GPIO


class Hx711Source(PolledSource):
    """:class:`~daemon.sensing.base.SampleSource` over HX711 chips on GPIO pins, one thread each."""

    _thread_prefix = "hx711"

    def __init__(self, cfg: Hx711Sensing, gpio: Any = None, clock: Clock = time.monotonic,
                 wallclock: Clock = time.time, sleep: Sleep = time.sleep, settle_reads: int = 4):
        super().__init__(cfg.channel_names(), float(cfg.rate_hz), clock, wallclock)
        _check_pins(cfg)
        self.cfg = cfg
        self._gpio = gpio
        self._sleep = sleep
        self._settle_reads = settle_reads
        self._readers: list[ChipReader] = []

    def _startup_grace(self) -> float:
        # settling reads plus one full deadline, so a dead chip cannot hold the first row back long
        return (self._settle_reads + 2) / self.rate_hz + self.cfg.read_deadline_ms / 1000.0

    def _join_timeout(self) -> float:
        return self.cfg.read_deadline_ms / 1000.0 + 1.0

    def _open(self) -> None:
        gpio = self._gpio if self._gpio is not None else _import_gpio()
        self._gpio = gpio
        gpio.setwarnings(False)  # pins left configured by a previous run are expected, not news
        gpio.setmode(gpio.BCM)
        deadline = self.cfg.read_deadline_ms / 1000.0
        self._readers = [
            ChipReader(gpio, chip, self.rate_hz, deadline, self._clock, self._sleep,
                       self._settle_reads, self._stop)
            for chip in self.cfg.chips
        ]
        for r in self._readers:
            r.setup()
            r.power_cycle()
        log.info("hx711: %d chip(s) at %g Hz, deadline %d ms", len(self._readers), self.rate_hz,
                 self.cfg.read_deadline_ms)

    def _reader_loop(self, i: int) -> None:
        reader = self._readers[i]
        posted_once = False
        while not self._stop.is_set():
            r = reader.read()
            if r is None:
                return
            if r.settling and not posted_once:
                with self._cond:
                    self._diag[i].note(r)  # counted, but the first row waits for real data
                continue
            if r.flag != Flag.OK and r.cause:
                log.debug("hx711 %s: %s (%s)", reader.name, r.flag.name, r.cause)
            self._post(i, r)
            posted_once = True
            with self._cond:
                self._diag[i].d.max_sck_high_us = reader.max_high_s * 1e6
                self._diag[i].d.extra["power_cycles"] = reader.power_cycles

    def _shutdown(self) -> None:
        # Leave the chips powered down (SCK high, ~1 uA); the next start() power-cycles them
        # anyway. Only our own pins are released: other code may own other GPIOs.
        for r in self._readers:
            try:
                r.power_down()
                self._gpio.cleanup([r.chip.dout, r.chip.sck])
            except Exception:  # closing must not raise on a half-broken GPIO stack
                log.exception("hx711 %s: power-down on close failed", r.name)


def _check_pins(cfg: Hx711Sensing) -> None:
    owner: dict[int, str] = {}
    for chip in cfg.chips:
        for role, pin in (("dout", chip.dout), ("sck", chip.sck)):
            if pin in owner:
                # Shared-SCK wiring would need one thread clocking several chips at once; the
                # per-chip threads here would corrupt each other's words.
                raise ValueError(f"sensing.chips: {chip.name}.{role} uses GPIO {pin}, already "
                                 f"used by {owner[pin]}; every chip needs its own dout and sck")
            owner[pin] = f"{chip.name}.{role}"
