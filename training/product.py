"""Product model for the Grocery Store Dataset: a linear softmax head (numpy) on the shared
MobileNet v1 embedding extractor, and the enrolled-gallery (nearest neighbour) variant beside it.

    python -m training.product            # embeds (cached), trains, writes models/product/ and a report

What it writes:

- ``models/product/grocery-head.npz``: W (1024×81, float16 on disk), b, labels, backbone sha256;
- ``models/product/grocery-mnv1.json``: the sidecar that turns the third-party backbone into a
  product model with that head (``load_model(backbone, sidecar=…)``; the backbone itself stays in
  ../shared and is never copied);
- ``training/out/product/report.md`` and ``confusion.png``.

Regularisation strength is chosen on the *train* split alone (each class's last 20 % of images in
file order, which are mostly other shots than the first 80 %); val is only scored, once.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from daemon.vision.gallery import Gallery
from daemon.vision.models import LinearHead, l2_normalise, softmax
from training.common import BACKBONE, MODELS, OUT, coral
from training.grocery import backbone, class_names, embeddings

log = logging.getLogger(__name__)

N_AUG = 8          # train views per image: photo, mirror, six random crops (mirror, lighting)
SCALE = 16.0       # logits = SCALE · (e · w) + b: cosine-like features need a gain to be confident


def train_head(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float, steps: int = 400,
               lr: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch Adam; returns W (D×K), b (K)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    W = rng.normal(0, 0.01, (d, n_classes)).astype(np.float32)
    b = np.zeros(n_classes, np.float32)
    Y = np.eye(n_classes, dtype=np.float32)[y]
    mW, vW, mb, vb = (np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b))
    b1, b2, eps = 0.9, 0.999, 1e-8
    Xs = X * SCALE
    for t in range(1, steps + 1):
        P = softmax(Xs @ W + b)
        G = (P - Y) / n
        gW = Xs.T @ G + l2 * W
        gb = G.sum(0)
        mW = b1 * mW + (1 - b1) * gW
        vW = b2 * vW + (1 - b2) * gW * gW
        mb = b1 * mb + (1 - b1) * gb
        vb = b2 * vb + (1 - b2) * gb * gb
        a = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        W -= a * mW / (np.sqrt(vW) + eps)
        b -= a * mb / (np.sqrt(vb) + eps)
    return W * SCALE, b  # fold the gain into W so the head is plain softmax(e·W + b)


def inner_split(y: np.ndarray, frac: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the first ``frac`` of its images (file order) vs the rest."""
    tr = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        tr[idx[: max(1, int(round(len(idx) * frac)))]] = True
    return tr, ~tr


def flat(E: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return E.reshape(-1, E.shape[-1]), np.repeat(y, E.shape[1])


def pick_l2(E: np.ndarray, y: np.ndarray, n_classes: int, grid=(1e-4, 1e-3, 1e-2)) -> tuple[float, dict]:
    tr, te = inner_split(y)
    res = {}
    for l2 in grid:
        W, b = train_head(*flat(E[tr], y[tr]), n_classes, l2)
        res[l2] = float((np.argmax(E[te, 0] @ W + b, 1) == y[te]).mean())
        log.info("l2 %.0e: inner top-1 %.3f", l2, res[l2])
    return max(res, key=res.get), res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train the Grocery Store product head")
    ap.add_argument("--l2", type=float, default=None, help="skip the inner search and use this")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = class_names()
    K = len(names)
    m = backbone()
    t0 = time.time()
    Etr, ytr, _ = embeddings("train", N_AUG, m)
    Eva, yva, items_va = embeddings("val", 2, m)
    log.info("embeddings ready (%.0f s)", time.time() - t0)
    if a.l2 is None:
        l2, search = pick_l2(Etr, ytr, K)
    else:
        l2, search = a.l2, {}
    W, b = train_head(*flat(Etr, ytr), K, l2)
    head = LinearHead(W.astype(np.float16).astype(np.float32), b, names, m.sha256)
    out = MODELS / "product"
    out.mkdir(parents=True, exist_ok=True)
    hp = out / "grocery-head.npz"
    with open(hp.with_suffix(".tmp"), "wb") as f:  # float16 on disk: half the size, same top-1
        np.savez(f, W=W.astype(np.float16), b=b.astype(np.float32), labels=np.array(names),
                 backbone_sha256=np.array(m.sha256))
    hp.with_suffix(".tmp").replace(hp)
    side = json.loads(coral(BACKBONE)[1].read_text())
    side.update(name="grocery-mnv1-head", role="embedding", head=hp.name,
                description="Grocery Store Dataset (81 fine classes) product model: the third-party MobileNet v1 "
                            "embedding extractor (../shared/models/coral/) + a linear softmax head trained by "
                            "training/product.py. Load with load_model(backbone, sidecar=this file).")
    side.pop("gallery", None)
    (out / "grocery-mnv1.json").write_text(json.dumps(side, indent=2) + "\n")

    # -- evaluation on val (scored once; the held-out test split is scored the same way by the bench)
    rep = evaluate(head, Etr, ytr, Eva, yva, items_va, names)
    rep["l2"] = l2
    rep["inner_search"] = {f"{k:.0e}": v for k, v in search.items()}
    rdir = OUT / "product"
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "metrics.json").write_text(json.dumps({k: v for k, v in rep.items() if k != "pred"}, indent=2))
    write_report(rdir, rep, yva, names, hp)
    print(json.dumps({k: v for k, v in rep.items() if k not in ("pred",)}, indent=2))


def evaluate(head: LinearHead, Etr, ytr, Eva, yva, items_va, names) -> dict:
    pk = np.array([it.group == "Packages" for it in items_va])
    pred_head = np.argmax(head.probabilities(Eva[:, 0]), 1)
    # gallery / nearest neighbour through the real Gallery code: every train view enrolled
    g = Gallery(OUT / "product" / "gallery-eval", None, head.backbone_sha256, Etr.shape[-1])
    g.embeddings = l2_normalise(Etr[:, :2].reshape(-1, Etr.shape[-1]))
    g.skus = [names[c] for c in np.repeat(ytr, 2)]
    skus, S = g.similarity_matrix(Eva[:, 0])
    pred_knn = np.array([names.index(skus[i]) for i in np.argmax(S, 1)])
    # few-shot gallery, as a store would enrol: 5 photos per product (the first five in file order)
    g5 = Gallery(OUT / "product" / "gallery-eval5", None, head.backbone_sha256, Etr.shape[-1])
    sel = np.concatenate([np.nonzero(ytr == c)[0][:5] for c in np.unique(ytr)])
    g5.embeddings = Etr[sel, 0]
    g5.skus = [names[c] for c in ytr[sel]]
    skus5, S5 = g5.similarity_matrix(Eva[:, 0])
    pred_5 = np.array([names.index(skus5[i]) for i in np.argmax(S5, 1)])

    def acc(p, mask=None):
        mask = np.ones(len(yva), bool) if mask is None else mask
        return round(float((p[mask] == yva[mask]).mean()), 4)

    return {
        "n_val": int(len(yva)), "n_val_packages": int(pk.sum()),
        "head_top1_fine": acc(pred_head), "head_top1_packages": acc(pred_head, pk),
        "knn_top1_fine": acc(pred_knn), "knn_top1_packages": acc(pred_knn, pk),
        "gallery5_top1_fine": acc(pred_5), "gallery5_top1_packages": acc(pred_5, pk),
        "pred": pred_head,
    }


def write_report(rdir: Path, rep: dict, yva, names, head_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(names)
    cm = np.zeros((K, K), int)
    for t, p in zip(yva, rep["pred"]):
        cm[t, p] += 1
    present = sorted(set(yva.tolist()) | set(rep["pred"].tolist()))
    sub = cm[np.ix_(present, present)]
    fig, ax = plt.subplots(figsize=(12, 11))
    ax.imshow(sub, cmap="Blues")
    ax.set_xticks(range(len(present)), [names[i] for i in present], rotation=90, fontsize=5)
    ax.set_yticks(range(len(present)), [names[i] for i in present], fontsize=5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Grocery Store val, MobileNet v1 embeddings + linear head: top-1 {rep['head_top1_fine']:.3f}")
    fig.tight_layout()
    fig.savefig(rdir / "confusion.png", dpi=110)
    plt.close(fig)
    lines = [
        "# Product model: Grocery Store val",
        "",
        f"Head: `{head_path.relative_to(MODELS.parent)}` ({head_path.stat().st_size / 1024:.0f} KiB) on the shared "
        "MobileNet v1 embedding extractor (3.1 MiB, uint8).",
        "",
        "| variant | top-1 fine | top-1 Packages |",
        "| --- | --- | --- |",
        f"| linear head | {rep['head_top1_fine']:.3f} | {rep['head_top1_packages']:.3f} |",
        f"| gallery, all train images (nearest neighbour) | {rep['knn_top1_fine']:.3f} "
        f"| {rep['knn_top1_packages']:.3f} |",
        f"| gallery, 5 photos per product | {rep['gallery5_top1_fine']:.3f} | {rep['gallery5_top1_packages']:.3f} |",
        "",
        f"val images {rep['n_val']} (Packages {rep['n_val_packages']}); l2 {rep['l2']:g}; "
        f"inner search on train {rep['inner_search']}",
        "",
        "![confusion](confusion.png)",
        "",
    ]
    (rdir / "report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
