"""Reliability of ``confidence``: is an event published at confidence c right a fraction c of the
time? Used by the simulator bench and the semi-real bench.

Each scored event is (confidence, right): right when it matched a real event of the same type
with the same SKU and quantity; a false event (nothing real there) counts as wrong. The table
bins events by confidence; the expected calibration error (ECE) is the event-weighted mean gap
between a bin's mean confidence and its accuracy.
"""
from __future__ import annotations

from pathlib import Path

EDGES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0001)


def table(pairs: list[tuple[float, bool]]) -> dict:
    rows = []
    ece = 0.0
    n = len(pairs)
    for lo, hi in zip(EDGES, EDGES[1:]):
        b = [(c, r) for c, r in pairs if lo <= c < hi]
        if not b:
            continue
        conf = sum(c for c, _ in b) / len(b)
        acc = sum(1 for _, r in b if r) / len(b)
        ece += len(b) / n * abs(conf - acc)
        rows.append({"bin": f"{lo:.2f}-{min(hi, 1.0):.2f}", "n": len(b), "mean_confidence": round(conf, 4),
                     "accuracy": round(acc, 4)})
    hi90 = [r for c, r in pairs if c >= 0.9]
    return {"bins": rows, "ece": round(ece, 4), "n": n,
            "at_0.9": {"n": len(hi90), "accuracy": round(sum(hi90) / len(hi90), 4) if hi90 else None}}


def print_table(rel: dict, title: str) -> None:
    if not rel["n"]:
        print(f"  reliability ({title}): nothing to score (no event)")
        return
    hi = rel["at_0.9"]
    print(f"  reliability ({title}): {rel['n']} events, ECE {rel['ece']:.3f}; confidence ≥ 0.9: "
          + (f"{hi['n']} events, right {hi['accuracy']}" if hi["n"] else "no event, nothing to score"))
    print("    confidence   events  mean conf  accuracy")
    for r in rel["bins"]:
        print(f"    {r['bin']:>11}  {r['n']:6d}  {r['mean_confidence']:9.3f}  {r['accuracy']:8.3f}")


def plot(rel: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    xs = [r["mean_confidence"] for r in rel["bins"]]
    ys = [r["accuracy"] for r in rel["bins"]]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.scatter(xs, ys, s=[max(12, 4 * r["n"] ** 0.75) for r in rel["bins"]], color="tab:blue", zorder=3,
               label="bins (area ~ events)")
    ax.plot(xs, ys, color="tab:blue", lw=1)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("published confidence")
    ax.set_ylabel("fraction right")
    ax.set_title(f"{title}\nECE {rel['ece']:.3f}, n = {rel['n']}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
