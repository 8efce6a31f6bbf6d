#!/usr/bin/env python3
"""docs/img/straddle.png: one straddling pick on real AiFi traces, and how it was named.

The semi-real generator (seed 1, case 10) lays a 105.5 g bag of chips over the edge of its
facing (plates 4-6 of shelf 2-5) onto plate 3, which belongs to the neighbouring facing, on top of
the real recording's own noise. The figure shows the plates around it, the facings, and the event
the pipeline published with its runners-up.

usage: .venv/bin/python bench/straddle_figure.py [--out docs/img/straddle.png]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.pipeline import Pipeline  # noqa: E402
from daemon.sensing.replay_aifi import AifiReplaySource, load_layout  # noqa: E402

SHELF, PLATES, SEED, CASE = "2-5", (2, 3, 4, 5, 6, 7), 1, 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "straddle.png")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(args.shared / "checks" / "semireal" / "generate.py"),
                        str(args.shared / "data" / "aifi-benchmark-1"), tmp + "/c", str(CASE + 1), str(SEED)],
                       check=True, stdout=subprocess.DEVNULL)
        case = Path(tmp) / "c" / f"case-{CASE:02d}"
        layout, names = load_layout(case)
        src = AifiReplaySource(case, layout, 0.0)
        pipe = Pipeline("s", "u", layout, list(src.channels), src.units, src.rate_hz, None)
        cols = [layout.plate(SHELF, p).index for p in PLATES]
        ts, xs, events = [], [], []
        src.start()
        while (b := src.read()) is not None:
            c = pipe.conditioner.process(b)
            ts.append(b.t)
            xs.append(c.grams[:, cols])
            events += pipe.detector.process(c.t, c.grams, c.available)
        t = np.concatenate(ts)
        x = np.vstack(xs)
    ev = next(e for e in events if e.shelf == SHELF)
    ident = pipe.identifier.identify(ev.shelf, ev.plates, ev.delta_g, ev.noise_g, plate_deltas=ev.plate_deltas,
                                     now=ev.t_end)
    t0 = ev.t_start - 2.0
    sel = (t >= t0) & (t <= ev.t_end + 3.0)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    ok = (t >= t0) & (t < ev.t_start)
    for k, p in enumerate(PLATES):
        ax.plot(t[sel] - t0, x[sel, k] - np.median(x[ok, k]), lw=1, label=f"plate {p}")
    ax.axvspan(ev.t_start - t0, ev.t_end - t0, color="grey", alpha=0.15, label="active → settled")
    ax.set_ylim(-140, 80)
    ax.set_xlabel("s")
    ax.set_ylabel("g (from each plate's level before)")
    ax.set_title(f"shelf {SHELF}: real AiFi traces, a 105.5 g bag lying over its facing's edge", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    facings = [f for f in layout.placements if f.shelf == SHELF and set(f.plates) & set(PLATES)]
    ds = [ev.plate_deltas.get(p, 0.0) for p in PLATES]
    ax2.bar([str(p) for p in PLATES], ds, color=["tab:red" if p in ev.plates else "lightgrey" for p in PLATES])
    for f in facings:
        lo, hi = PLATES.index(min(f.plates)) if min(f.plates) in PLATES else 0, \
            PLATES.index(max(f.plates)) if max(f.plates) in PLATES else len(PLATES) - 1
        ax2.annotate("", xy=(lo - 0.4, 12), xytext=(hi + 0.4, 12), arrowprops=dict(arrowstyle="<->", lw=0.8))
        ax2.text((lo + hi) / 2, 16, f"{f.sku[-5:]} {f.unit_weight_g:.1f} g", ha="center", fontsize=7)
    ax2.set_ylim(-90, 30)
    ax2.set_xlabel("plate (facings above)")
    ax2.set_ylabel("Δ g")
    best = ident.best
    lines = [f"→ {best.sku} ×{best.quantity} ({best.arrangement}) p={best.score:.2f}"]
    lines += [f"   {c.sku} ×{c.quantity} p={c.score:.2f}" for c in ident.candidates[:2]]
    ax2.set_title("\n".join(lines), fontsize=8, loc="left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out, "|", lines[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
