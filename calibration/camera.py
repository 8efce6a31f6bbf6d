"""``shelfcal camera``: where each plate lies in the camera's picture, and the product gallery.

Built on :mod:`daemon.vision`: ROIs are read and written only through
:func:`daemon.vision.rois.load_rois` / :func:`~daemon.vision.rois.save_rois` (``state_dir/
camera.json``, atomic, previous kept), frames come from the configured camera source
(:func:`daemon.vision.setup.make_camera_source`), product photos go into the embedding model's
:class:`~daemon.vision.gallery.Gallery`. A snapshot opens the camera itself: a USB or CSI
camera held by a running shelfd must be freed first (``systemctl stop shelfd``).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from daemon.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE

from .context import Ctx, technician_name
from .errors import ShelfcalError

if TYPE_CHECKING:
    from PIL.Image import Image

    from daemon.config import CameraConfig
    from daemon.vision.rois import ROI


def _need_camera(obj: Ctx) -> CameraConfig:
    if obj.cfg.camera is None:
        raise ShelfcalError(f"{obj.config_path} has no camera section: add one (docs/vision.md) first", EX_CONFIG)
    return obj.cfg.camera


def _rois(obj: Ctx) -> dict[str, ROI]:
    from daemon.vision.rois import RoiError, load_rois
    try:
        return load_rois(obj.cfg.state_dir, obj.cfg.unit_id) or {}
    except RoiError as exc:
        raise ShelfcalError(f"{exc}: restore camera.prev.json or move the file away", EX_DATAERR) from None


def grab_frame(obj: Ctx) -> tuple[np.ndarray, dict[str, ROI] | None]:
    """One RGB frame from the configured camera and the source's own suggested ROIs (sim, replay)."""
    from daemon.sensing.factory import layout_for
    from daemon.vision.camera import CameraError
    from daemon.vision.setup import VisionConfigError, make_camera_source
    cfg = obj.cfg
    cam = _need_camera(obj)  # the commands checked already
    layout = layout_for(cfg)
    sensing = None
    if cam.type == "sim":
        from daemon.sensing.sim import SimSource
        sensing = SimSource(cfg, layout)  # the scene the sim camera draws; no hardware involved
    try:
        src, suggested = make_camera_source(cfg, layout, sensing)
    except VisionConfigError as exc:
        raise ShelfcalError(exc.problems[0], EX_CONFIG) from None
    except CameraError as exc:
        raise ShelfcalError(f"camera: {exc}", EX_UNAVAILABLE) from None
    try:
        if getattr(src, "synchronous", False) and hasattr(src, "render_at"):
            img = src.render_at(sensing.t0 if sensing is not None else 0.0)
        else:
            src.start()
            got = src.read(5.0)
            if got is None:
                raise ShelfcalError("camera gave no frame within 5 s: is shelfd holding it? "
                                    "(systemctl stop shelfd) Is it connected?", EX_UNAVAILABLE)
            img = got[1]
    except CameraError as exc:
        raise ShelfcalError(
            f"camera: {exc} (a running shelfd holds the camera: stop it first)", EX_UNAVAILABLE
        ) from None
    finally:
        try:
            src.close()
        except Exception:  # noqa: BLE001
            pass
    return np.asarray(img), suggested


def draw_rois(img: np.ndarray, rois: dict[str, ROI], suggested: dict[str, ROI] | None = None) -> Image:
    """The frame with each plate's ROI outlined and labelled (saved ROIs solid, suggestions thin)."""
    from PIL import Image, ImageDraw
    im = Image.fromarray(img.astype(np.uint8)).convert("RGB")
    d = ImageDraw.Draw(im)
    w, h = im.size
    for rs, colour, width in (((suggested or {}), (255, 200, 0), 1), (rois, (0, 255, 80), 3)):
        for key, (x0, y0, x1, y1) in rs.items():
            box = [x0 * w, y0 * h, x1 * w - 1, y1 * h - 1]
            d.rectangle(box, outline=colour, width=width)
            d.text((box[0] + 4, box[1] + 3), key, fill=colour)
    return im


@click.group()
def camera() -> None:
    """Camera snapshot with the plate regions drawn on it, setting the regions, enrolling products."""


@camera.command("snapshot")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
@click.pass_obj
def snapshot(obj: Ctx, out: Path) -> None:
    """Save a frame with the current plate ROIs drawn on it (and the source's suggestions, if any)."""
    _need_camera(obj)
    rois = _rois(obj)
    img, suggested = grab_frame(obj)
    im = draw_rois(img, rois, None if rois else suggested)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent if str(out.parent) else ".")
        with os.fdopen(fd, "wb") as fh:
            im.save(fh, format="PNG")
        os.replace(tmp, out)
    except OSError as exc:
        raise ShelfcalError(f"cannot write {out}: {exc.strerror}", EX_CANTCREAT) from None
    missing = [k for k in obj.unit().plates if k not in rois]
    click.echo(f"camera: {img.shape[1]}×{img.shape[0]} frame with {len(rois)} ROI(s) → {out}")
    if missing:
        click.echo(f"plates without a ROI: {', '.join(missing)} (set them with `shelfcal camera set`"
                   + (", or --suggested" if suggested else "") + ")")


def _parse_roi(text: str) -> list[float]:
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 4:
        raise ShelfcalError(f"--roi must be x0,y0,x1,y1 as fractions of the picture (0..1), got {text!r}", EX_USAGE)
    return v


@camera.command("set")
@click.option("--plate", "plate_name", help="SHELF/PLATE whose ROI to set.")
@click.option("--roi", help="x0,y0,x1,y1 as fractions of the picture width/height (0..1).")
@click.option("--suggested", is_flag=True, help="Adopt the camera source's own ROIs for every plate (sim, replay).")
@click.option("--clear", is_flag=True, help="Remove the plate's ROI.")
@click.option("--technician")
@click.pass_obj
def set_roi(obj: Ctx, plate_name: str | None, roi: str | None, suggested: bool, clear: bool,
            technician: str | None) -> None:
    """Set (or clear) a plate's region in the camera picture; written atomically to camera.json."""
    from daemon.vision.rois import RoiError, save_rois
    cam = _need_camera(obj)
    rois: dict[str, Sequence[float]] = dict(_rois(obj))  # as given: save_rois checks each
    if suggested:
        _, sug = grab_frame(obj)
        if not sug:
            raise ShelfcalError(f"the {cam.type} camera suggests no ROIs: set each with --plate/--roi",
                                EX_USAGE)
        rois.update({k: tuple(v) for k, v in sug.items()})
    else:
        if not plate_name or (roi is None and not clear):
            raise ShelfcalError("give --plate with --roi x0,y0,x1,y1 (or --clear), or --suggested", EX_USAGE)
        key = obj.unit().plate(plate_name).key
        if clear:
            rois.pop(key, None)
        elif roi is not None:  # not --clear, so --roi was given (checked above)
            rois[key] = tuple(_parse_roi(roi))
    try:
        save_rois(obj.cfg.state_dir, rois, unit_id=obj.cfg.unit_id, frame_size=(cam.width, cam.height),
                  technician=technician_name(technician))
    except RoiError as exc:
        raise ShelfcalError(str(exc), EX_USAGE) from None
    except OSError as exc:
        raise ShelfcalError(f"cannot write camera.json in {obj.cfg.state_dir}: {exc.strerror}", EX_CANTCREAT) from None
    click.echo(f"camera: {len(rois)} plate ROI(s) saved; shelfd uses them after a restart")


@camera.command("show")
@click.pass_obj
def show(obj: Ctx) -> None:
    rois = _rois(obj)
    click.echo(json.dumps({k: list(v) for k, v in rois.items()}, indent=1) if rois else "no ROIs set")


@camera.command("enrol")
@click.option("--sku", required=True)
@click.option("--replace", is_flag=True, help="Drop the SKU's earlier photos first (new packaging).")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
def enrol(obj: Ctx, sku: str, replace: bool, images: tuple[Path, ...]) -> None:
    """Add product photos (cropped to the product) to the camera's gallery for SKU."""
    from PIL import Image, UnidentifiedImageError

    from daemon.vision.gallery import Gallery
    from daemon.vision.models import EmbeddingModel, ModelError
    from daemon.vision.setup import VisionConfigError, load_models
    cfg = obj.cfg
    if cfg.vision is None or cfg.vision.product_model is None:
        raise ShelfcalError("no vision.product_model in the config: the gallery belongs to an embedding model",
                            EX_CONFIG)
    if sku not in {p.sku for p in cfg.planogram}:
        click.echo(f"warning: {sku} is not in the planogram", err=True)
    try:
        _, model = load_models(cfg, Path(cfg.state_dir))
    except VisionConfigError as exc:
        raise ShelfcalError(exc.problems[0], EX_CONFIG) from None
    folder = getattr(model.spec, "gallery", None) if model is not None else None
    if not folder or not isinstance(model, EmbeddingModel):
        raise ShelfcalError(f"{cfg.vision.product_model}: not an embedding model with a gallery", EX_CONFIG)
    imgs = []
    for p in images:
        try:
            imgs.append(np.asarray(Image.open(p).convert("RGB")))
        except FileNotFoundError:
            raise ShelfcalError(f"{p}: no such file", EX_NOINPUT) from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ShelfcalError(f"{p}: not an image ({exc})", EX_DATAERR) from None
    try:
        g = Gallery.open(Path(cfg.state_dir) / folder, model)
        n = g.enroll(sku, imgs, replace=replace)
    except ModelError as exc:
        raise ShelfcalError(str(exc), EX_DATAERR) from None
    click.echo(f"gallery: {n} photo(s) of {sku} enrolled ({len(g)} in all); shelfd uses them after a restart")
