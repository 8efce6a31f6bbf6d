"""``shelfcal planogram``: which SKU sits on which plate, and its unit weight.

Edits go to the unit's YAML config with ruamel.yaml's round-trip mode, so the file's comments,
key order and flow style survive. Every edit is validated by :mod:`daemon.config` (the same
checks ``shelfd check`` runs) before it replaces the file atomically; an edit that would make the
config invalid is refused and the file is left as it was.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.atomicfile import atomic_write
from daemon.exitcodes import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_USAGE

from .context import SCRIPTED_MAINTENANCE_S, Ctx, await_rest, confirm, console, is_interactive, set_maintenance
from .errors import ShelfcalError

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from .guided import PlateInfo


def _yaml() -> YAML:
    from ruamel.yaml import YAML
    y = YAML()  # round-trip: comments and layout kept
    y.preserve_quotes = True
    y.width = 4096
    return y


def load_doc(path: Path) -> Any:
    """The config as ruamel.yaml round-trips it (comments and layout kept): any YAML at all."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ShelfcalError(f"{path}: cannot read config: {exc.strerror}", EX_NOINPUT) from None
    return _yaml().load(text)


def write_doc(path: Path, doc: Any) -> None:
    """Validate with daemon.config, then temp file + fsync + rename next to the original."""
    from daemon.config import ConfigError, load_config
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    text = buf.getvalue()
    path = Path(path)

    def check_and_keep_mode(tmp: str) -> None:
        try:
            load_config(tmp)  # same folder: relative paths resolve as they will
        except ConfigError as exc:
            raise ShelfcalError(f"refused: the edit would make {path} invalid "
                                f"({exc.problems[0].replace(tmp, str(path))}); config unchanged", EX_DATAERR) from None
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except OSError:
            pass

    try:
        atomic_write(path, text, before_replace=check_and_keep_mode)
    except OSError as exc:
        raise ShelfcalError(f"cannot write {path}: {exc.strerror}", EX_CANTCREAT) from None


def _flow_like(seq: Any, item: dict[str, Any]) -> CommentedMap:
    """New entries look like their siblings (the example config writes facings as flow maps)."""
    from ruamel.yaml.comments import CommentedMap
    m = CommentedMap(item)
    if len(seq) and getattr(seq[0], "fa", None) is not None and seq[0].fa.flow_style():
        m.fa.set_flow_style()
    return m


@click.group()
def planogram() -> None:
    """Show and edit which SKU sits on which plate (the config's planogram), measure unit weights."""


@planogram.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(obj: Ctx, as_json: bool) -> None:
    cfg = obj.cfg
    learned = _learned(Path(cfg.state_dir))
    rows = [p.model_dump(mode="json", exclude_none=True) for p in cfg.planogram]
    for r in rows:
        u = learned.get(r["sku"])
        # what the unit has learned counts only while it started from this entry's weight
        if u and abs(float(u.get("catalogue_g", 0)) - r["unit_weight_g"]) < 1e-6 * r["unit_weight_g"]:
            r["learned"] = {k: u[k] for k in ("mean_g", "mean_sd_g", "n", "drift") if k in u}
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.table import Table
    t = Table(title=f"planogram of unit {cfg.unit_id} ({obj.config_path})")
    for col in ("shelf", "plates", "sku", "name", "unit g", "sd g", "learned g", "events", "stock"):
        t.add_column(col, justify="right" if col in ("unit g", "sd g", "learned g", "events", "stock") else "left")
    for r in sorted(rows, key=lambda r: (r["shelf"], r["plates"])):
        lu = r.get("learned")
        t.add_row(
            r["shelf"],
            ",".join(map(str, r["plates"])),
            r["sku"],
            r.get("name") or "",
            f"{r['unit_weight_g']:g}",
            "" if r.get("unit_weight_sd_g") is None else f"{r['unit_weight_sd_g']:g}",
            "" if not lu else f"{lu['mean_g']:.1f} ± {lu['mean_sd_g']:.1f}" + (" DRIFT" if lu.get("drift") else ""),
            "" if not lu else str(lu["n"]),
            "" if r.get("stock") is None else str(r["stock"]),
        )
    console().print(t)
    if any(r.get("learned", {}).get("drift") for r in rows):
        click.echo("DRIFT: the unit's events say a product weighs more than 12 % off its planogram entry; "
                   "weigh it with `shelfcal planogram measure` and fix the entry")


def _learned(state_dir: Path) -> dict[str, Any]:
    """Unit weights the running unit learned (``state_dir/unit_weights.json``), if any."""
    from daemon.events.unit_weights import FILE_NAME
    try:
        doc = json.loads((state_dir / FILE_NAME).read_text())
        return {k: v for k, v in doc.get("skus", {}).items() if isinstance(v, dict) and v.get("n")}
    except (OSError, ValueError, AttributeError):
        return {}


def _plates(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ShelfcalError(f"--plates must be plate ids like 1 or 3,4, got {text!r}", EX_USAGE) from None
    if not out:
        raise ShelfcalError("--plates is empty", EX_USAGE)
    return out


@planogram.command("set")
@click.option("--sku", required=True)
@click.option("--shelf", required=True)
@click.option("--plates", "plates", required=True, help="Plate id(s) of the facing: 2 or 3,4.")
@click.option("--unit-weight-g", type=float, required=True)
@click.option("--name")
@click.option("--stock", type=int)
@click.pass_obj
def set_(obj: Ctx, sku: str, shelf: str, plates: str, unit_weight_g: float, name: str | None,
         stock: int | None) -> None:
    """Put a SKU on a facing (or update the facing that SKU has on that shelf)."""
    ids = _plates(plates)
    if unit_weight_g <= 0:
        raise ShelfcalError(f"--unit-weight-g must be more than 0, got {unit_weight_g:g}", EX_USAGE)
    doc = load_doc(obj.config_path)
    seq = doc.get("planogram")
    if seq is None:
        from ruamel.yaml.comments import CommentedSeq
        seq = doc["planogram"] = CommentedSeq()
    hit = next((e for e in seq if str(e.get("sku")) == sku and str(e.get("shelf")) == shelf), None)
    if hit is None:
        item: dict[str, Any] = {"sku": sku}
        if name:
            item["name"] = name
        item.update({"shelf": shelf, "plates": ids, "unit_weight_g": unit_weight_g})
        if stock is not None:
            item["stock"] = stock
        seq.append(_flow_like(seq, item))
        what = "added"
    else:
        hit["plates"] = _flow_like_list(hit.get("plates"), ids)
        hit["unit_weight_g"] = unit_weight_g
        if name:
            hit["name"] = name
        if stock is not None:
            hit["stock"] = stock
        what = "updated"
    # one SKU weighs the same everywhere (daemon.config enforces it): keep the other facings in step
    for e in seq:
        if str(e.get("sku")) == sku:
            e["unit_weight_g"] = unit_weight_g
    write_doc(obj.config_path, doc)
    click.echo(f"planogram: {sku} {what} on shelf {shelf} plates {','.join(map(str, ids))} at {unit_weight_g:g} g; "
               f"restart shelfd to use it")


def _flow_like_list(old: Any, ids: list[int]) -> CommentedSeq:
    from ruamel.yaml.comments import CommentedSeq
    s = CommentedSeq(ids)
    if old is not None and getattr(old, "fa", None) is not None and old.fa.flow_style():
        s.fa.set_flow_style()
    return s


@planogram.command("remove")
@click.option("--sku", required=True)
@click.option("--shelf", help="Only the facing on this shelf (default: every facing of the SKU).")
@click.pass_obj
def remove(obj: Ctx, sku: str, shelf: str | None) -> None:
    doc = load_doc(obj.config_path)
    seq = doc.get("planogram") or []
    idx = [i for i, e in enumerate(seq) if str(e.get("sku")) == sku and (shelf is None or str(e.get("shelf")) == shelf)]
    if not idx:
        raise ShelfcalError(f"no facing of SKU {sku!r}{' on shelf ' + shelf if shelf else ''} in the planogram",
                            EX_USAGE)
    for i in reversed(idx):
        del seq[i]
    write_doc(obj.config_path, doc)
    click.echo(f"planogram: removed {len(idx)} facing(s) of {sku}; restart shelfd to use it")


@planogram.command("measure")
@click.option("--plate", "plate_name", required=True)
@click.option("--count", type=int, required=True, help="Items placed on the plate.")
@click.option("--sku", help="Write the measured unit weight to this SKU's planogram entries.")
@click.option("--yes", is_flag=True, help="Non-interactive: the tared plate holds exactly --count items now; "
              "write without asking.")
@click.option("--rest-timeout", type=float, default=30.0, show_default=True)
@click.pass_obj
def measure(obj: Ctx, plate_name: str, count: int, sku: str | None, yes: bool, rest_timeout: float) -> None:
    """Measure a unit weight: N items of one product on a plate.

    Interactive: the plate's reading before and after you add N items. Scripted (--yes): the
    plate was tared empty and holds the N items now."""
    if count < 1:
        raise ShelfcalError(f"--count must be at least 1, got {count}", EX_USAGE)
    if sku is not None and sku not in {p.sku for p in obj.cfg.planogram}:
        raise ShelfcalError(f"SKU {sku!r} is not in the planogram: add it with `shelfcal planogram set`", EX_USAGE)
    unit = obj.unit()
    plate = unit.plate(plate_name)
    interactive = is_interactive(yes)
    set_maintenance(unit, plate, SCRIPTED_MAINTENANCE_S)
    before = 0.0
    if interactive:
        click.prompt(f"Leave plate {plate.key} as it is (hands off) and press Enter", default="", show_default=False)
        before = _grams(await_rest(unit, plate, rest_timeout, True, "before"), plate)
        click.prompt(f"Now add {count} item(s) to plate {plate.key}, hands off, and press Enter", default="",
                     show_default=False)
    r = await_rest(unit, plate, rest_timeout, interactive, f"{count} item(s)")
    after = _grams(r, plate)
    unit_g = (after - before) / count
    if unit_g <= 0:
        raise ShelfcalError(f"plate {plate.key} gained {after - before:+.1f} g for {count} item(s): place the items "
                            f"on this plate (and tare it empty first when scripted)", EX_DATAERR)
    sd_mean = (r.get("sigma_g") or 0.0) / count
    click.echo(f"plate {plate.key}: {count} item(s) weigh {after - before:.1f} g → unit weight {unit_g:.2f} g "
               f"(± {max(sd_mean, 0.01):.2f} g from noise)")
    if sku is not None:
        confirm(f"Write {unit_g:.2f} g as the unit weight of {sku}?", yes)
        doc = load_doc(obj.config_path)
        for e in doc.get("planogram") or []:
            if str(e.get("sku")) == sku:
                e["unit_weight_g"] = round(unit_g, 2)
        write_doc(obj.config_path, doc)
        click.echo(f"planogram: {sku} unit weight {unit_g:.2f} g; restart shelfd to use it")


def _grams(r: dict[str, Any], plate: PlateInfo) -> float:
    g = r.get("grams")
    if g is None:
        raise ShelfcalError(f"plate {plate.key} is not calibrated: run `shelfcal calibrate --plate {plate.key}`",
                            EX_USAGE)
    return float(g)

