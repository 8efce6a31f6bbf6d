"""``shelfcal``: the technician's tool for a shelf unit's load cells, planogram and camera.

Exit codes (sysexits): 0 ok, 64 usage (wrong plate, mass out of range, a step that asks for masses
with neither a terminal nor --yes), 65 refused data (degenerate point, failed verify, corrupt or
foreign calibration), 66 missing input, 69 unavailable (no samples, daemon not answering, channel
fault in diag), 73 cannot write, 75 try again (plate never at rest, aborted at the prompt: nothing
written), 78 config error, 130 interrupted (Ctrl-C: the calibration in force is unchanged).
Whatever the exit, the plates shelfcal took out of service on a running shelfd are back in service.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.cli_entry import run_click
from daemon.control_handlers import NOISE_WINDOW_S
from daemon.exitcodes import EX_DATAERR, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE

from . import camera, planogram, report
from .context import (
    SCRIPTED_MAINTENANCE_S,
    Ctx,
    await_rest,
    confirm,
    console,
    is_interactive,
    set_maintenance,
    technician_name,
)
from .errors import ShelfcalError

if TYPE_CHECKING:
    from rich.table import Table

    from .guided import PlateFit, PlateInfo, Unit

DEFAULT_CONFIG = "/etc/shelfd/shelfd.yaml"


# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(path_type=Path), envvar="SHELFD_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, help="The unit's YAML config (env SHELFD_CONFIG).")
@click.option("--via", type=click.Choice(["auto", "daemon", "local"]), default="auto", show_default=True,
              help="auto: the running shelfd's control socket if it answers, else open the load cells here.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for a daemon's answer.")
@click.pass_context
def cli(ctx: click.Context, config: Path, via: str, timeout: float) -> None:
    """Gondola technician tool: diagnose, tare, calibrate and verify a shelf unit's load cells,
    edit its planogram, set its camera's plate regions.

    \b
    A first calibration (walk-through in the README):
      shelfcal diag                                    wiring and noise, a verdict per channel
      shelfcal calibrate --plate 1/2                   guided: empty → zero → known masses → fit → accept
      shelfcal verify --plate 1/2 --mass-g 1000        pass/fail with a different mass
      shelfcal report --out report/                    plots and a summary for the service record
    Scripted: shelfcal tare --plate 1/2 --yes; shelfcal calibrate --plate 1/2 --mass-g 500 --yes
    """
    ctx.obj = Ctx(config, via, timeout)
    ctx.call_on_close(ctx.obj.close)


# ---------------------------------------------------------------- diag


@cli.command()
@click.option("--seconds", type=float, default=NOISE_WINDOW_S, show_default=True,
              help="Seconds of samples to judge (the last ones; `live` shows noise over the same).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.pass_obj
def diag(obj: Ctx, seconds: float, as_json: bool) -> None:
    """Per channel: sample rate, faults, distinct values, noise, offset, and a verdict to act on.

    Exit 0 when every channel is usable (warnings allowed), 69 when one is not."""
    from .diag import judge
    from .link import wait_for_data
    unit = obj.unit()
    wait_for_data(unit.link, seconds)
    snap = unit.link.call("snapshot", seconds=max(seconds, 1.0))
    verdicts = judge(obj.cfg, snap)
    faults = [v for v in verdicts.values() if v["level"] == "fault"]
    if as_json:
        click.echo(json.dumps({"via": unit.link.kind, "snapshot": snap, "verdicts": verdicts}, default=str))
    else:
        from rich.table import Table
        t = Table(title=f"unit {unit.unit_id}: {len(snap['channels'])} channels over {snap['seconds']:.1f} s "
                        f"({unit.link.kind})")
        for col in ("channel", "plate", "sps", "t/o", "glitch", "sat", "distinct",
                    "σ counts", "σ g", "offset", "status"):
            t.add_column(col, justify="left" if col in ("channel", "plate", "status") else "right")
        plate_of = {c: k for k, p in snap["plates"].items() for c in p["channels"]}
        for ch, c in snap["channels"].items():
            v = verdicts[ch]
            style = {"ok": "green", "warning": "yellow", "fault": "red"}[v["level"]]
            t.add_row(ch, plate_of.get(ch, "-"), f"{c['measured_sps']:.1f}/{c['expected_sps']:g}",
                      str(c["timeouts"]), str(c["glitches"]), str(c["saturations"]), str(c["distinct_values"]),
                      _num(c["noise_counts"], 1), _num(c["noise_g"], 2),
                      "-" if c["offset_share"] is None else f"{c['offset_share']:.1%}",
                      f"[{style}]{v['level']}[/{style}]")
        console().print(t)
        for ch, v in verdicts.items():
            click.echo(f"channel {ch} (plate {plate_of.get(ch, '-')}): {v['text']}")
    if faults:
        sys.exit(EX_UNAVAILABLE)


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


LIVE_COLUMNS = ("plate", "weight g", "state", "noise g")


def live_rows(snap: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """`shelfcal live`'s rows. Noise is the snapshot's plate figure: the white σ over the last
    NOISE_WINDOW_S of samples, as diag's per channel (not the detector's running estimate)."""
    return [(k, _num(p["weight_g"], 1), p["state"], _num(p["noise_g"], 2)) for k, p in snap["plates"].items()]


# ---------------------------------------------------------------- live


@cli.command()
@click.option("--interval", type=float, default=0.5, show_default=True)
@click.option("--count", type=int, default=0, help="Stop after this many updates (0: until Ctrl-C).")
@click.pass_obj
def live(obj: Ctx, interval: float, count: int) -> None:
    """A live table of every plate's weight and state, updating in place (Ctrl-C to leave)."""
    from rich.live import Live
    from rich.table import Table

    from .link import wait_for_data
    unit = obj.unit()
    wait_for_data(unit.link, 1.0)

    def table() -> Table:
        snap = unit.link.call("snapshot", seconds=NOISE_WINDOW_S)
        t = Table(title=f"unit {unit.unit_id} ({unit.link.kind}) calibration {snap['calibration_id'] or 'none'}")
        for col in LIVE_COLUMNS:
            t.add_column(col, justify="right" if col != "plate" else "left")
        for row in live_rows(snap):
            t.add_row(*row)
        return t

    con = console()
    n = 0
    if not con.is_terminal:
        while True:
            con.print(table())
            n += 1
            if count and n >= count:
                return
            time.sleep(interval)
    try:
        with Live(table(), console=con, refresh_per_second=4) as lv:
            while not count or n < count:
                time.sleep(interval)
                lv.update(table())
                n += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves a live view


# ---------------------------------------------------------------- tare / calibrate / verify

_plate_opt = click.option("--plate", "plate_name", help="SHELF/PLATE (or the plate id when unique).")
_yes_opt = click.option("--yes", is_flag=True, help="No prompts: the masses are already where the step says; "
                        "accept the result. Needed without a terminal.")
_rest_opt = click.option("--rest-timeout", type=float, default=30.0, show_default=True,
                         help="Seconds to wait for the plate to come to rest.")
_tech_opt = click.option(
    "--technician", help="Name recorded with the calibration (default $SHELFCAL_TECHNICIAN or the login)."
)


def _pick_plate(unit: Unit, plate_name: str | None, interactive: bool) -> PlateInfo:
    if plate_name is None:
        if not interactive:
            raise ShelfcalError("--plate is required with --yes (plates: " + ", ".join(unit.plates) + ")", EX_USAGE)
        plate_name = click.prompt(f"plate ({', '.join(unit.plates)})")
    return unit.plate(plate_name)


def _zero_step(unit: Unit, plate: PlateInfo, yes: bool, force: bool, rest_timeout: float,
               interactive: bool) -> tuple[dict[str, Any], bool]:
    from .guided import record_zero, zero_warnings
    if interactive:
        click.prompt(f"Empty plate {plate.key} completely, keep hands off, then press Enter", default="",
                     show_default=False)
    r = await_rest(unit, plate, rest_timeout, interactive, "empty plate")
    warns = zero_warnings(unit, plate, r["level_counts"])
    for w in warns:
        click.echo(f"warning: {w}", err=True)
    if warns and not force:
        if interactive:
            confirm("Use this zero anyway?", False)
            force = True
        else:
            raise ShelfcalError(f"suspicious zero ({warns[0]}); empty the plate, or pass --force", EX_DATAERR)
    record_zero(unit, plate, r)
    return r, force


@cli.command()
@_plate_opt
@_yes_opt
@click.option("--force", is_flag=True, help="Tare even when the zero looks suspicious.")
@_rest_opt
@_tech_opt
@click.pass_obj
def tare(obj: Ctx, plate_name: str | None, yes: bool, force: bool, rest_timeout: float,
         technician: str | None) -> None:
    """Zero a plate: empty it, wait for rest, set the offset (and start a calibration session)."""
    unit = obj.unit()
    interactive = is_interactive(yes)
    plate = _pick_plate(unit, plate_name, interactive)
    set_maintenance(unit, plate, SCRIPTED_MAINTENANCE_S)
    r, force = _zero_step(unit, plate, yes, force, rest_timeout, interactive)
    cal = unit.calibration()
    if cal is None or any(c not in cal.channels for c in plate.channels):
        click.echo(f"plate {plate.key}: zero recorded ({', '.join(f'{x:.0f}' for x in r['level_counts'])} counts); "
                   f"it has no scale yet: place a known mass and run "
                   f"`shelfcal calibrate --plate {plate.key} --mass-g GRAMS`")
        return
    res = unit.link.call("tare", plates=[plate.key], force=True if force else False,
                         technician=technician_name(technician))
    p = res["plates"][plate.key]
    unit.log({"kind": "tare", "plate": plate.key, "calibration_id": res["calibration_id"],
              "shift_g": p["shift_g"], "technician": technician_name(technician)})
    click.echo(
        f"plate {plate.key}: tared (zero moved {p['shift_g']:+.1f} g); calibration {res['calibration_id']} in force"
    )
    if interactive:
        set_maintenance(unit, plate, 0)


@cli.command()
@_plate_opt
@click.option("--mass-g", "masses", type=float, multiple=True,
              help="Known mass on the plate now (scripted: one point per run, after `shelfcal tare`).")
@_yes_opt
@click.option("--force", is_flag=True, help="Accept a suspicious zero.")
@_rest_opt
@_tech_opt
@click.pass_obj
def calibrate(obj: Ctx, plate_name: str | None, masses: tuple[float, ...], yes: bool, force: bool,
              rest_timeout: float, technician: str | None) -> None:
    """Calibrate a plate with known masses (least-squares over the zero and every mass point).

    \b
    Interactive: empty → rest → zero; then for each mass: place it → rest → point; fit, accept.
    Scripted:    shelfcal tare --plate 1/2 --yes           (plate empty)
                 shelfcal calibrate --plate 1/2 --mass-g 500 --yes    (500 g on it)
                 shelfcal calibrate --plate 1/2 --mass-g 2000 --yes   (optional further points)"""
    from .fit import duplicate_mass
    from .guided import add_point, fit_plate, session_points, write_fit
    unit = obj.unit()
    interactive = is_interactive(yes)
    plate = _pick_plate(unit, plate_name, interactive)
    unit.calibration()  # a corrupt or foreign file stops us before any work
    for m in masses:
        unit.check_mass(plate, m)
    tech = technician_name(technician)
    set_maintenance(unit, plate, SCRIPTED_MAINTENANCE_S)
    if interactive:
        _zero_step(unit, plate, yes, force, rest_timeout, True)
        queue = list(masses)
        while True:
            if queue:
                m = queue.pop(0)
            else:
                s = session_points(unit, plate)
                ans = click.prompt("Known mass in grams (Enter when done)" if len(s["points"]) else
                                   "Known mass in grams", default="" if s["points"] else None, show_default=False)
                if not str(ans).strip():
                    break
                try:
                    m = float(ans)
                except ValueError:
                    click.echo(f"not a number: {ans!r}")
                    continue
                try:
                    unit.check_mass(plate, m)
                except ShelfcalError as exc:
                    click.echo(str(exc))
                    continue
                dup = duplicate_mass(m, [p[0] for p in s["points"]])
                if dup:
                    click.echo(f"point refused: {dup}")
                    continue
            _place_prompt(obj, unit, plate, m)
            r = await_rest(unit, plate, rest_timeout, True, f"{m:g} g")
            try:
                s = add_point(unit, plate, m, r)
            except ShelfcalError as exc:
                if exc.code != EX_DATAERR:
                    raise
                click.echo(str(exc))
                continue
            _show_fit(fit_plate(unit, plate, s))
    else:
        if len(masses) != 1:
            raise ShelfcalError("scripted calibration takes exactly one --mass-g per run (the mass on the plate now)",
                                EX_USAGE)
        s = session_points(unit, plate)
        r = await_rest(unit, plate, rest_timeout, False, f"{masses[0]:g} g")
        s = add_point(unit, plate, masses[0], r)
    s = session_points(unit, plate)
    if not s["points"]:
        raise ShelfcalError("no known-mass point recorded: nothing written", EX_TEMPFAIL)
    pf = fit_plate(unit, plate, s)
    if not interactive:
        _show_fit(pf)
    confirm(f"Write this calibration for plate {plate.key}?", yes)
    cid = write_fit(unit, pf, tech)
    _reload(unit)
    if interactive:
        _remove_prompt(obj, plate, rest_timeout)
    from daemon.calstate import PREVIOUS
    kept = " (previous kept as calibration.prev.json)" if (unit.state_dir / PREVIOUS).exists() else ""
    click.echo(f"plate {plate.key}: calibration {cid} written by {tech}{kept}")


def _place_prompt(obj: Ctx, unit: Unit, plate: PlateInfo, m: float) -> None:
    sim = _sim_load_file(obj)
    if sim is not None:
        click.prompt(f"Place {m:g} g in the middle of plate {plate.key} and press Enter "
                     f"(simulator: press Enter and shelfcal places it)", default="", show_default=False)
        _sim_set(sim, plate.key, m)
    else:
        click.prompt(f"Place {m:g} g in the middle of plate {plate.key}, hands off, then press Enter",
                     default="", show_default=False)


def _remove_prompt(obj: Ctx, plate: PlateInfo, rest_timeout: float = 30.0) -> None:
    """Test masses off, plate back at rest, then the plate is in service again."""
    sim = _sim_load_file(obj)
    unit = obj.unit()
    if sim is not None:
        click.echo(f"Take the test mass off plate {plate.key} (simulator: removed for you)")
        _sim_set(sim, plate.key, None)
    else:
        click.prompt(f"Take the test mass off plate {plate.key} and press Enter", default="", show_default=False)
    if unit.link.kind == "daemon":
        try:
            await_rest(unit, plate, rest_timeout, True, "mass removed")
        except ShelfcalError as exc:
            click.echo(f"warning: {exc}; plate {plate.key} goes back in service as shelfcal exits: "
                       f"what moves on it then may be an item event", err=True)
            return
        set_maintenance(unit, plate, 0)


def _show_fit(pf: PlateFit) -> None:
    from rich.table import Table
    t = Table(title=f"plate {pf.plate.key} fit")
    for col in ("mass g", "residual g"):
        t.add_column(col, justify="right")
    for m, r in zip(pf.masses, pf.residuals_g):
        t.add_row(f"{m:g}", f"{r:+.2f}")
    con = console()
    con.print(t)
    for f in pf.fits:
        prev = pf.previous_scale.get(f.channel)
        change = f" (was {prev:.4f}, {100 * (f.scale / prev - 1):+.2f} %)" if prev else ""
        con.print(f"channel {f.channel}: scale {f.scale:.4f} counts/g{change}, offset {f.offset:.0f} counts")
    cap = pf.capacity_g
    note = (
        ""
        if cap >= pf.plate.capacity_g
        else f"  [yellow]below the plate's rating of {pf.plate.capacity_g:g} g[/yellow]"
    )
    con.print(f"implied capacity before the ADC saturates: {cap:,.0f} g{note}")


def _reload(unit: Unit) -> None:
    try:
        res = unit.link.call("calibration_reload")
    except ShelfcalError as exc:
        click.echo(f"warning: the calibration is written but the unit did not adopt it ({exc}); "
                   f"restart shelfd", err=True)
        return
    if unit.link.kind == "daemon":
        click.echo(f"shelfd now runs calibration {res['calibration_id']}")


@cli.command()
@_plate_opt
@click.option(
    "--mass-g", "mass", type=float, required=True, help="A known mass, different from the calibration masses."
)
@click.option("--tolerance-g", type=float, help="Pass band (default: 2 g or 0.5 % of the mass, whichever is larger).")
@_yes_opt
@_rest_opt
@_tech_opt
@click.pass_obj
def verify(obj: Ctx, plate_name: str | None, mass: float, tolerance_g: float | None, yes: bool, rest_timeout: float,
           technician: str | None) -> None:
    """Weigh a known mass on a tared plate: pass (exit 0) or fail (exit 65) against a tolerance."""
    unit = obj.unit()
    interactive = is_interactive(yes)
    plate = _pick_plate(unit, plate_name, interactive)
    unit.check_mass(plate, mass)
    unit.link  # noqa: B018 - opened first: a simulated unit's first open writes its factory calibration
    cal = unit.calibration()
    if cal is None or any(c not in cal.channels for c in plate.channels):
        raise ShelfcalError(f"plate {plate.key} is not calibrated: run `shelfcal calibrate --plate {plate.key}`",
                            EX_USAGE)
    tol = tolerance_g if tolerance_g is not None else max(2.0, 0.005 * mass)
    if tol <= 0:
        raise ShelfcalError(f"--tolerance-g must be more than 0, got {tol:g}", EX_USAGE)
    cal_masses = {p[0] * len(plate.channels) for c in plate.channels for p in cal.channels[c].points if p[0] > 0}
    if any(abs(mass - m) < 1.0 for m in cal_masses):
        click.echo(f"warning: {mass:g} g was a calibration mass; a different mass checks the fit between points",
                   err=True)
    set_maintenance(unit, plate, SCRIPTED_MAINTENANCE_S)
    if interactive:
        _place_prompt(obj, unit, plate, mass)
    r = await_rest(unit, plate, rest_timeout, interactive, f"{mass:g} g")
    g = r.get("grams")
    if g is None:
        raise ShelfcalError(f"plate {plate.key} has no calibrated reading; run `shelfcal calibrate`", EX_DATAERR)
    err = g - mass
    ok = abs(err) <= tol
    unit.log(
        {
            "kind": "verify",
            "plate": plate.key,
            "mass_g": mass,
            "read_g": round(g, 2),
            "error_g": round(err, 2),
            "tolerance_g": tol,
            "pass": ok,
            "calibration_id": cal.calibration_id,
            "technician": technician_name(technician),
        }
    )
    verdict = "PASS" if ok else "FAIL"
    click.echo(f"plate {plate.key}: {verdict}: read {g:.1f} g for {mass:g} g ({err:+.2f} g, tolerance ±{tol:g} g, "
               f"noise {r.get('sigma_g') or 0:.2f} g)")
    if interactive:
        _remove_prompt(obj, plate, rest_timeout)
    if not ok:
        raise ShelfcalError(f"plate {plate.key} failed verification: tare it empty and re-run "
                            f"`shelfcal calibrate --plate {plate.key}`", EX_DATAERR)


@cli.command()
@_plate_opt
@click.option("--minutes", type=float, default=10.0, show_default=True, help="How long (at most 60).")
@click.option("--off", is_flag=True, help="Back in service now.")
@click.pass_obj
def maintenance(obj: Ctx, plate_name: str | None, minutes: float, off: bool) -> None:
    """Take a plate out of service on a running shelfd: its weight changes are not item events
    (restocking by hand, cleaning, test masses). The guided steps do this by themselves."""
    unit = obj.unit()
    if plate_name is None:
        raise ShelfcalError("--plate is required", EX_USAGE)
    plate = unit.plate(plate_name)
    if not off and not 0 < minutes <= 60:
        raise ShelfcalError(f"--minutes must be more than 0 and at most 60, got {minutes:g}", EX_USAGE)
    if unit.link.kind != "daemon":
        raise ShelfcalError("shelfd is not running: there are no item events to hold back", EX_USAGE)
    left = unit.link.call("maintenance", plates=[plate.key], seconds=0 if off else minutes * 60)["maintenance"]
    click.echo(f"plate {plate.key}: " + ("back in service" if off else f"out of service for {minutes:g} min")
               + (f"; out of service now: {', '.join(sorted(left))}" if left else ""))


# ---------------------------------------------------------------- simulator helper


def _sim_load_file(obj: Ctx) -> Path | None:
    from daemon.config import SimSensing
    s = obj.cfg.sensing
    return s.load_file if isinstance(s, SimSensing) and s.load_file is not None else None


def _sim_set(path: Path, key: str, grams: float | None) -> None:
    from daemon.atomicfile import atomic_write
    try:
        cur = json.loads(Path(path).read_text())
        cur = cur if isinstance(cur, dict) else {}
    except (OSError, ValueError):
        cur = {}
    if grams is None or grams == 0:
        cur.pop(key, None)
    else:
        cur[key] = grams
    atomic_write(Path(path), json.dumps(cur))


@cli.group()
def sim() -> None:
    """Simulator only: put test masses on simulated plates (sensing.load_file)."""


@sim.command("place")
@click.option("--plate", "plate_name", required=True)
@click.option("--mass-g", "mass", type=float, required=True, help="Grams of test mass on the plate (0 removes it).")
@click.pass_obj
def sim_place(obj: Ctx, plate_name: str, mass: float) -> None:
    """Put MASS grams of test mass on a simulated plate (writes sensing.load_file)."""
    path = _sim_load_file(obj)
    if path is None:
        raise ShelfcalError("this config has no sensing.load_file (simulator only): add one to place masses", EX_USAGE)
    from daemon.layout import Layout
    keys = [p.key for p in Layout.from_config(obj.cfg).plates]
    key = plate_name if plate_name in keys else next((k for k in keys if k.endswith("/" + plate_name)), None)
    if key is None:
        raise ShelfcalError(f"no plate {plate_name!r}; plates are {', '.join(keys)}", EX_USAGE)
    if mass < 0:
        raise ShelfcalError(f"--mass-g must be ≥ 0, got {mass:g}", EX_USAGE)
    _sim_set(path, key, mass)
    click.echo(f"simulator: {mass:g} g of test mass on plate {key}")


# ---------------------------------------------------------------- entry point


# every command module's commands, in one place (the load-cell commands above register themselves)
for _group in (camera.camera, planogram.planogram, report.report):
    cli.add_command(_group)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_click(cli, "shelfcal", errors=(ShelfcalError,),
              interrupted="interrupted; the calibration in force is unchanged",
              aborted="aborted; the calibration in force is unchanged")


if __name__ == "__main__":
    main()
