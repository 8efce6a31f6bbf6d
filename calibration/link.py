"""How shelfcal reaches a unit's load cells: through a running daemon, or by opening them itself.

Both speak the same commands (:mod:`daemon.control_handlers`), so every shelfcal step is one code
path whichever it is, and a daemon that runs keeps the GPIO pins to itself:

* :class:`DaemonLink`: the daemon's unix socket ``{state_dir}/control.sock``;
* :class:`LocalUnit`: no daemon. shelfcal opens the configured backend, runs the same
  :class:`~daemon.control_handlers.UnitControl` over its samples in a thread, and answers the
  same requests in-process.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import calstate
from daemon.config import Config, SimSensing
from daemon.control import Commands, Request
from daemon.control_handlers import UnitControl
from daemon.control_socket import acquire_drivers_lock, drivers_lock_holder, socket_path
from daemon.control_socket import call as socket_call
from daemon.exitcodes import EX_CONFIG, EX_DATAERR, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE

from .errors import ShelfcalError

if TYPE_CHECKING:
    from daemon.pipeline import Pipeline

log = logging.getLogger(__name__)


class NotRunning(ShelfcalError):
    pass


class DaemonLink:
    kind = "daemon"

    def __init__(self, path: Path, timeout_s: float = 10.0):
        self.path = path
        self.timeout_s = timeout_s

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        try:
            doc = socket_call(self.path, command, args, timeout_s=self.timeout_s)
        except TimeoutError:
            raise ShelfcalError(
                f"shelfd does not answer on {self.path} within {self.timeout_s:g} s: check "
                f"`systemctl status shelfd` (or stop it and run shelfcal again)",
                EX_UNAVAILABLE,
            ) from None
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(
                f"shelfd is not running (nobody listens on {self.path}): start it, or use --via local", EX_UNAVAILABLE
            ) from None
        except OSError as exc:
            raise ShelfcalError(
                f"lost the connection to shelfd on {self.path} ({exc}): is it restarting? Run shelfcal again",
                EX_UNAVAILABLE,
            ) from None
        if not doc.get("ok"):
            raise ShelfcalError(f"{command}: {doc.get('error')}", EX_DATAERR if command != "info" else EX_UNAVAILABLE)
        return doc.get("result") or {}

    def close(self) -> None:
        pass


class LocalUnit:
    """The unit's drivers opened by shelfcal itself (no daemon running)."""

    kind = "local"

    def __init__(self, cfg: Config, timeout_s: float = 10.0):
        from daemon.pipeline import Pipeline
        from daemon.sensing.factory import layout_for, make_source

        self.cfg = cfg
        self.timeout_s = timeout_s
        state_dir = Path(cfg.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = acquire_drivers_lock(state_dir)
        if lock is None:
            raise ShelfcalError(f"the load cells are open in another process (pid {drivers_lock_holder(state_dir)}: "
                                f"shelfd starting up, or another shelfcal): wait for it, or stop it, and retry",
                                EX_TEMPFAIL)
        self._lock = lock
        if isinstance(cfg.sensing, SimSensing) and cfg.sensing.speed == 0:
            # a technician's session runs on the wall clock, not as fast as the CPU allows
            cfg = cfg.model_copy(update={"sensing": cfg.sensing.model_copy(update={"speed": 1.0})})
        layout = layout_for(cfg)
        try:
            cal = calstate.load(state_dir, cfg.unit_id)
        except calstate.CalibrationError as exc:
            raise ShelfcalError(f"{exc}: restore calibration.prev.json or move the file away", EX_DATAERR) from None
        try:
            self.source = make_source(cfg, layout)
        except Exception as exc:  # noqa: BLE001 - any driver problem is "cannot open the cells"
            raise ShelfcalError(f"cannot open the {cfg.sensing.backend} backend: {exc}", EX_UNAVAILABLE) from None
        if cal is None and isinstance(cfg.sensing, SimSensing) and cfg.sensing.factory_calibration:
            from daemon.sensing.sim import SimSource  # imported already: the sim backend made the source
            if isinstance(self.source, SimSource):
                cal = self.source.factory_calibration()  # what shelfd would write on its first start
                calstate.save(state_dir, cal)
        self._Pipeline = Pipeline
        self.layout = layout
        pipe = self._pipeline(cal)
        self.control = UnitControl(cfg, layout, list(self.source.channels), self.source.rate_hz, state_dir,
                                   pipe, self.source, on_calibration=self._on_calibration)
        self.control.calibration = cal
        self.commands = Commands()
        self.control.register(self.commands)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.ended = False
        try:
            self.source.start()
        except Exception as exc:  # noqa: BLE001
            raise ShelfcalError(f"cannot start the {cfg.sensing.backend} backend: {exc}", EX_UNAVAILABLE) from None
        self._thread = threading.Thread(target=self._loop, name="shelfcal-sampler", daemon=True)
        self._thread.start()

    def _pipeline(self, cal: calstate.CalibrationState | None) -> Pipeline | None:
        if cal is None or self.source.units != "counts":
            return None
        if any(c not in cal.channels for c in self.layout.channels):
            return None  # partly calibrated: raw counts only until every plate is done
        return self._Pipeline(self.cfg.store_id, self.cfg.unit_id, self.layout, list(self.source.channels),
                              self.source.units, self.source.rate_hz, cal, self.cfg.detection)

    def _on_calibration(self, state: calstate.CalibrationState) -> None:
        if self.control.pipeline is None:
            self.control.pipeline = self._pipeline(state)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                block = self.source.read(0.2)
                if block is None:
                    self.ended = True
                    break
                self.control.feed(block)
                if self.control.pipeline is not None and len(block):
                    self.control.pipeline.process(block)  # events are the daemon's business, not ours
                self.commands.drain()
        except BaseException as exc:  # reported to the caller on its next call
            self._error = exc
            log.exception("sampling failed")
        finally:
            self.commands.fail_pending("sampling stopped")

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        if self._error is not None:
            raise ShelfcalError(f"reading the load cells failed: {self._error}", EX_SOFTWARE)
        done = threading.Event()
        box: list[dict[str, Any]] = []

        def reply(d: dict[str, Any]) -> None:
            box.append(d)
            done.set()

        self.commands.submit(Request(command, uuid.uuid4().hex, args, "shelfcal"), reply)
        if not self._thread.is_alive():
            self.commands.fail_pending("sampling stopped")
        if not done.wait(self.timeout_s):
            raise ShelfcalError(f"the load cells give no samples ({command} unanswered in {self.timeout_s:g} s): "
                                f"run `shelfcal diag`", EX_UNAVAILABLE)
        doc = box[0]
        if not doc.get("ok"):
            raise ShelfcalError(f"{command}: {doc.get('error')}", EX_DATAERR)
        return doc.get("result") or {}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self.source.close()
        except Exception:
            log.warning("closing the backend failed", exc_info=True)
        finally:
            os.close(self._lock)  # the pins are free for shelfd again


def connect(cfg: Config, via: str = "auto", timeout_s: float = 10.0) -> DaemonLink | LocalUnit:
    """A link to the unit: the running daemon when its socket answers, else the drivers."""
    path = socket_path(cfg.state_dir)
    if via in ("auto", "daemon"):
        link = DaemonLink(path, timeout_s)
        try:
            link.call("info")
            return link
        except NotRunning:
            if via == "daemon":
                raise
            # no socket, or a stale one of a daemon that is gone: open the cells ourselves
        if via == "daemon":
            raise ShelfcalError(f"shelfd is not running (no answer on {path}): start it, or use --via local",
                                EX_UNAVAILABLE)
    return LocalUnit(cfg, timeout_s)


def wait_for_data(link: DaemonLink | LocalUnit, seconds: float, timeout_s: float = 15.0) -> None:
    """Let a freshly opened LocalUnit gather ``seconds`` of samples (a daemon has them already)."""
    if link.kind != "local":
        return
    t_first = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = link.call("info").get("t")
        if t is not None:
            t_first = t if t_first is None else t_first
            if t - t_first >= seconds:
                return
        time.sleep(0.1)
    if t_first is None:
        raise ShelfcalError("the load cells give no samples at all: check power and wiring, run `shelfcal diag`",
                            EX_UNAVAILABLE)


__all__ = ["DaemonLink", "LocalUnit", "connect", "wait_for_data", "EX_CONFIG"]
