"""``shelfcal report``: the service record of a unit's calibration.

Per plate a PNG (calibration points and fit, residuals, a noise trace of the last seconds) and one
plain-text ``summary.txt`` (calibration id, technician, scale, residuals, implied capacity, noise,
the last verification). matplotlib is optional (the ``bench`` extra); without it the summary is
still written and shelfcal says how to get the plots.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from daemon import calstate
from daemon.control_handlers import NOISE_WINDOW_S, noise_g
from daemon.exitcodes import EX_CANTCREAT, EX_USAGE

from .context import Ctx
from .errors import ShelfcalError
from .fit import fit_channel

MIN_RESIDUAL_AXIS_G = 1.0  # the residual plot spans at least ±1 g


def residual_view(residuals: list[float], n_points: int) -> tuple[float, str | None]:
    """The residual plot's half-range (g) and a note. With 2 points (the zero and one mass) the
    line passes through both: the residuals are 0 by construction, and matplotlib would scale
    their float noise to a 1e-13 axis."""
    if n_points <= 2 or not residuals:
        return MIN_RESIDUAL_AXIS_G, f"{n_points} points: no residual to show"
    return max(MIN_RESIDUAL_AXIS_G, 1.2 * max(abs(r) for r in residuals)), None


@click.command()
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True, help="Folder for the PNGs and summary.txt."
)
@click.option("--plate", "plates", multiple=True, help="Only these plates (default: every calibrated plate).")
@click.option("--seconds", type=float, default=NOISE_WINDOW_S, show_default=True,
              help="Noise trace length (σ as `shelfcal diag` and `live` figure it).")
@click.pass_obj
def report(obj: Ctx, out: Path, plates: tuple[str, ...], seconds: float) -> None:
    """Plots per plate and a text summary of the calibration in force, for the service record."""
    from .link import wait_for_data
    unit = obj.unit()
    unit.link  # noqa: B018 - opened first: a simulated unit's first open writes its factory calibration
    cal = unit.calibration()
    if cal is None:
        raise ShelfcalError("no calibration in state_dir: run `shelfcal calibrate` first", EX_USAGE)
    chosen = [unit.plate(p) for p in plates] if plates else \
        [p for p in unit.plates.values() if all(c in cal.channels for c in p.channels)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShelfcalError(f"cannot create {out}: {exc.strerror}", EX_CANTCREAT) from None
    wait_for_data(unit.link, seconds + 1.5)  # own drivers: skip the first moments after power-up
    raw = unit.link.call("raw", seconds=seconds, channels=[c for p in chosen for c in p.channels])
    t = np.array(raw["t"], dtype=float)
    verifies = calstate.verify_entries(unit.state_dir)
    plt: Any  # matplotlib.pyplot, or None without matplotlib
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    lines = [f"Gondola calibration report: unit {unit.unit_id}",
             f"calibration {cal.calibration_id}  written {cal.created}  by {cal.technician or '?'}  ({cal.source})",
             f"noise trace: last {seconds:g} s of samples", ""]
    pngs = []
    for p in chosen:
        if any(c not in cal.channels for c in p.channels):
            lines.append(f"plate {p.key}: NOT CALIBRATED")
            continue
        grams = None
        for c in p.channels:
            cc = cal.channels[c]
            v = np.array([np.nan if x is None else x for x in raw["values"][c]], dtype=float)
            g = (v - cc.offset) / cc.scale
            grams = g if grams is None else grams + g
        good = ~np.isnan(grams) if grams is not None else np.zeros(0, bool)
        # white-noise σ from sample-to-sample differences (a mass set down during the trace, a
        # verify just before, must not read as noise): the figure diag and live show
        sig = noise_g(grams) if grams is not None else None
        sigma = math.nan if sig is None else sig
        fits = []
        for c in p.channels:
            pts = cal.channels[c].points
            fits.append(
                fit_channel(c, [(a, b) for a, b in pts]) if len(pts) >= 2 and len({a for a, _ in pts}) >= 2 else None
            )
        resid = [r for f in fits if f for r in f.residuals_g]
        n_points = max((len(cal.channels[c].points) for c in p.channels), default=0)
        axis_g, no_residual = residual_view(resid, n_points)
        cap = min((f.capacity_g for f in fits if f), default=math.nan) * len(p.channels)
        lines.append(f"plate {p.key} ({', '.join(p.channels)}):")
        for c, _f in zip(p.channels, fits):
            cc = cal.channels[c]
            pts_text = ", ".join(f"{a * len(p.channels):g} g" for a, _ in cc.points) or "none recorded"
            lines.append(f"  channel {c}: scale {cc.scale:.4f} counts/g, offset {cc.offset:.0f} counts, "
                         f"points {pts_text}, updated {cc.updated or '?'}")
        worst = no_residual or f"max |residual| {max(abs(r) for r in resid):.2f} g"
        lines.append(f"  {worst}, implied capacity "
                     f"{cap:,.0f} g (rating {p.capacity_g:g} g), noise σ {sigma:.2f} g over {good.sum()} samples")
        ver = verifies.get(p.key)
        if ver:
            lines.append(f"  last verify {ver['time']}: {'PASS' if ver['pass'] else 'FAIL'} {ver['read_g']} g for "
                         f"{ver['mass_g']:g} g (tolerance ±{ver['tolerance_g']:g} g, "
                         f"calibration {ver['calibration_id']})")
        else:
            lines.append("  not verified yet: run `shelfcal verify`")
        if plt is not None:
            fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
            for c, f in zip(p.channels, fits):
                arr = np.array(cal.channels[c].points) if cal.channels[c].points else np.zeros((0, 2))
                if len(arr):
                    ax[0].plot(arr[:, 0], arr[:, 1], "o", label=f"{c} points")
                    ax[1].plot(arr[:, 0], f.residuals_g if f else np.zeros(len(arr)), "o-", label=c)
                mm = np.linspace(0, max(arr[:, 0].max() if len(arr) else 1000, 1.0), 50)
                ax[0].plot(mm, cal.channels[c].offset + cal.channels[c].scale * mm, "-", label=f"{c} fit")
            ax[0].set(title=f"plate {p.key}: counts vs grams", xlabel="g on the channel", ylabel="counts")
            ax[0].legend(fontsize=7)
            ax[1].axhline(0, color="grey", lw=0.8)
            ax[1].set(title="residuals", xlabel="g", ylabel="g", ylim=(-axis_g, axis_g))
            if no_residual:
                ax[1].text(0.5, 0.75, no_residual, transform=ax[1].transAxes, ha="center", va="center")
            if grams is not None and good.any():
                ax[2].plot(t[good] - t[good][0], grams[good] - np.mean(grams[good]), lw=0.7)
            ax[2].set(title=f"noise trace (σ {sigma:.2f} g)", xlabel="s", ylabel="g − mean")
            fig.tight_layout()
            png = out / f"plate-{p.key.replace('/', '-')}.png"
            fig.savefig(png, dpi=90)
            plt.close(fig)
            pngs.append(png)
        lines.append("")
    (out / "summary.txt").write_text("\n".join(lines))
    click.echo("\n".join(lines))
    click.echo(f"report: {out / 'summary.txt'}" + (f" and {len(pngs)} plot(s) in {out}" if pngs else ""))
    if plt is None:
        click.echo("shelfcal: matplotlib is not installed, so no plots: pip install 'gondola[bench]' "
                   "(or apt install python3-matplotlib)", err=True)
