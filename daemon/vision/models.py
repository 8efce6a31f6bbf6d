"""TFLite models on the shelf unit: loading, checking against a sidecar, and inference.

Every model is a ``.tflite`` file with a JSON *sidecar* beside it (``action-v1.tflite`` →
``action-v1.json``) that says what the model is for and how to feed it::

    {
      "schema": "gondola.model/1",
      "name": "action-v1",
      "role": "action",                      # action | product | embedding
      "sha256": "…",                         # of the .tflite; events carry it
      "input": {"shape": [1, 64, 64, 6], "dtype": "int8",
                "color": "rgb",              # rgb | gray
                "frames": "before_after",    # action: before and after stacked as channels
                "resize": "stretch",         # stretch | center_crop
                "normalization": {"mean": [127.5], "std": [127.5]},
                "quantization": {"scale": 0.0078, "zero_point": 0}},
      "output": {"kind": "logits"},          # logits | probabilities | embedding
      "labels": ["pick", "put_back", "no_change", "swap"],   # or "labels_file": "labels.txt"
      "gallery": "vision/gallery",           # embedding only: relative to the unit's state_dir
      "head": "head.npz",                    # embedding only, optional: linear softmax head
      "temperature": 0.05                    # embedding only: cosine similarity → softmax
    }

Pixels (0..255) are normalised as ``(x - mean) / std``; an integer input is then quantized with
the model's own scale and zero point (the sidecar's copy is checked against the model). Images
are ``H×W×3`` RGB or ``H×W`` gray ``uint8`` arrays; resizing uses Pillow only (no OpenCV), so the
unit's runtime stays light.

The interpreter comes from ``ai_edge_litert`` (maintained, numpy 2, aarch64 wheels) and falls
back to ``tflite_runtime`` where only that is installed. Interpreters are not thread safe, so
each model serialises its invocations with a lock.

Errors are :class:`ModelError` with one line naming the file and what was expected, so
``shelfd check`` can print it as a config problem.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.vision.gallery import Gallery

# re-exported: callers (calibration, training, benches) know them as daemon.vision.models.X
from daemon.vision.modelbase import ModelError as ModelError
from daemon.vision.modelbase import l2_normalise as l2_normalise
from daemon.vision.modelbase import softmax as softmax

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = "gondola.model/1"
ROLES = ("action", "product", "embedding")
ACTION_LABELS = ("pick", "put_back", "no_change", "swap")


def models_dir() -> Path:
    """The shipped models: the checkout's top-level ``models/`` (editable install, ``make``), else
    ``<prefix>/share/gondola/models`` where a regular install (the unit's install.sh) puts them."""
    here = Path(__file__).resolve().parents[2] / "models"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "gondola" / "models"


# The project's own default action model (trained by ``python -m training.action``); a config may
# name any other file instead.
DEFAULT_ACTION_MODEL = models_dir() / "action" / "action-v1.tflite"
_INT_DTYPES: dict[str, type[np.integer[Any]]] = {"uint8": np.uint8, "int8": np.int8}
_DTYPES: dict[str, type[np.generic]] = {**_INT_DTYPES, "float32": np.float32}


# ---------------------------------------------------------------- runtime


def _interpreter_class() -> Any:
    """ai_edge_litert first (the maintained package), tflite_runtime as the fallback; None when
    neither is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        return None


def runtime_name() -> str | None:
    cls = _interpreter_class()
    return None if cls is None else cls.__module__.split(".")[0]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


# ---------------------------------------------------------------- sidecar


@dataclass(frozen=True)
class ModelSpec:
    """The sidecar, parsed and checked for shape (not yet against the model)."""

    name: str
    role: str
    sha256: str | None
    shape: tuple[int, ...]
    dtype: str
    color: str = "rgb"
    frames: str = "single"
    resize: str = "stretch"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    quant: tuple[float, int] | None = None
    output_kind: str = "probabilities"
    labels: tuple[str, ...] = ()
    gallery: str | None = None
    head: str | None = None
    temperature: float = 0.05
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def channels(self) -> int:
        return self.shape[3]


def _fail(path: Path, msg: str) -> ModelError:
    return ModelError(f"{path}: {msg}")


def read_sidecar(path: str | Path, sidecar: str | Path | None = None) -> ModelSpec:
    """Parse ``<model>.json`` (or ``sidecar`` when given, for models in read-only folders such as
    third-party ones); raises ModelError naming the sidecar and the bad key. Relative file names
    in it (``labels_file``, ``head``) are looked up beside the sidecar, then beside the model."""
    path = Path(path)
    sc = Path(sidecar) if sidecar is not None else sidecar_path(path)
    if not sc.is_file():
        raise _fail(sc, f"sidecar missing (expected JSON beside {path.name} with role, input, labels, sha256)")
    try:
        d = json.loads(sc.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(sc, f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise _fail(sc, "must be a JSON object")
    if d.get("schema", SIDECAR_SCHEMA) != SIDECAR_SCHEMA:
        raise _fail(sc, f"schema: expected {SIDECAR_SCHEMA!r}, got {d.get('schema')!r}")
    role = d.get("role")
    if role not in ROLES:
        raise _fail(sc, f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    inp = d.get("input")
    if not isinstance(inp, dict):
        raise _fail(sc, "input: missing (expected {shape, dtype, ...})")
    shape = inp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise _fail(sc, f"input.shape: expected [1, H, W, C] of positive integers, got {shape!r}")
    dtype = inp.get("dtype")
    if dtype not in _DTYPES:
        raise _fail(sc, f"input.dtype: must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    color = inp.get("color", "rgb")
    if color not in ("rgb", "gray"):
        raise _fail(sc, f"input.color: must be rgb or gray, got {color!r}")
    frames = inp.get("frames", "before_after" if role == "action" else "single")
    if frames not in ("single", "before_after"):
        raise _fail(sc, f"input.frames: must be single or before_after, got {frames!r}")
    per_frame = 1 if color == "gray" else 3
    want_c = per_frame * (2 if frames == "before_after" else 1)
    if shape[3] != want_c:
        raise _fail(sc, f"input.shape: {frames} {color} frames need {want_c} channels, got {shape[3]}")
    resize = inp.get("resize", "stretch")
    if resize not in ("stretch", "center_crop"):
        raise _fail(sc, f"input.resize: must be stretch or center_crop, got {resize!r}")
    norm = inp.get("normalization", {"mean": [0.0], "std": [1.0]})
    try:
        mean = tuple(float(v) for v in norm["mean"])
        std = tuple(float(v) for v in norm["std"])
        assert len(mean) in (1, per_frame) and len(std) in (1, per_frame) and all(s > 0 for s in std)
    except Exception:  # noqa: BLE001 - any malformed entry gets the same one-line error
        raise _fail(
            sc, f"input.normalization: expected {{mean: [..], std: [..>0]}} with 1 or {per_frame} values, got {norm!r}"
        ) from None
    quant = None
    if "quantization" in inp and inp["quantization"] is not None:
        q = inp["quantization"]
        try:
            quant = (float(q["scale"]), int(q["zero_point"]))
        except Exception:  # noqa: BLE001 - any malformed entry gets the same one-line error
            raise _fail(sc, f"input.quantization: expected {{scale, zero_point}}, got {q!r}") from None
    out = d.get("output", {})
    kind = out.get("kind", "embedding" if role == "embedding" else "probabilities")
    if kind not in ("logits", "probabilities", "embedding"):
        raise _fail(sc, f"output.kind: must be logits, probabilities or embedding, got {kind!r}")
    labels: list[str] = []
    if "labels_file" in d:
        lf = _beside(sc, path, d["labels_file"])
        try:
            labels = [ln.strip() for ln in lf.read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise _fail(sc, f"labels_file: cannot read {lf} ({e.strerror})") from None
    elif "labels" in d:
        labels = d["labels"]
        if not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            raise _fail(sc, "labels: expected a list of strings")
    if role in ("action", "product") and not labels:
        raise _fail(sc, f"labels: a {role} model needs labels (or labels_file)")
    if role == "action":
        unknown = [lb for lb in labels if lb not in ACTION_LABELS]
        if unknown:
            raise _fail(sc, f"labels: action labels must be among {', '.join(ACTION_LABELS)}, got {unknown}")
    sha = d.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise _fail(sc, f"sha256: expected 64 hex digits, got {sha!r}")
    temperature = float(d.get("temperature", 0.05))
    if temperature <= 0:
        raise _fail(sc, f"temperature: must be > 0, got {temperature}")
    return ModelSpec(
        name=str(d.get("name", path.stem)), role=role, sha256=sha, shape=tuple(shape), dtype=dtype,
        color=color, frames=frames, resize=resize, mean=mean, std=std, quant=quant,
        output_kind=kind, labels=tuple(labels), gallery=d.get("gallery"),
        head=str(_beside(sc, path, d["head"])) if d.get("head") else None,
        temperature=temperature, raw=d,
    )


def _beside(sidecar: Path, model: Path, name: str) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    first = sidecar.parent / p
    return first if first.exists() else model.parent / p


def write_sidecar(path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write ``<model>.json`` with the .tflite's current sha256 filled in (used by training)."""
    path = Path(path)
    d = {"schema": SIDECAR_SCHEMA, **sidecar, "sha256": file_sha256(path)}
    sc = sidecar_path(path)
    tmp = sc.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n")
    tmp.replace(sc)
    return sc


# ---------------------------------------------------------------- images


def to_color(img: np.ndarray, color: str) -> np.ndarray:
    """uint8 H×W×3 (RGB) or H×W(×1) gray → the model's colour layout (H×W×3 or H×W×1)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img[..., None] if color == "gray" else np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H×W, H×W×1 or H×W×3, got shape {img.shape}")
    if color == "gray":
        # ITU-R 601 luma, the same weights as Pillow's convert("L")
        g = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
        return np.clip(np.rint(g), 0, 255).astype(np.uint8)[..., None]
    return img


def center_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y:y + s, x:x + s]


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a uint8 H×W×C array with Pillow."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    from PIL import Image  # Pillow is the only image library the unit needs

    c = img.shape[2]
    src = img[..., 0] if c == 1 else img
    out = np.asarray(Image.fromarray(src).resize((width, height), Image.Resampling.BILINEAR))
    return out[..., None] if c == 1 else out


def prepare_image(img: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One frame → uint8 H×W×C at the model's size and colour layout."""
    x = to_color(img, spec.color)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"empty image {x.shape}")
    if spec.resize == "center_crop":
        x = center_square(x)
    return resize(x, spec.height, spec.width)


# ---------------------------------------------------------------- the model


@dataclass
class _Stats:
    count: int = 0
    total_ms: float = 0.0
    last_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.last_ms = ms

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0


class Model:
    """A loaded, checked TFLite model; subclasses add the role's API."""

    role: str = ""

    def __init__(self, path: Path, spec: ModelSpec, interpreter: Any, sha256: str):
        self.path = path
        self.spec = spec
        self.sha256 = sha256
        self._it = interpreter
        self._lock = threading.Lock()
        self._in = interpreter.get_input_details()[0]
        self._out = interpreter.get_output_details()[0]
        q = self._in.get("quantization", (0.0, 0))
        self._in_scale, self._in_zp = float(q[0]), int(q[1])
        q = self._out.get("quantization", (0.0, 0))
        self._out_scale, self._out_zp = float(q[0]), int(q[1])
        self._mean = np.asarray(spec.mean, np.float32)
        self._std = np.asarray(spec.std, np.float32)
        self.stats = _Stats()

    # -- identity (for events and health)
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.name, "role": self.spec.role, "sha256": self.sha256}

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    # -- tensors
    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (…×C, C a multiple of the per-frame mean/std) → the model's input dtype."""
        c = pixels.shape[-1]
        reps = c // len(self._mean) if c % len(self._mean) == 0 else 1
        mean = np.tile(self._mean, reps) if len(self._mean) > 1 else self._mean
        std = np.tile(self._std, reps) if len(self._std) > 1 else self._std
        x = (pixels.astype(np.float32) - mean) / std
        dt = _INT_DTYPES.get(self.spec.dtype)
        if dt is None:  # float32
            return x
        info = np.iinfo(dt)
        q: np.ndarray = np.clip(np.rint(x / self._in_scale + self._in_zp), info.min, info.max)
        return q.astype(dt)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run one prepared input tensor (shape = the model's input); returns float32 output."""
        t0 = time.perf_counter()
        with self._lock:
            self._it.set_tensor(self._in["index"], tensor.reshape(self._in["shape"]))
            self._it.invoke()
            raw: np.ndarray = self._it.get_tensor(self._out["index"]).copy()
        self.stats.add((time.perf_counter() - t0) * 1000.0)
        if raw.dtype != np.float32:
            scale = self._out_scale or 1.0
            return ((raw.astype(np.float32) - self._out_zp) * scale).reshape(-1)
        return raw.reshape(-1)

    def run_image(self, img: np.ndarray) -> np.ndarray:
        return self.invoke(self.quantize_input(prepare_image(img, self.spec))[None])

    def _probabilities(self, out: np.ndarray) -> np.ndarray:
        if self.spec.output_kind == "logits":
            return softmax(out)
        s = float(out.sum())
        return out / s if s > 0 else np.full_like(out, 1.0 / len(out))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.name} {self.path} sha256={self.sha256[:12]}>"


class ActionModel(Model):
    """Before/after crops of the moved plates → pick / put_back / no_change (/ swap)."""

    role = "action"

    def prepare_pair(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        b = prepare_image(before, self.spec)
        a = prepare_image(after, self.spec)
        return np.concatenate([b, a], axis=-1)

    def classify(self, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
        p = self._probabilities(self.invoke(self.quantize_input(self.prepare_pair(before, after))[None]))
        return {lb: float(v) for lb, v in zip(self.spec.labels, p)}


class ProductModel(Model):
    """A crop of the item → {sku: probability}; this class: a classifier with labels."""

    role = "product"

    def scores(self, crop: np.ndarray) -> dict[str, float]:
        p = self._probabilities(self.run_image(crop))
        return {lb: float(v) for lb, v in zip(self.spec.labels, p)}

    def top(self, crop: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        s = self.scores(crop)
        return sorted(s.items(), key=lambda kv: -kv[1])[:k]


class EmbeddingModel(ProductModel):
    """A backbone giving an L2-normalised embedding; scores come from a linear head (sidecar
    ``head``) or from an enrolled :class:`~daemon.vision.gallery.Gallery` (cosine similarity →
    softmax with the sidecar's ``temperature``)."""

    role = "embedding"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gallery: Gallery | None = None  # set by attach_gallery / load_model(state_dir=…)
        self.head: LinearHead | None = None

    @property
    def dim(self) -> int:
        return int(np.prod(self._out["shape"]))

    def embed(self, crop: np.ndarray) -> np.ndarray:
        return l2_normalise(self.run_image(crop))

    def attach_gallery(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def scores_for_embedding(self, e: np.ndarray) -> dict[str, float]:
        if self.head is not None:
            return self.head.scores(e)
        if self.gallery is not None:
            return self.gallery.scores(e, temperature=self.spec.temperature)
        return {}

    def scores(self, crop: np.ndarray) -> dict[str, float]:
        """{} when neither a head nor a non-empty gallery is attached (nothing enrolled yet)."""
        if self.head is None and (self.gallery is None or len(self.gallery) == 0):
            return {}
        return self.scores_for_embedding(self.embed(crop))


# ---------------------------------------------------------------- linear head (npz)


class LinearHead:
    """softmax(W·e + b) over SKUs, applied in numpy after an embedding backbone.

    Stored as an npz with ``W`` (D×K float32), ``b`` (K), ``labels`` (K str) and
    ``backbone_sha256`` so a head is never applied to embeddings of another backbone.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, labels: Sequence[str], backbone_sha256: str = ""):
        self.W = np.asarray(W, np.float32)
        self.b = np.asarray(b, np.float32)
        self.labels = tuple(str(v) for v in labels)
        self.backbone_sha256 = backbone_sha256
        if self.W.shape != (self.W.shape[0], len(self.labels)) or self.b.shape != (len(self.labels),):
            raise ValueError(f"head shapes W {self.W.shape} b {self.b.shape} do not fit {len(self.labels)} labels")

    def probabilities(self, E: np.ndarray) -> np.ndarray:
        return softmax(np.atleast_2d(E) @ self.W + self.b, axis=-1)

    def scores(self, e: np.ndarray) -> dict[str, float]:
        p = self.probabilities(e)[0]
        return {lb: float(v) for lb, v in zip(self.labels, p)}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f, W=self.W, b=self.b, labels=np.array(self.labels), backbone_sha256=np.array(self.backbone_sha256)
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> LinearHead:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["W"], z["b"], [str(v) for v in z["labels"]], str(z["backbone_sha256"]))


# ---------------------------------------------------------------- loading


_CLASSES = {"action": ActionModel, "product": ProductModel, "embedding": EmbeddingModel}


def load_model(path: str | Path, *, role: str | None = None, state_dir: str | Path | None = None,
               sidecar: str | Path | None = None, num_threads: int = 1, check_hash: bool = True) -> Model:
    """Load ``path`` and its sidecar, check them against each other, return the role's class.

    Raises :class:`ModelError` (one line: file and problem) for a missing file, a missing or bad
    sidecar, a corrupt flatbuffer, a hash mismatch, an input shape/dtype/quantization that differs
    from the sidecar, or labels that do not fit the output. With ``state_dir``, an embedding
    model gets its gallery (sidecar ``gallery``, relative to ``state_dir``) attached.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "model file not found (expected a .tflite with a .json sidecar beside it)")
    spec = read_sidecar(path, sidecar)
    if role is not None and spec.role != role:
        raise _fail(path, f"sidecar role is {spec.role!r}, expected {role!r}")
    sha = file_sha256(path)
    if check_hash and spec.sha256 and spec.sha256 != sha:
        raise _fail(
            path,
            f"sha256 {sha[:12]}… does not match the sidecar's {spec.sha256[:12]}… (file replaced without its sidecar?)",
        )
    Interpreter = _interpreter_class()
    if Interpreter is None:
        raise _fail(path, "no TFLite runtime installed (pip install ai-edge-litert, or tflite-runtime)")
    data = path.read_bytes()
    # A TFLite flatbuffer carries the identifier "TFL3" at bytes 4..8; checking it first gives a
    # clear message instead of whatever the runtime says about random bytes.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise _fail(path, "not a TFLite flatbuffer (no TFL3 identifier; truncated or corrupt file?)")
    try:
        it = Interpreter(model_content=data, num_threads=num_threads)
        it.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - the runtimes raise ValueError/RuntimeError with long texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(path, f"corrupt TFLite flatbuffer ({first})") from None
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) < 1:
        raise _fail(path, f"expected 1 input and at least 1 output, model has {len(ins)} and {len(outs)}")
    got_shape = tuple(int(v) for v in ins[0]["shape"])
    if got_shape != spec.shape:
        raise _fail(path, f"input shape {list(got_shape)} but the sidecar expects {list(spec.shape)}")
    got_dtype = np.dtype(ins[0]["dtype"]).name
    if got_dtype != spec.dtype:
        raise _fail(path, f"input dtype {got_dtype} but the sidecar expects {spec.dtype}")
    scale, zp = ins[0].get("quantization", (0.0, 0))
    if spec.dtype != "float32":
        if not scale:
            raise _fail(path, f"input is {got_dtype} but has no quantization parameters")
        if spec.quant is not None and (abs(spec.quant[0] - scale) > 1e-6 * max(1.0, abs(scale)) or spec.quant[1] != zp):
            raise _fail(path, f"input quantization (scale {scale:.6g}, zero point {zp}) differs from the sidecar's "
                              f"(scale {spec.quant[0]:.6g}, zero point {spec.quant[1]})")
    out_n = int(np.prod(outs[0]["shape"]))
    if spec.labels and spec.role in ("action", "product") and out_n != len(spec.labels):
        raise _fail(path, f"output has {out_n} values but the sidecar lists {len(spec.labels)} labels")
    model = _CLASSES[spec.role](path, spec, it, sha)
    if isinstance(model, EmbeddingModel):
        if spec.head:
            hp = Path(spec.head)
            try:
                head = LinearHead.load(hp)
            except (OSError, ValueError, KeyError) as e:
                raise _fail(hp, f"cannot load linear head ({e})") from None
            if head.W.shape[0] != model.dim:
                raise _fail(hp, f"head expects {head.W.shape[0]}-d embeddings, backbone gives {model.dim}")
            if head.backbone_sha256 and head.backbone_sha256 != sha:
                raise _fail(hp, f"head was trained on backbone {head.backbone_sha256[:12]}…, not {sha[:12]}…")
            model.head = head
        if state_dir is not None and spec.gallery:
            model.attach_gallery(Gallery.open(Path(state_dir) / spec.gallery, model))
    log.info("model %s (%s) loaded from %s, sha256 %s…", spec.name, spec.role, path, sha[:12])
    return model


def validate_model(path: str | Path, role: str | None = None, *, sidecar: str | Path | None = None,
                   state_dir: str | Path | None = None) -> list[str]:
    """Problems with a model file, one line each ([] when it loads and fits ``role``). With
    ``state_dir``, an embedding model's gallery is opened too (wrong backbone, corrupt files)."""
    try:
        load_model(path, role=role, sidecar=sidecar, state_dir=state_dir)
    except ModelError as e:
        return [str(e)]
    return []
