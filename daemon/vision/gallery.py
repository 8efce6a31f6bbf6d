"""Enrolled product gallery: a store adds a product by photographing it, without retraining.

A gallery is a folder in the unit's state dir holding

- ``gallery.json``: ``{"schema", "backbone_sha256", "dim", "npz": "gallery-<n>.npz",
  "skus": {sku: {"count", "enrolled_at"}}, "version"}``
- ``gallery-<n>.npz``: ``embeddings`` (N×D float32, L2-normalised) and ``skus`` (N str).

Writes are atomic as a pair: the new npz gets a new name, then ``gallery.json`` is replaced
(``os.replace``) to point at it, then the old npz is removed. A crash at any point leaves the
previous gallery or the new one, never a mix. Embeddings only make sense for the backbone that
made them, so the gallery records the backbone's sha256 and refuses another backbone.

Scoring: cosine similarity of the crop's embedding with every enrolled image; per SKU the best
match (nearest neighbour, robust to one bad enrolment photo being far off); softmax over SKUs of
``similarity / temperature``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.vision.modelbase import ModelError, l2_normalise, softmax

if TYPE_CHECKING:
    from daemon.vision.models import EmbeddingModel

log = logging.getLogger(__name__)

GALLERY_SCHEMA = "gondola.gallery/1"


class GalleryError(ModelError):
    """A gallery that cannot be used (wrong backbone, corrupt files); one line naming the folder."""


class Gallery:
    def __init__(self, folder: Path, model: EmbeddingModel | None, backbone_sha256: str, dim: int):
        self.folder = Path(folder)
        self.model = model
        self.backbone_sha256 = backbone_sha256
        self.dim = dim
        self.embeddings = np.zeros((0, dim), np.float32)
        self.skus: list[str] = []
        self.meta: dict[str, dict[str, Any]] = {}
        self.version = 0

    # ---------------------------------------------------------------- open / save

    @classmethod
    def open(cls, folder: str | Path, model: EmbeddingModel) -> Gallery:
        """Open (or start, when absent) the gallery in ``folder`` for ``model``'s backbone."""
        g = cls(Path(folder), model, model.sha256, model.dim)
        g._load()
        return g

    @classmethod
    def open_raw(cls, folder: str | Path) -> Gallery:
        """Open without a model (inspection, or scoring precomputed embeddings)."""
        folder = Path(folder)
        meta = _read_json(folder)
        if meta is None:
            raise GalleryError(f"{folder}: no gallery.json")
        g = cls(folder, None, meta["backbone_sha256"], int(meta["dim"]))
        g._load()
        return g

    def _load(self) -> None:
        meta = _read_json(self.folder)
        if meta is None:
            return
        if meta.get("backbone_sha256") != self.backbone_sha256:
            raise GalleryError(
                f"{self.folder}: gallery was enrolled with backbone {str(meta.get('backbone_sha256'))[:12]}…, "
                f"the model is {self.backbone_sha256[:12]}… (re-enrol the products for the new model)")
        npz = self.folder / meta["npz"]
        try:
            with np.load(npz, allow_pickle=False) as z:
                E = z["embeddings"].astype(np.float32)
                skus = [str(s) for s in z["skus"]]
        except (OSError, ValueError, KeyError) as e:
            raise GalleryError(f"{npz}: cannot read gallery embeddings ({e})") from None
        if E.ndim != 2 or E.shape[1] != self.dim or len(skus) != len(E):
            raise GalleryError(f"{npz}: embeddings {E.shape} do not fit dim {self.dim} / {len(skus)} skus")
        self.embeddings, self.skus = E, skus
        self.meta = dict(meta.get("skus", {}))
        self.version = int(meta.get("version", 0))

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        old = _read_json(self.folder)
        self.version += 1
        name = f"gallery-{self.version}.npz"
        tmp = self.folder / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=self.embeddings.astype(np.float32), skus=np.array(self.skus, dtype=str))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.folder / name)
        meta = {"schema": GALLERY_SCHEMA, "backbone_sha256": self.backbone_sha256, "dim": self.dim,
                "npz": name, "version": self.version, "skus": self.meta}
        jtmp = self.folder / "gallery.json.tmp"
        with open(jtmp, "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        jtmp.replace(self.folder / "gallery.json")
        if old and old.get("npz") and old["npz"] != name:
            try:
                (self.folder / old["npz"]).unlink()
            except OSError:
                pass

    # ---------------------------------------------------------------- enrol

    def enroll(self, sku: str, images: Iterable[np.ndarray], *, replace: bool = False) -> int:
        """Embed ``images`` (uint8 crops of one product) and store them under ``sku``; saves.

        Returns the number of images now enrolled for ``sku``. ``replace`` drops that SKU's
        earlier images first (a new packaging design, say).
        """
        if self.model is None:
            raise GalleryError(f"{self.folder}: opened without a model; cannot embed images")
        E = [self.model.embed(img) for img in images]
        if not E:
            raise ValueError(f"no images given for {sku!r}")
        return self.add_embeddings(sku, np.stack(E), replace=replace)

    def add_embeddings(self, sku: str, E: np.ndarray, *, replace: bool = False) -> int:
        E = l2_normalise(np.atleast_2d(np.asarray(E, np.float32)))
        if E.shape[1] != self.dim:
            raise ValueError(f"embeddings of dim {E.shape[1]}, gallery dim {self.dim}")
        if replace:
            self._drop(sku)
        self.embeddings = np.concatenate([self.embeddings, E], axis=0)
        self.skus.extend([sku] * len(E))
        n = self.skus.count(sku)
        self.meta[sku] = {"count": n, "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save()
        log.info("gallery %s: %d image(s) for %s", self.folder, len(E), sku)
        return n

    def remove(self, sku: str) -> int:
        n = self._drop(sku)
        if n:
            self.save()
        return n

    def _drop(self, sku: str) -> int:
        keep = np.array([s != sku for s in self.skus], bool)
        n = int((~keep).sum())
        if n:
            self.embeddings = self.embeddings[keep]
            self.skus = [s for s in self.skus if s != sku]
            self.meta.pop(sku, None)
        return n

    # ---------------------------------------------------------------- score

    def __len__(self) -> int:
        return len(self.skus)

    @property
    def sku_list(self) -> list[str]:
        return sorted(set(self.skus))

    def similarity_matrix(self, E: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(SKUs, M×K best cosine similarity of each of M embeddings to each SKU's images)."""
        names = self.sku_list
        E = l2_normalise(np.atleast_2d(np.asarray(E, np.float32)))
        if not names:
            return names, np.zeros((len(E), 0), np.float32)
        sims = E @ self.embeddings.T
        idx = {n: i for i, n in enumerate(names)}
        col = np.array([idx[s] for s in self.skus])
        out = np.full((len(E), len(names)), -2.0, np.float32)
        for k in range(len(names)):
            out[:, k] = sims[:, col == k].max(axis=1)
        return names, out

    def similarities(self, e: np.ndarray) -> dict[str, float]:
        """Best cosine similarity per SKU (nearest enrolled image)."""
        names, S = self.similarity_matrix(np.asarray(e).reshape(1, -1))
        return {n: float(v) for n, v in zip(names, S[0])}

    def scores(self, e: np.ndarray, temperature: float = 0.05) -> dict[str, float]:
        best = self.similarities(e)
        if not best:
            return {}
        names = list(best)
        p = softmax(np.array([best[n] for n in names]) / temperature)
        return {n: float(v) for n, v in zip(names, p)}


def _read_json(folder: Path) -> dict[str, Any] | None:
    p = Path(folder) / "gallery.json"
    if not p.is_file():
        return None
    try:
        d: dict[str, Any] = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GalleryError(f"{p}: not valid JSON ({e})") from None
    if d.get("schema") != GALLERY_SCHEMA or "npz" not in d or "backbone_sha256" not in d:
        raise GalleryError(f"{p}: not a {GALLERY_SCHEMA} file")
    return d
