"""What every model module shares (models.py, gallery.py): the one-line error and the small maths.

Its own module so the model loader can attach a gallery and the gallery can score with the same
maths without the two importing each other.
"""
from __future__ import annotations

import numpy as np


class ModelError(Exception):
    """A model that cannot be used; ``str()`` is one line naming the file and the problem."""


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return p


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    unit: np.ndarray = x / np.maximum(n, 1e-12)
    return unit
