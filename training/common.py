"""Paths and small helpers shared by the training scripts and the vision benchmark."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "training" / "out"          # caches and reports (git-ignored)
MODELS = ROOT / "models"


def shared_dir() -> Path:
    """``../shared`` beside the project root, or $GONDOLA_SHARED."""
    env = os.environ.get("GONDOLA_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


def coral(name: str) -> tuple[Path, Path]:
    """(third-party .tflite in shared/, the project's sidecar for it in models/coral/)."""
    return shared_dir() / "models" / "coral" / f"{name}.tflite", MODELS / "coral" / f"{name}.json"


BACKBONE = "mobilenet_v1_1.0_224_quant_embedding_extractor"
IMAGENET = "mobilenet_v2_1.0_224_quant"
