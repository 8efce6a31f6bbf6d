"""``shelfd run``: the long-running service loop of one shelf unit.

One thread reads the sensing backend and runs the pipeline; every event is written to the SQLite
outbox *before* anything is sent; the publisher thread drains the outbox over MQTT. The systemd
watchdog is fed only while samples flow, never by the broker connection, so a broker outage
cannot restart-loop the unit.

A ``state_dir`` the unit cannot write (read-only file system, a path under a file, full disk at
start) is exit 73 (EX_CANTCREAT) with one line naming the path; when the broker is reachable the
unit first publishes its retained status as ``stopped`` with that reason, so the store sees why
the shelf is dark. An outbox found missing, empty or corrupt keeps the status ``degraded``
(reason ``outbox_lost: ...``) for as long as this process runs; the ERROR line is in the journal.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import calstate
from .config import Config, SimSensing
from .control import Commands
from .exitcodes import EX_CANTCREAT, EX_CONFIG, EX_OK, EX_SOFTWARE, EX_TEMPFAIL
from .pipeline import Pipeline
from .publish.mqtt import Publisher
from .publish.outbox import Outbox, OutboxTooNew
from .publish.outbox import check_version as check_outbox_version
from .sdnotify import Notifier
from .sensing.base import SampleSource
from .sensing.factory import layout_for, make_source
from .signal.condition import UncalibratedError

if TYPE_CHECKING:
    from .vision.setup import VisionSetup

log = logging.getLogger(__name__)



OUTBOX_FILE = "outbox.sqlite3"


@runtime_checkable
class FactoryCalibrated(Protocol):
    """A source that knows its own calibration (the simulator's factory calibration)."""

    def factory_calibration(self) -> calstate.CalibrationState: ...


class StateDirError(Exception):
    """state_dir cannot be written: one line naming the path."""


def check_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` if needed and prove a file can be created and synced in it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=state_dir)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StateDirError(f"state_dir {state_dir} is not writable: {exc.strerror or exc}") from None


class Service:
    def __init__(self, cfg: Config, notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self._status: tuple[str, str | None] = ("online", None)
        self._last_counts: dict[str, tuple[int, int, int, int]] = {}
        self._last_check = 0.0
        self._last_health = 0.0
        self._reasons: list[str] = []
        self._rates: dict[str, float] = {}
        self._outbox_lost: str | None = None
        self.vision: VisionSetup | None = None  # when the unit has a camera
        # Requests to the running unit (MQTT req/ topics, local socket); pipeline commands run
        # in the sample loop below, between blocks.
        self.commands = Commands()

    def request_stop(self, *_a: object) -> None:
        self.stop_event.set()

    def run(self) -> int:
        cfg = self.cfg
        state_dir = Path(cfg.state_dir)
        try:
            check_state_dir(state_dir)
        except StateDirError as exc:
            return self._cannot_create(str(exc))
        try:
            return self._run(state_dir)
        except StateDirError as exc:
            return self._cannot_create(str(exc))

    def _cannot_create(self, line: str) -> int:
        """Exit 73 with one line; the retained status says why first when the broker answers."""
        log.error("%s; the unit cannot keep events, calibration or seq: not starting", line)
        from .publish.mqtt import publish_status_once
        if publish_status_once(self.cfg, "stopped", f"cannot start: {line}"):
            log.debug("retained status 'stopped' published with the reason")
        self.notifier.status(f"cannot start: {line}")
        return EX_CANTCREAT

    def _too_new(self, exc: OutboxTooNew) -> int:
        """A downgrade: the newer outbox is kept untouched and this code does not run on it (exit 78)."""
        log.error("%s", exc)
        self.notifier.status(f"cannot start: {exc}")
        return EX_CONFIG

    def _run(self, state_dir: Path) -> int:
        cfg = self.cfg
        try:  # before anything is opened or written: a downgraded unit stops here, in one line
            check_outbox_version(state_dir / OUTBOX_FILE)
        except OutboxTooNew as exc:
            return self._too_new(exc)
        # the load cells belong to one process; shelfcal opening them itself holds this lock
        from .control_socket import acquire_drivers_lock, drivers_lock_holder
        try:
            self._drivers_lock = acquire_drivers_lock(state_dir)
        except OSError as exc:
            raise StateDirError(f"state_dir {state_dir} is not writable: {exc.strerror or exc}") from None
        if self._drivers_lock is None:
            log.error("the load cells are open in shelfcal (pid %s holds %s/.drivers.lock): finish the "
                      "calibration, then start shelfd", drivers_lock_holder(state_dir), state_dir)
            return EX_TEMPFAIL  # systemd retries after RestartSec
        layout = layout_for(cfg)
        try:
            source = make_source(cfg, layout)
        except (ValueError, RuntimeError) as exc:  # wiring `check` could not see, a missing GPIO module
            log.error("sensing: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return EX_CONFIG
        try:
            calibration = calstate.load(state_dir, cfg.unit_id)
        except calstate.CalibrationError as exc:
            log.error("%s; restore calibration.prev.json or run `shelfcal calibrate`", exc)
            return EX_CONFIG
        if calibration is None and source.units == "counts" and isinstance(cfg.sensing, SimSensing) \
                and cfg.sensing.factory_calibration and isinstance(source, FactoryCalibrated):
            calibration = source.factory_calibration()
            try:
                calstate.save(state_dir, calibration)
            except OSError as exc:
                raise StateDirError(f"state_dir {state_dir} is not writable: {exc.strerror or exc}") from None
        # camera (optional): models that cannot load are configuration errors, a camera that is
        # missing or failing is not (the runner retries; events go weight-only meanwhile)
        from .vision.setup import VisionConfigError, build_vision
        try:
            self.vision = build_vision(cfg, layout, source)
        except VisionConfigError as exc:
            for line in exc.problems:
                log.error("%s", line)
            return EX_CONFIG
        try:
            pipe = Pipeline(cfg.store_id, cfg.unit_id, layout, list(source.channels), source.units,
                            source.rate_hz, calibration, cfg.detection, state_dir=state_dir,
                            **(self.vision.pipeline_kwargs() if self.vision else {}))
        except (UncalibratedError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            return EX_CONFIG
        # tare / rezero / rest / snapshot / calibration_reload for shelfcal and the store back-end
        from .control_handlers import UnitControl
        from .control_socket import ControlSocket, socket_path
        self.control = UnitControl(cfg, layout, list(source.channels), source.rate_hz, state_dir, pipe, source)
        self.control.register(self.commands)
        control_sock = ControlSocket(socket_path(state_dir), self.commands)
        try:
            outbox = Outbox(state_dir / OUTBOX_FILE)
        except OutboxTooNew as exc:
            return self._too_new(exc)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StateDirError(f"state_dir {state_dir}: cannot open the outbox: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        self._outbox_lost = outbox.lost_reason
        publisher = Publisher(cfg, outbox, commands=self.commands)
        if self._outbox_lost:
            # degraded from the first status on, not a second later
            self._status = ("degraded", self._outbox_lost)
            publisher.set_status("degraded", self._outbox_lost)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        publisher.start()
        control_sock.start()
        log.info("unit %s/%s: %d shelves, %d plates, %s backend at %.0f Hz, outbox depth %d",
                 cfg.store_id, cfg.unit_id, len(layout.shelves), len(layout.plates),
                 cfg.sensing.backend, source.rate_hz, outbox.depth())
        rc = EX_OK
        try:
            if self.vision is not None:
                self.vision.start()
            try:
                source.start()
            except RuntimeError as exc:  # e.g. RPi.GPIO missing: one line, not a traceback
                log.error("sensing: %s", str(exc).splitlines()[0])
                self.stop_event.set()
                rc = EX_CONFIG
            if rc == EX_OK:
                self.notifier.ready(f"running: {len(layout.plates)} plates, outbox {outbox.depth()}")
            while not self.stop_event.is_set():
                block = source.read(0.5)
                if block is None:
                    log.info("recording ended")
                    break
                self.control.feed(block)
                for ev in pipe.process(block):
                    outbox.add(ev)
                    publisher.notify()
                if len(block):
                    self.notifier.watchdog()  # progress of the sample pipeline, nothing else
                self.commands.drain()
                self._periodic(pipe, source, publisher, outbox)
            for ev in pipe.finish():
                outbox.add(ev)
                publisher.notify()
        except Exception:  # the one place an unexpected fault ends the unit
            log.exception("sample pipeline failed")
            rc = EX_SOFTWARE
        finally:
            self.notifier.stopping()
            control_sock.stop()
            self.commands.fail_pending("the unit is stopping; ask again when it is back")
            try:
                source.close()
                if self.vision is not None:
                    self.vision.stop()
            finally:
                publisher.publish_state(pipe.inventory())
                publisher.publish_health(self._health(pipe, source, publisher))
                publisher.stop(timeout=5.0)
                depth = outbox.depth()
                outbox.close()
                log.info("stopped; %d event(s) kept in the outbox for the next start", depth)
        return rc

    # ------------------------------------------------------------------ health and status

    def _periodic(self, pipe: Pipeline, source: SampleSource, publisher: Publisher, outbox: Outbox) -> None:
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._check(pipe, source, now - self._last_check if self._last_check else None)
            self._last_check = now
            state = "degraded" if self._reasons else "online"
            reason = "; ".join(self._reasons) or None
            if (state, reason) != self._status:
                self._status = (state, reason)
                publisher.set_status(state, reason)
                (log.warning if state == "degraded" else log.info)("status %s%s", state,
                                                                    f": {reason}" if reason else "")
                self.notifier.status(f"{state}{': ' + reason if reason else ''}")
            if pipe.state_changed:
                pipe.state_changed = False
                publisher.publish_state(pipe.inventory())
        if now - self._last_health >= self.cfg.mqtt.health_interval_s:
            self._last_health = now
            publisher.publish_health(self._health(pipe, source, publisher))

    def _check(self, pipe: Pipeline, source: SampleSource, dt: float | None) -> None:
        reasons = list(pipe.degraded_reasons())
        if self._outbox_lost:
            reasons.insert(0, self._outbox_lost)
        if self.vision is not None:
            reasons += self.vision.degraded_reasons()
        self._rates = {}
        for ch, c in source.counters().items():
            prev = self._last_counts.get(ch)
            cur = (c.samples, c.timeouts + c.missing, c.glitches + c.timing, c.saturations)
            self._last_counts[ch] = cur
            if prev is None or not dt:
                continue
            good, bad, glitch, sat = (a - b for a, b in zip(cur, prev))
            self._rates[ch] = good / dt
            if bad and good < 0.5 * (good + bad):
                reasons.append(f"channel {ch}: no data ({bad} timeouts)")
            elif sat:
                reasons.append(f"channel {ch}: saturated ({sat} samples at the ADC rail)")
            elif glitch > max(2, 0.05 * (good + glitch)):
                reasons.append(f"channel {ch}: {glitch} glitch words in {dt:.0f} s")
        self._reasons = reasons

    def _health(self, pipe: Pipeline, source: SampleSource, publisher: Publisher) -> dict[str, Any]:
        rates = self._rates
        chans: dict[str, dict[str, Any]] = {}
        for ch, c in source.counters().items():
            chans[ch] = {**c.as_dict(), "rate_hz": round(rates.get(ch, 0.0), 2), "expected_hz": source.rate_hz}
        return {
            "status": self._status[0],
            "reasons": self._reasons,
            "channels": chans,
            "plates": pipe.plate_health(),
            "detector": dict(pipe.detector.counters),
            "pipeline": {"samples": pipe.stats.samples, "events": pipe.stats.events,
                         "cpu_s": round(pipe.stats.cpu_seconds, 3),
                         "calibration_id": pipe.calibration.calibration_id if pipe.calibration else None},
            # the calibration in force and each plate's last `shelfcal verify` (its log in state_dir)
            "calibration": calstate.health_block(Path(self.cfg.state_dir), pipe.calibration),
            **self._camera_health(pipe),
        }

    def _camera_health(self, pipe: Pipeline) -> dict[str, Any]:
        """``camera``: absent → {"state": "absent"}; otherwise fps, frames, dropped, restarts,
        stalls, inference figures and the models' hashes (docs/vision.md)."""
        vis = self.vision
        if vis is None:
            return {"camera": {"state": "absent"}}
        h = vis.health()
        cam = dict(h["camera"])
        cam["vision"] = h["vision"]
        cam["vision"]["pending_events"] = pipe.vision_pending
        if "capture" in h:
            cam["capture"] = h["capture"]
        return {"camera": cam}
