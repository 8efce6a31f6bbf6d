"""A fake ``RPi.GPIO`` with bit-exact simulated HX711 chips on its pins.

The chip model follows the datasheet: a conversion completes every ``1/rate_hz`` s after power-up
and pulls DOUT low; each SCK rising edge shifts out the next bit (MSB first, two's complement);
pulses 25..27 choose the gain of the *next* conversion (25 → A/128, 26 → B/32, 27 → A/64) and the
25th pulse drives DOUT high again; SCK high for more than 60 us powers the chip down (DOUT high)
and the falling edge resets it to A/128, after which the first ``settle_conversions``
conversions (and the first after a gain change) are unsettled garbage.

Time comes from an injectable clock. With :class:`SimClock` (time moves only when something
sleeps, plus ``call_cost_s`` per GPIO call) a single-threaded test is fully deterministic,
including a "preemption" that stretches one SCK high period. With ``time.monotonic`` the fake runs
in real time. Threaded end-to-end tests use :class:`PulseClock`: real time between reads, simulated
time inside one (from DOUT seen ready to the check after the last pulse), so the OS or the GIL
pausing a reader thread mid-word cannot turn into a timing violation or a missed desync; only an
injected ``preempt_next`` stretches a pulse.

Fault injection per chip: ``dead`` (never ready), ``stuck_dout`` (0 or 1), ``inject_words``
(the next reads shift out these exact words: 0xFFFFFF, rails ...), ``preempt_next`` (stretch one
SCK high period), ``desync_next`` (DOUT not released after the last pulse).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

POWER_DOWN_S = 60e-6
PULSES_TO_GAIN = {25: 128, 26: 32, 27: 64}


class SimClock:
    """Simulated monotonic time for single-threaded tests: callable, with ``sleep``/``advance``."""

    def __init__(self, start: float = 1000.0):
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        if dt > 0:
            self.t += dt

    sleep = advance

    def wallclock(self) -> float:
        return 1.7e9 + self.t


class PulseClock:
    """Monotonic time for threaded tests, simulated inside a read.

    Each thread sees real ``time.monotonic()`` except while it is clocking a word out of a chip:
    :class:`FakeGPIO` calls :meth:`hold` when a reader finds an idle chip ready (DOUT low) and
    :meth:`release` at the reader's DOUT check after the last pulse. Meanwhile that thread's time
    stands still but for ``advance`` (the fake's per-call cost and injected stretches), so how
    long SCK stays high is decided by the test, never by the scheduler of a loaded machine. The
    reader's ``sleep`` must be :meth:`sleep` (it releases a hold, then really sleeps), and the
    fake chip and the reader must share this clock.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> float:
        held = getattr(self._local, "held", None)
        return time.monotonic() if held is None else held

    def hold(self) -> None:
        if getattr(self._local, "held", None) is None:
            self._local.held = time.monotonic()

    def release(self) -> None:
        self._local.held = None

    @property
    def holding(self) -> bool:
        return getattr(self._local, "held", None) is not None

    def advance(self, dt: float) -> None:
        if dt > 0 and getattr(self._local, "held", None) is not None:
            self._local.held += dt

    def sleep(self, dt: float) -> None:
        self.release()
        time.sleep(dt)


@dataclass
class ReadRecord:
    """What the chip saw during one read: the word it shifted out and the pulses it got."""

    word: int
    pulses: int
    gain_next: int | None   # None when the pulse count was not 25..27
    aborted: bool = False   # the chip powered down before the read finished


@dataclass
class FakeHx711:
    dout: int
    sck: int
    #: signed counts as a function of time (or a constant); clipped to the 24-bit range
    value: Callable[[float], int] | int = 0
    rate_hz: float = 10.0
    settle_conversions: int = 1
    dead: bool = False
    stuck_dout: int | None = None
    #: how long DOUT stays low after the last pulse of a desynced read
    desync_hold_s: float = 0.002

    # -- observable state, for assertions
    reads: list[ReadRecord] = field(default_factory=list)
    power_ups: int = 0
    conversions: int = 0
    gain: int = 128
    overclocked: int = 0   # reads that got more than 27 pulses (a serial protocol error)

    def __post_init__(self) -> None:
        self._gpio: FakeGPIO | None = None
        self._injected: list[int] = []
        self._preempt: tuple[int, float] | None = None
        self._desync = 0
        self._powered = True
        self._sck = 0
        self._sck_high_at = 0.0
        self._t_up = 0.0
        self._k = 0                   # conversions completed since power-up
        self._latched: int | None = None
        self._settle_left = self.settle_conversions
        self._pulses = 0              # 0 = idle; 1..24 shifting; >= 25 read done, gain pulses
        self._word = 0
        self._desync_until: float | None = None
        self._this_desync = False
        self._from_injection = False
        self._gain_next = 128

    # ------------------------------------------------------------ fault injection

    def inject_words(self, *words: int) -> None:
        """The next completed reads shift out exactly these 24-bit words (instead of the
        conversion); a read aborted by a power-down does not use one up."""
        self._injected.extend(w & 0xFFFFFF for w in words)

    def preempt_next(self, pulse: int = 5, stretch_s: float = 100e-6) -> None:
        """During the next read, SCK pulse number ``pulse`` stays high ``stretch_s`` longer."""
        self._preempt = (pulse, stretch_s)

    def desync_next(self, n: int = 1) -> None:
        """The next ``n`` reads do not release DOUT after their last pulse."""
        self._desync += n

    # ------------------------------------------------------------ model

    def _attach(self, gpio: FakeGPIO, now: float) -> None:
        self._gpio = gpio
        self._t_up = now

    def _true_word(self, t: float) -> int:
        v = self.value(t) if callable(self.value) else self.value
        v = max(-0x800000, min(0x7FFFFF, int(v)))
        return v & 0xFFFFFF

    def _update(self, now: float) -> None:
        if self._sck and self._powered and now - self._sck_high_at > POWER_DOWN_S:
            self._powered = False
            if 0 < self._pulses < 25:
                self.reads.append(ReadRecord(self._word, self._pulses, None, aborted=True))
            self._pulses = 0
            self._latched = None
        if not self._powered or self.dead:
            return
        if 0 < self._pulses < 25:
            return  # the output register is busy shifting; conversions catch up afterwards
        k = int((now - self._t_up) * self.rate_hz)
        if k <= self._k:
            return
        if self._pulses >= 25:
            self._finish_read()
        # Conversions completed since last look; only the latest is kept (as in the chip), but
        # each one consumes a settling slot.
        self.conversions += k - self._k
        for kk in range(max(self._k + 1, k - self._settle_left - 1), k + 1):
            t_c = self._t_up + kk / self.rate_hz
            if self._settle_left > 0:
                self._settle_left -= 1
                true = self._true_word(t_c)
                self._latched = (true ^ 0x35A5A5) & 0x7FFFF0 | 0x40000  # far from truth, not a rail
            else:
                self._latched = self._true_word(t_c)
        self._k = k

    def _finish_read(self) -> None:
        gain = PULSES_TO_GAIN.get(self._pulses)
        if self._pulses > 27:
            self.overclocked += 1
        self.reads.append(ReadRecord(self._word, self._pulses, gain))
        if gain is not None and gain != self.gain:
            self.gain = gain
            self._settle_left = max(self._settle_left, 1)
        self._pulses = 0
        self._desync_until = None

    def _power_up(self, now: float) -> None:
        self._powered = True
        self.power_ups += 1
        self._t_up = now
        self._k = 0
        self._latched = None
        self._pulses = 0
        self.gain = 128
        self._settle_left = self.settle_conversions

    def dout_level(self, now: float) -> int:
        self._update(now)
        if self.stuck_dout is not None:
            return self.stuck_dout
        if not self._powered or self.dead:
            return 1
        if 0 < self._pulses < 25:
            return (self._word >> (24 - self._pulses)) & 1
        if self._pulses >= 25:
            if self._this_desync and (self._desync_until is None or now < self._desync_until):
                return 0
            return 1
        return 0 if self._latched is not None else 1

    def sck_edge(self, level: int, now: float, clock_obj: object) -> None:
        self._update(now)
        if level and not self._sck:
            self._sck = 1
            self._sck_high_at = now
            if not self._powered or self.dead:
                return
            if self._pulses == 0:
                if self._latched is None and self.stuck_dout != 0:
                    return  # a stray pulse while not ready: ignored
                # An injected word is used up only when its read completes (see pulse 25), so a
                # read aborted by a power-down does not swallow it.
                self._word = self._injected[0] if self._injected else (self._latched or 0)
                self._from_injection = bool(self._injected)
                self._latched = None
                self._pulses = 1
                self._this_desync = self._desync > 0
                if self._this_desync:
                    self._desync -= 1
            else:
                self._pulses += 1
                if self._pulses == 25 and self._from_injection:
                    self._injected.pop(0)
                    self._from_injection = False
            if self._preempt and self._preempt[0] == self._pulses:
                _, stretch = self._preempt
                self._preempt = None
                _stretch(clock_obj, stretch)
        elif not level and self._sck:
            self._sck = 0
            if self._powered and now - self._sck_high_at > POWER_DOWN_S:
                self._update(now)  # registers the power-down at the end of the long high
            if not self._powered:
                self._power_up(now)
            elif self._pulses >= 25 and self._this_desync and self._desync_until is None:
                self._desync_until = now + self.desync_hold_s


def _stretch(clock_obj: object, dt: float) -> None:
    advance = getattr(clock_obj, "advance", None)
    if advance is not None:
        advance(dt)
    else:  # real time: really stay high that long
        end = time.monotonic() + dt
        while time.monotonic() < end:
            pass


@dataclass
class _Pin:
    direction: int
    pull: int
    level: int = 0


class FakeGPIO:
    """The subset of ``RPi.GPIO`` the hx711 backend uses, with HX711 chips attached to pins."""

    BCM = 11
    BOARD = 10
    OUT = 0
    IN = 1
    HIGH = 1
    LOW = 0
    PUD_OFF = 20
    PUD_DOWN = 21
    PUD_UP = 22

    def __init__(self, clock: Callable[[], float] | SimClock = time.monotonic, call_cost_s: float = 1e-6):
        self.clock = clock
        #: simulated duration of each GPIO call (only with a clock that can ``advance``)
        self.call_cost_s = call_cost_s
        self._advance = getattr(clock, "advance", None)
        self._hold = getattr(clock, "hold", None)
        self._release = getattr(clock, "release", None)
        self.mode: int | None = None
        self.warnings = True
        self.pins: dict[int, _Pin] = {}
        self.chips: list[FakeHx711] = []
        self.calls = 0
        self.cleaned: list[int] = []
        # One lock per chip, like separate wires: threads reading different chips never wait on
        # each other inside the fake (real RPi.GPIO calls on different pins do not either).
        self._by_sck: dict[int, tuple[FakeHx711, threading.Lock]] = {}
        self._by_dout: dict[int, tuple[FakeHx711, threading.Lock]] = {}
        self._lock = threading.Lock()  # pins table only

    def attach(self, chip: FakeHx711) -> FakeHx711:
        lock = threading.Lock()
        with self._lock:
            chip._attach(self, self.clock())
            self.chips.append(chip)
            self._by_sck[chip.sck] = (chip, lock)
            self._by_dout[chip.dout] = (chip, lock)
        return chip

    # ------------------------------------------------------------ RPi.GPIO API

    def setmode(self, mode: int) -> None:
        if mode not in (self.BCM, self.BOARD):
            raise ValueError("An invalid mode was passed to setmode()")
        if self.mode is not None and mode != self.mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def getmode(self) -> int | None:
        return self.mode

    def setwarnings(self, flag: bool) -> None:
        self.warnings = bool(flag)

    def setup(self, channel: int | list[int], direction: int, pull_up_down: int = PUD_OFF,
              initial: int | None = None) -> None:
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD) or "
                               "GPIO.setmode(GPIO.BCM)")
        for ch in _channels(channel):
            with self._lock:
                self.pins[ch] = _Pin(direction, pull_up_down)
            if direction == self.OUT and initial is not None:
                self._drive(ch, int(bool(initial)))

    def output(self, channel: int | list[int], value: int | bool) -> None:
        self._tick()
        for ch in _channels(channel):
            pin = self.pins.get(ch)
            if pin is None or pin.direction != self.OUT:
                raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
            self._drive(ch, int(bool(value)))

    def input(self, channel: int) -> int:
        self._tick()
        pin = self.pins.get(channel)
        if pin is None:
            raise RuntimeError("You must setup() the GPIO channel first")
        if pin.direction == self.OUT:
            return pin.level
        hit = self._by_dout.get(channel)
        if hit is None:
            return 1 if pin.pull == self.PUD_UP else 0  # nothing attached: the pull decides
        chip, lock = hit
        with lock:
            level = chip.dout_level(self.clock())
            if self._hold is not None:
                if chip._pulses >= 25:
                    self._release()   # the check after the last pulse: the read is over
                elif chip._pulses == 0 and level == 0:
                    self._hold()      # ready: the reader starts clocking on simulated time
            return level

    def cleanup(self, channel: int | list[int] | None = None) -> None:
        with self._lock:
            chans = list(self.pins) if channel is None else _channels(channel)
            for ch in chans:
                self.pins.pop(ch, None)
                self.cleaned.append(ch)
            if channel is None:
                self.mode = None

    # ------------------------------------------------------------ internals

    def _tick(self) -> None:
        self.calls += 1
        if self._advance is not None and self.call_cost_s > 0:
            self._advance(self.call_cost_s)

    def _drive(self, ch: int, level: int) -> None:
        self.pins[ch].level = level
        hit = self._by_sck.get(ch)
        if hit is not None:
            chip, lock = hit
            with lock:
                chip.sck_edge(level, self.clock(), self.clock)


def _channels(channel: int | list[int] | tuple[int, ...]) -> list[int]:
    return list(channel) if isinstance(channel, (list, tuple)) else [channel]
