"""What every shelfcal command works with: the unit's config and link (:class:`Ctx`), the console,
prompts, waiting for rest, and taking a plate out of service on a running shelfd.

Command modules (cli.py's own load-cell commands, camera.py, planogram.py, report.py) import
from here, never from each other; cli.py builds the group and registers them all in one place.
"""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.exitcodes import EX_TEMPFAIL, EX_USAGE

from .errors import ShelfcalError

if TYPE_CHECKING:
    from rich.console import Console

    from daemon.config import Config

    from .guided import PlateInfo, Unit


def console() -> Console:
    from rich.console import Console
    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=120)  # logs and pipes: no wrapping of table cells
    return con


class Ctx:
    def __init__(self, config: Path, via: str, timeout: float):
        self.config_path = config
        self.via = via
        self.timeout = timeout
        self._cfg: Config | None = None
        self._link = None
        self._unit: Unit | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            from daemon.config import ConfigError, load_config
            try:
                self._cfg = load_config(self.config_path)
            except ConfigError as exc:
                first = exc.problems[0] if exc.problems else "invalid"
                first = first if first.startswith(str(self.config_path)) else f"{self.config_path}: {first}"
                more = f" (+{len(exc.problems) - 1} more: run `shelfd check --config {self.config_path}`)" \
                    if len(exc.problems) > 1 else ""
                raise ShelfcalError(f"{first}{more}", exc.exit_code) from None  # 78, 66: file unreadable
        return self._cfg

    def unit(self) -> Unit:
        if self._unit is None:
            from .guided import Unit
            from .link import connect
            self._unit = Unit(self.cfg, lambda: connect(self.cfg, self.via, self.timeout))
        return self._unit

    def close(self) -> None:
        """Runs however shelfcal ends (click closes the context on errors and Ctrl-C too)."""
        if self._unit is not None:
            for w in self._unit.close():
                click.echo(f"warning: {w}", err=True)


def is_interactive(yes: bool) -> bool:
    """Prompts (a terminal on stdin) or --yes (the masses are already where the step says).
    Neither: refused before anything is touched, as nobody could have placed or removed a mass."""
    if yes:
        return False
    if sys.stdin.isatty():
        return True
    raise ShelfcalError("no terminal to prompt on: pass --yes (the masses are already where the step says) "
                        "or run it in a terminal", EX_USAGE)


def technician_name(name: str | None) -> str:
    if name:
        return name
    env = os.environ.get("SHELFCAL_TECHNICIAN")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


def confirm(question: str, yes: bool) -> None:
    """An explicit accept: --yes, or 'y' typed at the prompt; anything else aborts (nothing written)."""
    if yes:
        return
    try:
        ok = click.confirm(question, default=False)
    except click.Abort:
        ok = False
    if not ok:
        raise ShelfcalError("aborted: nothing written; the calibration in force is unchanged", EX_TEMPFAIL)


def await_rest(unit: Unit, plate: PlateInfo, timeout: float, interactive: bool, what: str) -> dict[str, Any]:
    from .guided import wait_rest
    if not timeout > 0:
        raise ShelfcalError(f"--rest-timeout must be more than 0 s, got {timeout:g}", EX_USAGE)
    con = console()
    if not interactive:
        return wait_rest(unit, plate, timeout_s=timeout)
    with con.status(f"plate {plate.key}: waiting for rest ({what})") as st:
        def progress(r: dict[str, Any]) -> None:
            if r.get("waiting"):
                msg = "collecting fresh samples"
            else:
                msg = r.get("reason") or "settling"
            st.update(f"plate {plate.key}: waiting for rest ({what}): {msg}, {r['left_s']:.0f} s left")
        return wait_rest(unit, plate, timeout_s=timeout, progress=progress)


# a step's plate is event-free this long at most: shelfcal ends it when it exits, this bounds a
# shelfcal killed outright
SCRIPTED_MAINTENANCE_S = 300.0


def set_maintenance(unit: Unit, plate: PlateInfo, seconds: float) -> None:
    """Tell a running daemon that this plate is under the technician's hands (no item events).
    When shelfcal exits, however, the plate is back in service (or in the maintenance it was in)."""
    if unit.link.kind != "daemon":
        return
    try:
        unit.hold(plate, seconds)
    except ShelfcalError as exc:
        click.echo(f"warning: shelfd did not take plate {plate.key} out of service ({exc}); "
                   f"test masses may show up as item events", err=True)
