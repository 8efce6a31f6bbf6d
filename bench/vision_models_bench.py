#!/usr/bin/env python3
"""Vision models benchmark: the real TFLite models through the unit's inference code
(``daemon.vision.models``, ai_edge_litert), pinned to one CPU core.

    .venv/bin/python bench/vision_models_bench.py [--split val|test] [--action-n 400] [--out bench/out]

Figures:

- Coral MobileNet v2 (ImageNet, uint8): share of the Grocery Store's Banana photos (train + val)
  with ``banana`` in the top 5;
- product top-1 on a Grocery Store split (``val`` by default; ``test`` scores a held-out split
  the same way when its ``test.txt`` is present), fine classes and the Packages group, for the
  shipped linear head (``models/product/``) on the shared MobileNet v1 embedding extractor, the
  gallery / nearest-neighbour variant (every train photo and its mirror enrolled) and a 5-photo
  gallery (what a store enrols);
- model sizes; per-image latency (ms, one core, one thread, preprocessing included, JPEG
  decoding not);
- the shipped action model's accuracy on freshly rendered before/after pairs (a seed never used
  in training), with its confusion matrix.

Writes ``<out>/vision_models_bench.{json,md}``, ``product_confusion.png``,
``action_confusion.png`` and ``vision_latency.png``; prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon.vision.models import load_model  # noqa: E402
from training.common import BACKBONE, IMAGENET, MODELS, coral  # noqa: E402
from training.grocery import class_names, embeddings, load_rgb, read_split  # noqa: E402

log = logging.getLogger("vision_models_bench")
ACTION = MODELS / "action" / "action-v1.tflite"
HEAD_SIDECAR = MODELS / "product" / "grocery-mnv1.json"


def pin_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    except (AttributeError, OSError):
        return "unpinned"


def lat(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"mean": round(float(a.mean()), 2), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "n": int(len(a))}


def banana(split_items) -> dict:
    tfl, sc = coral(IMAGENET)
    m = load_model(tfl, sidecar=sc, role="product")
    hits, n, top1, ms = 0, 0, 0, []
    for it in split_items:
        img = load_rgb(it.path)
        t0 = time.perf_counter()
        top = m.top(img, 5)
        ms.append((time.perf_counter() - t0) * 1000)
        labels = [lb for lb, _ in top]
        hits += "banana" in labels
        top1 += labels[0] == "banana"
        n += 1
    return {"images": n, "top5_rate": round(hits / n, 4), "top1_rate": round(top1 / n, 4),
            "latency_ms": lat(ms), "size_bytes": tfl.stat().st_size}


def product(split: str) -> tuple[dict, np.ndarray, np.ndarray]:
    from daemon.vision.gallery import Gallery
    from daemon.vision.models import l2_normalise

    tfl, _ = coral(BACKBONE)
    m = load_model(tfl, sidecar=HEAD_SIDECAR)
    names = class_names()
    items = read_split(split)
    Ete, yte, _ = embeddings(split, 1, m)
    Etr, ytr, _ = embeddings("train", 2, m)  # each train photo and its mirror
    pk = np.array([it.group == "Packages" for it in items])
    pred_head = np.argmax(m.head.probabilities(Ete[:, 0]), 1)

    def gallery_pred(sel: np.ndarray, views: int) -> np.ndarray:
        g = Gallery(Path("/nonexistent"), None, m.sha256, m.dim)  # in memory, never saved
        g.embeddings = l2_normalise(Etr[sel, :views].reshape(-1, m.dim))
        g.skus = [names[c] for c in np.repeat(ytr[sel], views)]
        skus, S = g.similarity_matrix(Ete[:, 0])
        return np.array([names.index(skus[i]) for i in np.argmax(S, 1)])

    pred_knn = gallery_pred(np.arange(len(ytr)), 2)
    pred_5 = gallery_pred(np.concatenate([np.nonzero(ytr == c)[0][:5] for c in np.unique(ytr)]), 1)

    def acc(p, mask):
        return round(float((p[mask] == yte[mask]).mean()), 4) if mask.any() else None

    allm = np.ones(len(yte), bool)
    # latency: the whole scores() call (resize, quantize, backbone, head) on 60 photos
    ms = []
    for it in items[:: max(1, len(items) // 60)][:60]:
        img = load_rgb(it.path)
        t0 = time.perf_counter()
        m.scores(img)
        ms.append((time.perf_counter() - t0) * 1000)
    head_file = Path(m.spec.head)
    res = {
        "split": split, "images": int(len(yte)), "packages_images": int(pk.sum()),
        "classes_in_split": int(len(set(yte.tolist()))),
        "head": {"top1_fine": acc(pred_head, allm), "top1_packages": acc(pred_head, pk)},
        "gallery_all_train": {"top1_fine": acc(pred_knn, allm), "top1_packages": acc(pred_knn, pk),
                              "enrolled": int(2 * len(ytr))},
        "gallery_5_per_product": {"top1_fine": acc(pred_5, allm), "top1_packages": acc(pred_5, pk)},
        "latency_ms": lat(ms),
        "backbone_bytes": tfl.stat().st_size, "head_bytes": head_file.stat().st_size,
    }
    return res, yte, pred_head


def action(n: int, seed: int) -> dict:
    from daemon.vision import render

    m = load_model(ACTION, role="action")
    labels = list(m.labels)
    rng = np.random.default_rng(seed)
    cm = np.zeros((len(labels), len(labels)), int)
    ms = []
    for i in range(n):
        k = i % len(labels)
        s = render.action_sample(rng, labels[k])
        t0 = time.perf_counter()
        sc = m.classify(s.before, s.after)
        ms.append((time.perf_counter() - t0) * 1000)
        cm[k, labels.index(max(sc, key=sc.get))] += 1
    return {"pairs": n, "seed": seed, "accuracy": round(float(np.trace(cm) / cm.sum()), 4),
            "recall": {lb: round(float(cm[i, i] / cm[i].sum()), 4) for i, lb in enumerate(labels)},
            "confusion": cm.tolist(), "labels": labels, "latency_ms": lat(ms),
            "size_bytes": ACTION.stat().st_size, "sha256": m.sha256}


def plots(out: Path, res: dict, yte, pred) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = res["action"]
    cm = np.array(a["confusion"])
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(len(cm)), a["labels"])
    ax.set_yticks(range(len(cm)), a["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("rendered")
    ax.set_title(f"action-v1 on {a['pairs']} fresh renders: {a['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "action_confusion.png", dpi=110)
    plt.close(fig)

    names = class_names()
    present = sorted(set(yte.tolist()) | set(pred.tolist()))
    K = len(names)
    full = np.zeros((K, K), int)
    for t, p in zip(yte, pred):
        full[t, p] += 1
    sub = full[np.ix_(present, present)]
    fig, ax = plt.subplots(figsize=(12, 11))
    ax.imshow(sub, cmap="Blues")
    ax.set_xticks(range(len(present)), [names[i] for i in present], rotation=90, fontsize=5)
    ax.set_yticks(range(len(present)), [names[i] for i in present], fontsize=5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    p = res["product"]
    ax.set_title(
        f"Grocery Store {p['split']}: MobileNet v1 embedding + linear head, top-1 {p['head']['top1_fine']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(out / "product_confusion.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    rows = [("action-v1 (pair)", a["latency_ms"]), ("MobileNet v1 + head", p["latency_ms"]),
            ("MobileNet v2 ImageNet", res["banana"]["latency_ms"])]
    ax.barh([r[0] for r in rows], [r[1]["p50"] for r in rows],
            xerr=[[0] * 3, [r[1]["p95"] - r[1]["p50"] for r in rows]], color=["#4a8", "#48a", "#a84"])
    ax.set_xlabel("ms per image, one core (p50, whisker to p95)")
    fig.tight_layout()
    fig.savefig(out / "vision_latency.png", dpi=110)
    plt.close(fig)


def markdown(res: dict) -> str:
    b, p, a = res["banana"], res["product"], res["action"]
    kib = lambda n: f"{n / 1024:.0f} KiB"  # noqa: E731
    return "\n".join(
        [
            "# Vision models benchmark",
            "",
            f"One core ({res['pinned']}), one interpreter thread, runtime `{res['runtime']}`.",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| Coral MobileNet v2: `banana` in top 5, Banana photos ({b['images']}) | {b['top5_rate']:.3f} (top 1: {b['top1_rate']:.3f}) |",
            f"| product top-1, {p['split']} fine ({p['images']} photos, {p['classes_in_split']} classes), linear head | **{p['head']['top1_fine']:.3f}** |",
            f"| product top-1, {p['split']} Packages ({p['packages_images']} photos), linear head | **{p['head']['top1_packages']:.3f}** |",
            f"| product top-1, gallery of all train photos + mirrors ({p['gallery_all_train']['enrolled']}), fine / Packages | {p['gallery_all_train']['top1_fine']:.3f} / {p['gallery_all_train']['top1_packages']:.3f} |",
            f"| product top-1, gallery of 5 photos per product, fine / Packages | {p['gallery_5_per_product']['top1_fine']:.3f} / {p['gallery_5_per_product']['top1_packages']:.3f} |",
            f"| action-v1 accuracy, {a['pairs']} fresh renders (seed {a['seed']}) | **{a['accuracy']:.3f}** (chance 0.25); "
            + ", ".join(f"{k} {v:.2f}" for k, v in a["recall"].items())
            + " |",
            f"| sizes | action-v1 {kib(a['size_bytes'])} · product head {kib(p['head_bytes'])} · MobileNet v1 backbone {kib(p['backbone_bytes'])} · MobileNet v2 {kib(b['size_bytes'])} |",
            f"| latency ms p50 / p95 | action pair {a['latency_ms']['p50']} / {a['latency_ms']['p95']} · product (backbone + head) {p['latency_ms']['p50']} / {p['latency_ms']['p95']} · MobileNet v2 {b['latency_ms']['p50']} / {b['latency_ms']['p95']} |",
            "",
            "![action](action_confusion.png) ![latency](vision_latency.png)",
            "",
            "![product](product_confusion.png)",
            "",
        ]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", help="Grocery Store split to score the product model on")
    ap.add_argument("--action-n", type=int, default=400)
    ap.add_argument("--action-seed", type=int, default=777)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from daemon.vision.models import runtime_name

    res = {"pinned": pin_one_core(), "runtime": runtime_name()}
    bananas = [it for s in ("train", "val") for it in read_split(s) if "/Banana/" in str(it.path)]
    res["banana"] = banana(bananas)
    res["product"], yte, pred = product(a.split)
    res["action"] = action(a.action_n, a.action_seed)
    a.out.mkdir(parents=True, exist_ok=True)
    plots(a.out, res, yte, pred)
    md = markdown(res)
    (a.out / "vision_models_bench.md").write_text(md)
    (a.out / "vision_models_bench.json").write_text(json.dumps(res, indent=2))
    print(md)
    print(
        json.dumps(
            {
                "banana_top5": res["banana"]["top5_rate"],
                "product_top1_fine": res["product"]["head"]["top1_fine"],
                "product_top1_packages": res["product"]["head"]["top1_packages"],
                "knn_top1_fine": res["product"]["gallery_all_train"]["top1_fine"],
                "action_accuracy": res["action"]["accuracy"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
