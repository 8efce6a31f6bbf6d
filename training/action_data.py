"""Synthetic before/after pairs for the action model, drawn by the runtime's own renderer
(``daemon/vision/render.py``: the same crops the ``sim`` camera and the fusion cut), resized the
way :class:`daemon.vision.models.ActionModel` resizes them, cached as npz."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from daemon.vision import render
from daemon.vision.models import ACTION_LABELS, resize, to_color
from training.common import OUT

log = logging.getLogger(__name__)

SIZE = 80  # the action model's input side; 2 frames × RGB = 6 channels


def pair_tensor(before: np.ndarray, after: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 size×size×6, exactly as ActionModel.prepare_pair builds it (stretch, RGB)."""
    b = resize(to_color(before, "rgb"), size, size)
    a = resize(to_color(after, "rgb"), size, size)
    return np.concatenate([b, a], axis=-1)


def build(n: int, seed: int, size: int = SIZE, labels=ACTION_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs with balanced labels (index into ``labels``), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, size, size, 6), np.uint8)
    y = np.zeros(n, np.int64)
    t0 = time.time()
    for i in range(n):
        k = i % len(labels)
        s = render.action_sample(rng, labels[k])
        X[i] = pair_tensor(s.before, s.after, size)
        y[i] = k
        if i and i % 1000 == 0:
            log.info("%d/%d pairs (%.0f s)", i, n, time.time() - t0)
    return X, y


def renderer_version() -> str:
    """Hash of render.py: a cache of pairs drawn by another renderer is never reused."""
    import hashlib

    return hashlib.sha256(Path(render.__file__).read_bytes()).hexdigest()[:10]


def cached(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    f = OUT / "cache" / f"action-{n}-{seed}-{size}-{renderer_version()}.npz"
    if f.is_file():
        with np.load(f) as z:
            return z["X"], z["y"]
    X, y = build(n, seed, size)
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(f, X=X, y=y)
    return X, y


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--size", type=int, default=SIZE)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    X, y = cached(a.n, a.seed, a.size)
    print(f"{len(X)} pairs, {Path(OUT)}")


if __name__ == "__main__":
    main()
