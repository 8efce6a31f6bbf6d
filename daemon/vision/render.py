"""A deterministic renderer of what a shelf unit's camera sees (numpy + Pillow, no OpenCV).

Used three ways, so they agree by construction:

* the ``sim`` camera source renders frames that match the simulator's weight events;
* the training scripts (``training/``) draw before/after crop pairs and product crops from it;
* tests and benchmarks build cases that only a camera can decide (equal-weight products, swaps).

The picture is a schematic **top view**: every shelf is a horizontal band, its plates are regions
left to right, each planogram facing is a lane on its plate(s) and every unit on it is drawn as a
footprint in a grid slot, so the number of units is visible and taking one removes exactly one
footprint. Units lying on a plate that does not own them (misplaced returns) sit in a strip at the
plate's front edge. A shopper's arm comes in from the bottom of the frame (the aisle), reaches a
plate and leaves, possibly holding a product. Every SKU has a stable look derived from its string
(colour, shape, size, label stripe, pattern), so two SKUs of equal weight still look different.
Lighting gain, colour cast, sensor noise and a pixel or two of camera jitter vary per frame.

Coordinates: regions of interest (ROIs) are normalised ``(x0, y0, x1, y1)`` in 0..1 of the frame,
so they survive a change of resolution; ``crop`` converts them to pixels.
"""
from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from ..layout import Layout

ROI = tuple[float, float, float, float]

# Frame defaults: modest resolution (a Pi camera's 640×480 preview stream).
WIDTH, HEIGHT = 640, 480
SHAPES = ("box", "can", "bag", "bottle", "jar")
BACKGROUND = (58, 60, 66)       # the gondola's back panel between bands
PLATE = (176, 178, 172)         # plate surface
FRONT_EDGE = (90, 92, 98)       # price rail at each plate's front


# ---------------------------------------------------------------- scene description


@dataclass(frozen=True)
class FacingView:
    """One planogram facing as the camera sees it: ``count`` units of ``sku`` on ``plates``."""

    sku: str
    shelf: str
    plates: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class HandView:
    """A shopper's arm reaching ``plates`` of ``shelf``; ``reach`` 0 = outside the frame, 1 = on
    the plate; ``holding`` the SKU in the hand, if any."""

    shelf: str
    plates: tuple[int, ...]
    reach: float
    holding: str | None = None
    skin: int = 0               # index into a few skin/sleeve tones (per shopper)


@dataclass
class SceneState:
    """Everything the camera can see at one instant."""

    facings: list[FacingView]
    foreign: dict[str, list[str]] = field(default_factory=dict)  # plate key "shelf/plate" → SKUs
    hand: HandView | None = None

    def copy(self) -> SceneState:
        return SceneState(list(self.facings), {k: list(v) for k, v in self.foreign.items()}, self.hand)

    def with_count(self, sku: str, shelf: str, plate: int, delta: int) -> SceneState:
        """A copy with ``delta`` units added to (or taken from) the facing of ``sku`` on that plate."""
        out = self.copy()
        for i, f in enumerate(out.facings):
            if f.sku == sku and f.shelf == shelf and plate in f.plates:
                out.facings[i] = replace(f, count=max(0, f.count + delta))
                return out
        raise KeyError(f"no facing of {sku} on {shelf}/{plate}")


# ---------------------------------------------------------------- geometry


class ShelfGeometry:
    """Where each plate lies in the frame. ``plates``: (shelf, plate id) in layout order."""

    def __init__(self, plates: Sequence[tuple[str, int]], width: int = WIDTH, height: int = HEIGHT):
        self.width, self.height = int(width), int(height)
        self.shelves: list[str] = list(dict.fromkeys(s for s, _ in plates))
        self._plates = {s: [p for s2, p in plates if s2 == s] for s in self.shelves}
        self._rects: dict[str, ROI] = {}
        n = len(self.shelves)
        band = 1.0 / n
        for i, s in enumerate(self.shelves):
            ids = self._plates[s]
            y0, y1 = i * band + 0.06 * band, (i + 1) * band - 0.04 * band
            w = 0.96 / len(ids)
            for j, pid in enumerate(ids):
                x0 = 0.02 + j * w
                self._rects[f"{s}/{pid}"] = (x0 + 0.006, y0, x0 + w - 0.006, y1)

    @classmethod
    def from_layout(cls, layout: Layout, width: int = WIDTH, height: int = HEIGHT) -> ShelfGeometry:
        return cls([(p.shelf, p.id) for p in layout.plates], width, height)

    def plate_roi(self, shelf: str, plate: int) -> ROI:
        return self._rects[f"{shelf}/{plate}"]

    def rois(self) -> dict[str, ROI]:
        """Default per-plate ROIs (what ``shelfcal camera`` starts from)."""
        return dict(self._rects)

    def px(self, roi: ROI) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = roi
        return (int(round(x0 * self.width)), int(round(y0 * self.height)),
                int(round(x1 * self.width)), int(round(y1 * self.height)))

    def facing_rects(self, scene_facings: Sequence[FacingView], f: FacingView) -> list[tuple[int, int, int, int]]:
        """The lanes of a facing in pixels, one per plate it stands on: each plate is split among
        the facings touching it; the front strip (bottom 18 %) stays free for misplaced units."""
        out = []
        for p in f.plates:
            key = f"{f.shelf}/{p}"
            if key not in self._rects:
                continue
            sharing = [g for g in scene_facings if g.shelf == f.shelf and p in g.plates]
            lanes, lane = len(sharing), next(i for i, g in enumerate(sharing) if g is f)
            x0, y0, x1, y1 = self.px(self._rects[key])
            y1 = y0 + int(0.80 * (y1 - y0))
            w = (x1 - x0) / lanes
            out.append((int(x0 + lane * w + 2), y0 + 3, int(x0 + (lane + 1) * w - 2), y1))
        return out


def union_roi(rois: Iterable[ROI]) -> ROI:
    rois = list(rois)
    return (min(r[0] for r in rois), min(r[1] for r in rois), max(r[2] for r in rois), max(r[3] for r in rois))


# ---------------------------------------------------------------- per-SKU appearance


@dataclass(frozen=True)
class Appearance:
    color: tuple[int, int, int]
    accent: tuple[int, int, int]
    shape: str
    size: float          # 0.6..1.0 of a slot
    aspect: float        # width / height of the footprint
    stripe: int          # 0 top, 1 middle, 2 bottom
    pattern: int         # 0 plain, 1 vertical stripes, 2 dots, 3 checker


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=4096)
def appearance(sku: str) -> Appearance:
    """A stable look per SKU string (SHA-256 of it), the same on every machine and every run."""
    h = hashlib.sha256(sku.encode()).digest()
    hue = h[0] / 256.0
    color = _rgb(hue, 0.45 + 0.5 * h[1] / 255, 0.45 + 0.5 * h[2] / 255)
    accent = _rgb(hue + 0.33 + 0.34 * h[4] / 255, 0.3 + 0.7 * h[5] / 255, 0.35 + 0.65 * h[6] / 255)
    shape = SHAPES[h[3] % len(SHAPES)]
    aspect = {"box": 1.3, "can": 1.0, "bag": 1.15, "bottle": 0.7, "jar": 0.9}[shape] * (0.85 + 0.3 * h[7] / 255)
    return Appearance(color, accent, shape, 0.62 + 0.36 * h[8] / 255, aspect, h[9] % 3, h[10] % 4)


def _draw_unit(d: ImageDraw.ImageDraw, app: Appearance, box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w < 3 or h < 3:
        return
    outline = tuple(int(c * 0.45) for c in app.color)
    if app.shape in ("can", "jar"):
        d.ellipse(box, fill=app.color, outline=outline, width=1)
        r = 0.28 if app.shape == "can" else 0.4
        d.ellipse((x0 + w * r, y0 + h * r, x1 - w * r, y1 - h * r), fill=app.accent)
        return
    if app.shape == "bottle":
        d.rounded_rectangle(box, radius=max(1, int(min(w, h) * 0.35)), fill=app.color, outline=outline)
        d.ellipse((x0 + w * 0.3, y0 + h * 0.05, x1 - w * 0.3, y0 + h * 0.3), fill=app.accent)
    elif app.shape == "bag":
        d.rounded_rectangle(box, radius=max(1, int(min(w, h) * 0.2)), fill=app.color, outline=outline)
    else:
        d.rectangle(box, fill=app.color, outline=outline)
    # pattern, then the label stripe
    if app.pattern == 1:
        for k in range(1, 4):
            xx = x0 + k * w / 4
            d.line((xx, y0 + 2, xx, y1 - 2), fill=app.accent, width=max(1, int(w / 14)))
    elif app.pattern == 2:
        rr = max(1.0, w / 12)
        for fx in (0.3, 0.7):
            for fy in (0.3, 0.7):
                cx, cy = x0 + fx * w, y0 + fy * h
                d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=app.accent)
    elif app.pattern == 3:
        d.rectangle((x0 + w * 0.1, y0 + h * 0.1, x0 + w * 0.5, y0 + h * 0.5), fill=app.accent)
        d.rectangle((x0 + w * 0.5, y0 + h * 0.5, x1 - w * 0.1, y1 - h * 0.1), fill=app.accent)
    sy = y0 + h * (0.12, 0.42, 0.72)[app.stripe]
    d.rectangle((x0 + 1, sy, x1 - 1, sy + h * 0.16), fill=(240, 240, 236))


def _slot_grid(rect: tuple[int, int, int, int], app: Appearance) -> list[tuple[float, float, float, float]]:
    """Slots of a lane, back (top) row first, left to right: where units 0, 1, 2, ... stand."""
    x0, y0, x1, y1 = rect
    lane_w, lane_h = max(1, x1 - x0), max(1, y1 - y0)
    # Footprint about 1/4 of the band's height; wide products get wider slots.
    sh = max(6.0, lane_h / 4.0)
    sw = max(6.0, min(lane_w, sh * app.aspect))
    cols = max(1, int(lane_w // sw))
    rows = max(1, int(lane_h // sh))
    sw, sh = lane_w / cols, lane_h / rows
    fw, fh = sw * app.size * 0.92, sh * app.size * 0.92
    out = []
    for r in range(rows):
        for c in range(cols):
            cx, cy = x0 + (c + 0.5) * sw, y0 + (r + 0.5) * sh
            out.append((cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2))
    return out


SKIN = ((224, 172, 140), (198, 134, 96), (141, 85, 55), (240, 200, 170), (110, 70, 45))
SLEEVE = ((40, 60, 120), (120, 30, 30), (50, 50, 50), (30, 100, 60), (200, 200, 200))


# ---------------------------------------------------------------- rendering


def render_clean(scene: SceneState, geom: ShelfGeometry) -> Image.Image:
    """The scene without lighting, noise or jitter (a Pillow image)."""
    img = Image.new("RGB", (geom.width, geom.height), BACKGROUND)
    d = ImageDraw.Draw(img)
    for roi in geom.rois().values():
        x0, y0, x1, y1 = geom.px(roi)
        d.rectangle((x0, y0, x1, y1), fill=PLATE)
        d.rectangle((x0, y1 - max(2, (y1 - y0) // 14), x1, y1), fill=FRONT_EDGE)
    # lanes: facings sharing a plate split it; a facing over two plates has a lane on each
    for f in scene.facings:
        app = appearance(f.sku)
        slots = [s for rect in geom.facing_rects(scene.facings, f) for s in _slot_grid(rect, app)]
        if not slots:
            continue
        for i in range(f.count):
            if i < len(slots):
                box = slots[i]
            else:  # more units than slots: stack them, 2 px apart
                sx0, sy0, sx1, sy1 = slots[i % len(slots)]
                off = 2 * (i // len(slots))
                box = (sx0 + off, sy0 + off, sx1 + off, sy1 + off)
            _draw_unit(d, app, box)
    for key, skus in scene.foreign.items():
        if key not in geom.rois() or not skus:
            continue
        x0, y0, x1, y1 = geom.px(geom.rois()[key])
        strip_y0 = y0 + int(0.80 * (y1 - y0))
        fh = min((y1 - strip_y0) * 0.95, (x1 - x0) / 4.2)   # room for four side by side
        # right to left at fixed places, so a new unit never moves the ones before it; a full
        # strip starts another layer over the first (half a pitch across, a little higher), so a
        # pile of misplaced units stays in the strip and never hides the facings' lanes
        pitch = fh * 1.05
        per_layer = max(1, int((x1 - x0 - 6) // pitch))
        for i, sku in enumerate(skus):
            app = appearance(sku)
            uh = fh * (0.7 + 0.3 * app.size)        # products keep their relative size here too
            fw = min(uh * app.aspect, pitch - 2)
            layer, slot = divmod(i, per_layer)
            bx = x1 - 3 - (slot + 1) * pitch + (pitch - fw) / 2 - 0.5 * pitch * (layer % 2)
            by = strip_y0 + (fh - uh) - 0.2 * fh * (layer % 2)
            _draw_unit(d, app, (bx, by, bx + fw, by + uh))
    if scene.hand is not None and scene.hand.reach > 0:
        _draw_hand(d, scene.hand, geom)
    return img


def hand_point(hand: HandView, geom: ShelfGeometry) -> tuple[float, float, float, float]:
    """(base x, base y, tip x, tip y) of the arm in pixels."""
    rois = [geom.plate_roi(hand.shelf, p) for p in hand.plates]
    x0, y0, x1, y1 = geom.px(union_roi(rois))
    tx, ty = (x0 + x1) / 2, y0 + 0.5 * (y1 - y0)
    bx, by = tx + 0.08 * geom.width * (1 if (hand.skin % 2) else -1), geom.height + 0.05 * geom.height
    r = float(np.clip(hand.reach, 0.0, 1.0))
    # outside the frame at reach 0: the tip starts below the bottom edge
    sx, sy = bx, geom.height * 1.25
    return bx, by, sx + (tx - sx) * r, sy + (ty - sy) * r


def _draw_hand(d: ImageDraw.ImageDraw, hand: HandView, geom: ShelfGeometry) -> None:
    bx, by, tx, ty = hand_point(hand, geom)
    arm_w = max(6, int(0.045 * geom.width))
    skin = SKIN[hand.skin % len(SKIN)]
    sleeve = SLEEVE[(hand.skin // len(SKIN)) % len(SLEEVE)]
    # sleeve up to 70 % of the way, skin after it
    mx, my = bx + 0.7 * (tx - bx), by + 0.7 * (ty - by)
    d.line((bx, by + arm_w, mx, my), fill=sleeve, width=arm_w)
    d.line((mx, my, tx, ty), fill=skin, width=int(arm_w * 0.8))
    hr = arm_w * 0.75
    d.ellipse((tx - hr, ty - hr, tx + hr, ty + hr), fill=skin)
    if hand.holding:
        app = appearance(hand.holding)
        band_h = geom.height / max(1, len(geom.shelves))
        fh = band_h / 4.0 * app.size * 0.92
        fw = fh * app.aspect
        _draw_unit(d, app, (tx - fw / 2, ty - fh / 2 - hr * 0.3, tx + fw / 2, ty + fh / 2 - hr * 0.3))
        # fingers over the product
        d.ellipse((tx - hr * 0.9, ty + hr * 0.1, tx + hr * 0.9, ty + hr * 0.9), fill=skin)


@dataclass(frozen=True)
class Optics:
    """Per-frame nuisances. ``gain``/``cast`` drift slowly in a real store; here they are drawn
    per frame (``light``), plus white sensor noise and an integer camera shake."""

    light: float = 0.06       # σ of the overall brightness gain
    cast: float = 0.03        # σ of each channel's gain
    noise: float = 3.0        # σ of sensor noise (grey levels)
    jitter_px: int = 2        # camera shake, ± pixels


def render_frame(scene: SceneState, geom: ShelfGeometry, rng: np.random.Generator,
                 optics: Optics = Optics()) -> np.ndarray:
    """One camera frame, (H, W, 3) uint8, deterministic for the generator's state."""
    img: np.ndarray = np.asarray(render_clean(scene, geom), dtype=np.float32)
    gain = 1.0 + optics.light * rng.standard_normal()
    cast = 1.0 + optics.cast * rng.standard_normal(3)
    img = img * (gain * cast)[None, None, :]
    if optics.noise > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * optics.noise
    j = optics.jitter_px
    if j > 0:
        dx, dy = (int(v) for v in rng.integers(-j, j + 1, 2))
        img = _shift(img, dx, dy)
    return img.clip(0, 255).astype(np.uint8)


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    if dx == 0 and dy == 0:
        return img
    h, w = img.shape[:2]
    pad: np.ndarray = np.pad(img, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    return pad[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def crop(frame: np.ndarray, roi: ROI) -> np.ndarray:
    """The pixels of a normalised ROI (at least 1×1), a view into ``frame``."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = roi
    a, b = int(np.clip(round(x0 * w), 0, w - 1)), int(np.clip(round(y0 * h), 0, h - 1))
    c, d = int(np.clip(round(x1 * w), a + 1, w)), int(np.clip(round(y1 * h), b + 1, h))
    return frame[b:d, a:c]


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 → ``size`` = (width, height), bilinear (Pillow)."""
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def align(before: np.ndarray, after: np.ndarray, max_shift: int = 4) -> tuple[int, int]:
    """(dx, dy) that best moves ``after`` onto ``before``: a shaking camera or a jittering sensor
    readout shifts whole frames by a pixel or two, which would otherwise light up every edge."""
    a = before.astype(np.float32).mean(axis=2)
    b = after.astype(np.float32).mean(axis=2)
    a -= a.mean()
    b -= b.mean()
    m = max_shift
    h, w = a.shape
    if h <= 2 * m + 4 or w <= 2 * m + 4:
        return 0, 0
    core = a[m:h - m, m:w - m]
    best, arg = None, (0, 0)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            cand = b[m + dy:h - m + dy, m + dx:w - m + dx]
            err = float(np.abs(core - cand).mean())
            if best is None or err < best:
                best, arg = err, (dx, dy)
    return arg


def changed_box(before: np.ndarray, after: np.ndarray, thresh: float = 45.0,
                margin: int = 3) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1), in ``before``'s coordinates, of what differs between two crops
    of the same plate: where a unit disappeared or appeared. The crops are aligned first (camera
    shake), each colour channel's gain is matched (lighting), then the per-pixel colour distance,
    smoothed 3×3 against sensor noise, is thresholded. None when nothing changed."""
    if before.shape != after.shape:
        return None
    dx, dy = align(before, after)
    b_shift = _shift(after.astype(np.float32), -dx, -dy)
    a = before.astype(np.float32)
    gain = (a.reshape(-1, 3).mean(0) + 1.0) / (b_shift.reshape(-1, 3).mean(0) + 1.0)
    diff = np.abs(a - b_shift * gain[None, None, :]).max(axis=2)
    k = np.pad(diff, 1, mode="edge")
    diff = sum((k[i:i + diff.shape[0], j:j + diff.shape[1]] for i in range(3) for j in range(3)),
               np.zeros_like(diff)) / 9.0
    m = 4  # the shifted-in border is made up
    diff[:m, :] = diff[-m:, :] = 0
    diff[:, :m] = diff[:, -m:] = 0
    mask = diff > thresh
    if mask.sum() < 12:
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(0, int(xs.min()) - margin), max(0, int(ys.min()) - margin),
            min(w, int(xs.max()) + 1 + margin), min(h, int(ys.max()) + 1 + margin))


def item_crop(before: np.ndarray, after: np.ndarray, took: bool, min_frac: float = 0.0) -> np.ndarray:
    """The crop the product model sees: the box that changed, cut from ``before`` when a unit was
    taken (``took``) and from ``after`` when one arrived; the whole crop when nothing changed
    visibly. A box narrower than 16 px or ``min_frac`` of the crop's shorter side (a sliver: a
    unit taken off a stack reveals the one below) is grown around its centre to that size, so the
    model sees a product rather than an edge. (``min_frac`` 0.2 pulled neighbours into the crops
    of the sim's small strays in the bench, so it is off by default.)"""
    src = before if took else after
    box = changed_box(before, after)
    if box is None:
        return src
    h, w = src.shape[:2]
    side = max(16, int(min_frac * min(h, w)))
    x0, y0, x1, y1 = box
    if x1 - x0 < side:
        cx = (x0 + x1) // 2
        x0, x1 = max(0, cx - side // 2), min(w, cx - side // 2 + side)
    if y1 - y0 < side:
        cy = (y0 + y1) // 2
        y0, y1 = max(0, cy - side // 2), min(h, cy - side // 2 + side)
    return src[y0:y1, x0:x1]


# ---------------------------------------------------------------- training data


ACTION_LABELS = ("pick", "put_back", "no_change", "swap")


def random_sku(rng: np.random.Generator) -> str:
    """A made-up 12-digit UPC-like SKU: appearance comes from the string, so any string works."""
    return "".join(str(int(v)) for v in rng.integers(0, 10, 12))


def random_scene(rng: np.random.Generator, skus: Sequence[str] | None = None,
                 width: int = WIDTH, height: int = HEIGHT,
                 geom: ShelfGeometry | None = None) -> tuple[SceneState, ShelfGeometry]:
    """A unit of 2–4 shelves × 3–6 plates (or ``geom``'s plates), each plate one or two facings
    of random SKUs."""
    if geom is None:
        n_sh = int(rng.integers(2, 5))
        n_pl = int(rng.integers(3, 7))
        plates = [(str(s + 1), p + 1) for s in range(n_sh) for p in range(n_pl)]
        geom = ShelfGeometry(plates, width, height)
    else:
        plates = [(k.split("/")[0], int(k.split("/")[1])) for k in geom.rois()]
    facings = []
    for shelf, pid in plates:
        k = 2 if rng.random() < 0.3 else 1
        for _ in range(k):
            sku = skus[int(rng.integers(len(skus)))] if skus else random_sku(rng)
            facings.append(FacingView(sku, shelf, (pid,), int(rng.integers(0, 9))))
    return SceneState(facings), geom


@dataclass
class ActionSample:
    before: np.ndarray         # crop of the moved plate before the interaction
    after: np.ndarray          # ... after it
    label: str                 # pick | put_back | no_change | swap
    sku_out: str | None        # SKU taken (pick, swap)
    sku_in: str | None         # SKU put down (put_back, swap)


def action_sample(rng: np.random.Generator, label: str | None = None,
                  skus: Sequence[str] | None = None, hand_p: float = 0.15,
                  width: int = WIDTH, height: int = HEIGHT) -> ActionSample:
    """One (before crop, after crop, label) pair cut exactly as the runtime cuts it: a full frame
    rendered before and after, each cropped by the plate's ROI. ``hand_p``: chance that the arm is
    still (partly) in view in one of the two frames, as with a late or early frame pick."""
    label = label or ACTION_LABELS[int(rng.integers(len(ACTION_LABELS)))]
    scene, geom = random_scene(rng, skus, width, height)
    # the plate that changes: one of its facings
    i = int(rng.integers(len(scene.facings)))
    f = scene.facings[i]
    if label in ("pick", "swap") and f.count == 0:
        scene.facings[i] = f = replace(f, count=int(rng.integers(1, 9)))
    before = scene.copy()
    after = scene.copy()
    key = f"{f.shelf}/{f.plates[0]}"
    sku_out = sku_in = None
    other = (skus[int(rng.integers(len(skus)))] if skus else random_sku(rng))
    if label == "pick":
        after = after.with_count(f.sku, f.shelf, f.plates[0], -1)
        sku_out = f.sku
    elif label == "put_back":
        if rng.random() < 0.3:   # a misplaced return lands in the front strip
            after.foreign.setdefault(key, []).append(other)
            sku_in = other
        else:
            after = after.with_count(f.sku, f.shelf, f.plates[0], +1)
            sku_in = f.sku
    elif label == "swap":
        after = after.with_count(f.sku, f.shelf, f.plates[0], -1)
        after.foreign.setdefault(key, []).append(other)
        sku_out, sku_in = f.sku, other
    elif label != "no_change":
        raise ValueError(f"unknown action label {label!r}; expected one of {ACTION_LABELS}")
    if rng.random() < hand_p:
        which = before if rng.random() < 0.5 else after
        which.hand = HandView(f.shelf, f.plates, float(rng.uniform(0.2, 0.7)), None, int(rng.integers(25)))
    roi = geom.plate_roi(f.shelf, f.plates[0])
    fb = render_frame(before, geom, rng)
    fa = render_frame(after, geom, rng)
    return ActionSample(crop(fb, roi).copy(), crop(fa, roi).copy(), label, sku_out, sku_in)


def product_crop(rng: np.random.Generator, sku: str, others: Sequence[str] | None = None,
                 width: int = WIDTH, height: int = HEIGHT, geom: ShelfGeometry | None = None,
                 strip_p: float = 0.3) -> np.ndarray:
    """A crop of one unit of ``sku`` cut the way the runtime cuts it for the product model: the box
    that changed when that unit was taken from a plate among other products, or (``strip_p`` of
    the time) when it was put back on a plate where it does not belong (the front strip). With
    ``geom``, on that unit's own plates (what enrolling from the unit's own camera gives)."""
    for _ in range(4):
        scene, geom = random_scene(rng, others, width, height, geom)
        i = int(rng.integers(len(scene.facings)))
        f = scene.facings[i]
        roi = geom.plate_roi(f.shelf, f.plates[0])
        if rng.random() < strip_p:
            key = f"{f.shelf}/{f.plates[0]}"
            pool = list(others) if others else [random_sku(rng) for _ in range(4)]
            scene.foreign[key] = [pool[int(rng.integers(len(pool)))] for _ in range(int(rng.integers(0, 3)))]
            after = scene.copy()
            after.foreign.setdefault(key, []).append(sku)
            b = crop(render_frame(scene, geom, rng), roi)
            a = crop(render_frame(after, geom, rng), roi)
            if changed_box(b, a) is not None:
                return item_crop(b, a, took=False).copy()
            continue
        scene.facings[i] = f = replace(f, sku=sku, count=int(rng.integers(1, 9)))
        after = scene.with_count(sku, f.shelf, f.plates[0], -1)
        b = crop(render_frame(scene, geom, rng), roi)
        a = crop(render_frame(after, geom, rng), roi)
        if changed_box(b, a) is not None:
            return item_crop(b, a, took=True).copy()
    raise RuntimeError(f"could not cut a product crop of {sku}")
