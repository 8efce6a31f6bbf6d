"""The Grocery Store Dataset (Klasson et al., WACV 2019) read in place from ../shared, and the
MobileNet v1 embeddings of its images (cached as npz, keyed by the backbone's sha256)."""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.vision.models import EmbeddingModel, load_model
from training.common import BACKBONE, OUT, coral, shared_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    path: Path
    fine: int
    coarse: int

    @property
    def group(self) -> str:
        """Fruit | Vegetables | Packages (the top folder below train/ or val/)."""
        return self.path.relative_to(dataset_dir()).parts[1]


def dataset_dir() -> Path:
    return shared_dir() / "data" / "grocery-store" / "dataset"


def read_split(split: str) -> list[Item]:
    """``train`` | ``val`` | ``test`` (test.txt when present): rows ``path, fine_id, coarse_id``."""
    d = dataset_dir()
    rows = []
    for ln in (d / f"{split}.txt").read_text().splitlines():
        if not ln.strip():
            continue
        p, f, c = (v.strip() for v in ln.split(","))
        rows.append(Item(d / p, int(f), int(c)))
    return rows


def class_names() -> list[str]:
    """Fine class names indexed by class id."""
    with open(dataset_dir() / "classes.csv", newline="") as f:
        r = csv.reader(f)
        next(r)
        rows = sorted((int(row[1]), row[0]) for row in r)
    return [n for _, n in rows]


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def views(img: np.ndarray, n_aug: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The image, its mirror, and ``n_aug - 2`` random views: a crop of 60–95 % of each side at
    a random place (the shifts, scales and aspect changes of a shelf crop), randomly mirrored,
    with a random brightness gain and a slight colour cast (a store's lighting)."""
    out = [img, img[:, ::-1]][:max(1, n_aug)]
    h, w = img.shape[:2]
    for _ in range(max(0, n_aug - 2)):
        ch, cw = int(h * rng.uniform(0.6, 0.95)), int(w * rng.uniform(0.6, 0.95))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        c = img[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        gain = rng.uniform(0.8, 1.2) * rng.uniform(0.93, 1.07, 3)
        out.append(np.clip(c.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out


def backbone() -> EmbeddingModel:
    tfl, sc = coral(BACKBONE)
    return load_model(tfl, sidecar=sc, role="embedding")  # type: ignore[return-value]


def embeddings(split: str, n_aug: int = 1, model: EmbeddingModel | None = None,
               cache: bool = True) -> tuple[np.ndarray, np.ndarray, list[Item]]:
    """(E: N×V×D float32 L2-normalised, y: N fine ids, items) for a split with V views each."""
    model = model or backbone()
    items = read_split(split)
    f = OUT / "cache" / f"emb2-{split}-{n_aug}-{model.sha256[:12]}.npz"
    if cache:
        # views 0 and 1 (photo, mirror) are the same in every cache: a cache with more views serves
        for k in sorted(int(p.stem.split("-")[2]) for p in f.parent.glob(f"emb2-{split}-*-{model.sha256[:12]}.npz")):
            if k >= n_aug and (n_aug <= 2 or k == n_aug):
                with np.load(f.parent / f"emb2-{split}-{k}-{model.sha256[:12]}.npz") as z:
                    if len(z["y"]) == len(items):
                        return z["E"][:, :n_aug], z["y"], items
    rng = np.random.default_rng(12345)
    E = np.zeros((len(items), n_aug, model.dim), np.float32)
    t0 = time.time()
    for i, it in enumerate(items):
        for j, v in enumerate(views(load_rgb(it.path), n_aug, rng)):
            E[i, j] = model.embed(v)
        if i % 500 == 0:
            log.info("%s: %d/%d images embedded (%.0f s)", split, i, len(items), time.time() - t0)
    y = np.array([it.fine for it in items])
    if cache:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, E=E, y=y)
    return E, y, items
