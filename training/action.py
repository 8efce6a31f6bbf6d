"""Train, quantize (int8) and evaluate the action model: before/after crops → pick / put_back /
no_change / swap.

    python -m training.action                     # data (cached) → train → int8 → report
    python -m training.action --n 12000 --seed 2 --size 80 --epochs 24   # the defaults: action-v1

Data: ``training/action_data.py`` renders pairs with the runtime's own renderer. The network is
deliberately tiny (≈ 49 k parameters, 57 KiB int8) because it runs on a Raspberry Pi's CPU
beside the weight pipeline: the two 80×80 RGB frames and their difference go through four
stride-2 convolutions, global average and max pooling and one dense layer. Augmentation: mirror
left/right (a plate reads the same mirrored), and play the pair backwards, which turns a pick
into a put-back and vice versa (a swap is not reversed: its backwards version is no render of a
swap). TensorFlow's TFLiteConverter quantizes to full int8 with a representative dataset.

Writes ``models/action/action-v1.tflite`` + sidecar and ``training/out/action/`` (report.md,
confusion.png, metrics.json). The evaluation runs the written .tflite through
``daemon.vision.models.ActionModel`` (ai_edge_litert) on freshly rendered pairs (another seed),
i.e. exactly the code path the unit uses.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from daemon.vision.models import ACTION_LABELS, load_model, write_sidecar
from training.action_data import SIZE, cached
from training.common import MODELS, OUT

log = logging.getLogger(__name__)

LABELS = list(ACTION_LABELS)  # pick, put_back, no_change, swap
REVERSED = {0: 1, 1: 0, 2: 2}  # pick ↔ put_back when the pair is played backwards


def augment(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = X.copy()
    y = y.copy()
    flip = rng.random(len(X)) < 0.5
    X[flip] = X[flip, :, ::-1]
    rev = (rng.random(len(X)) < 0.5) & (y != LABELS.index("swap"))
    X[rev] = np.concatenate([X[rev, ..., 3:], X[rev, ..., :3]], axis=-1)
    y[rev] = np.vectorize(REVERSED.get)(y[rev]) if rev.any() else y[rev]
    return X, y


def normalise(X: np.ndarray) -> np.ndarray:
    return (X.astype(np.float32) - 127.5) / 127.5  # the sidecar's mean/std


def build_net(size: int = SIZE):
    from tensorflow import keras
    from tensorflow.keras import layers

    inp = keras.Input((size, size, 6), name="before_after")
    before, after = inp[..., :3], inp[..., 3:]
    x = layers.Concatenate()([before, after, layers.Subtract()([after, before])])
    for ch in (16, 32, 48, 64):
        x = layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(inp, out, name="action_v1")


def train(X: np.ndarray, y: np.ndarray, epochs: int, seed: int):
    import tensorflow as tf
    from tensorflow import keras

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    n_val = len(X) // 10
    Xv, yv = normalise(X[:n_val]), y[:n_val]
    Xt, yt = X[n_val:], y[n_val:]
    net = build_net(X.shape[1])
    steps = epochs * int(np.ceil(len(Xt) / 64))
    lr = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    net.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    for ep in range(epochs):
        Xa, ya = augment(Xt, yt, rng)
        h = net.fit(normalise(Xa), ya, batch_size=64, epochs=1, verbose=0, shuffle=True)
        va = net.evaluate(Xv, yv, verbose=0)
        log.info("epoch %d/%d: loss %.3f acc %.3f | val loss %.3f acc %.3f", ep + 1, epochs,
                 h.history["loss"][0], h.history["accuracy"][0], va[0], va[1])
    return net, float(va[1])


def quantize(net, X: np.ndarray, path: Path) -> None:
    import tensorflow as tf

    rep = normalise(X[:300])

    def representative():
        for i in range(len(rep)):
            yield [rep[i:i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(net)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    data = conv.convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tflite.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def sidecar_for(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    q = it.get_input_details()[0]["quantization"]
    size = int(it.get_input_details()[0]["shape"][1])
    return {
        "name": "action-v1", "role": "action",
        "description": "Gondola's default action model: before/after crops of the moved plate(s) → "
                       "pick / put_back / no_change / swap. Trained on synthetic renders by training/action.py.",
        "input": {"shape": [1, size, size, 6], "dtype": "int8", "color": "rgb", "frames": "before_after",
                  "resize": "stretch", "normalization": {"mean": [127.5], "std": [127.5]},
                  "quantization": {"scale": float(q[0]), "zero_point": int(q[1])}},
        "output": {"kind": "logits"},
        "labels": LABELS,
        "trained_by": "python -m training.action",
    }


def evaluate(path: Path, n: int, seed: int) -> dict:
    """Fresh renders (``seed`` differs from training's) through the real ActionModel."""
    from daemon.vision import render

    m = load_model(path, role="action")
    rng = np.random.default_rng(seed)
    y, p = [], []
    for i in range(n):
        k = i % len(LABELS)
        s = render.action_sample(rng, LABELS[k])
        sc = m.classify(s.before, s.after)
        y.append(k)
        p.append(LABELS.index(max(sc, key=sc.get)))
    y, p = np.array(y), np.array(p)
    cm = np.zeros((len(LABELS), len(LABELS)), int)
    for t, q in zip(y, p):
        cm[t, q] += 1
    return {"n": n, "seed": seed, "accuracy": round(float((y == p).mean()), 4),
            "recall": {lb: round(float(cm[i, i] / max(1, cm[i].sum())), 4) for i, lb in enumerate(LABELS)},
            "confusion": cm.tolist(), "latency_ms_mean": round(m.stats.mean_ms, 3),
            "size_bytes": path.stat().st_size, "sha256": m.sha256}


def report(rdir: Path, ev: dict, extra: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rdir.mkdir(parents=True, exist_ok=True)
    cm = np.array(ev["confusion"])
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="black" if cm[i, j] < cm.max() / 2 else "white"
            )
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("rendered")
    ax.set_title(f"action-v1 (int8) on {ev['n']} fresh renders: {ev['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(rdir / "confusion.png", dpi=110)
    plt.close(fig)
    (rdir / "metrics.json").write_text(json.dumps({**ev, **extra}, indent=2))
    rec = " · ".join(f"{k} {v:.3f}" for k, v in ev["recall"].items())
    (rdir / "report.md").write_text("\n".join([
        "# Action model action-v1", "",
        f"int8 TFLite, {ev['size_bytes'] / 1024:.0f} KiB, sha256 `{ev['sha256'][:16]}…`; "
        f"{extra['train_pairs']} training pairs, {extra['epochs']} epochs, {extra['train_s']:.0f} s training here.", "",
        f"Accuracy on {ev['n']} freshly rendered pairs (seed {ev['seed']}, never trained on), through "
        f"`ActionModel.classify` (ai_edge_litert): **{ev['accuracy']:.3f}** (chance 0.25); recall {rec}; "
        f"float Keras model on its own validation pairs {extra['keras_val_acc']:.3f}; "
        f"mean invoke {ev['latency_ms_mean']:.2f} ms.", "",
        "![confusion](confusion.png)", ""]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train the action model")
    ap.add_argument("--n", type=int, default=12000, help="rendered training pairs")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--size", type=int, default=SIZE, help="input side in pixels")
    ap.add_argument("--eval-n", type=int, default=800)
    ap.add_argument("--out", type=Path, default=MODELS / "action" / "action-v1.tflite")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    X, y = cached(a.n, a.seed, a.size)
    t0 = time.time()
    net, val_acc = train(X, y, a.epochs, a.seed)
    train_s = time.time() - t0
    quantize(net, X, a.out)
    write_sidecar(a.out, sidecar_for(a.out))
    ev = evaluate(a.out, a.eval_n, seed=1000 + a.seed)
    report(OUT / "action", ev, {"train_pairs": len(X), "epochs": a.epochs, "train_s": train_s,
                                "keras_val_acc": val_acc})
    print(json.dumps({k: v for k, v in ev.items() if k != "confusion"}, indent=2))


if __name__ == "__main__":
    main()
