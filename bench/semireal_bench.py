#!/usr/bin/env python3
"""Semi-real bench: real AiFi traces with injected, labelled events (../shared/checks/semireal).

Generates the cases with the shared generator (seeds as given), replays each through the same
pipeline as ``shelfd replay`` (in process), and prints what ``../shared/checks/semireal/run``
prints plus what it does not: the reliability of ``confidence`` (table, ECE, PNG), the misses and
false events with their candidates, and how many events were sent to review.

usage: .venv/bin/python bench/semireal_bench.py [--cases 12] [--seeds 1,2,3] [--out bench/out]
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import reliability  # noqa: E402

from aggregator.sim.score import prf_text  # noqa: E402
from daemon.pipeline import run_offline  # noqa: E402
from daemon.sensing.replay_aifi import AifiReplaySource, load_layout  # noqa: E402

SHARED = ROOT.parent / "shared"


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def replay(case: Path) -> list[dict]:
    layout, _ = load_layout(case)
    events: list[dict] = []
    run_offline(None, AifiReplaySource(case, layout, 0.0), layout, events.append)
    return events


def score_case(case: Path, events: list[dict], acc: dict, label: str) -> None:
    gt = json.loads((case / "ground_truth.json").read_text())
    tol = gt.get("time_tolerance_s", 3.0)
    preds = [p for p in events if p.get("type") in ("pick", "put_back")]
    used: set[int] = set()
    for g in gt["events"]:
        kind = g.get("kind", "real")
        acc["total"][kind] += 1
        hit = next(
            (
                i
                for i, p in enumerate(preds)
                if i not in used
                and p["type"] == g["type"]
                and str(p["sku"]) == g["sku"]
                and ts(p["t_start"]) - tol <= g["time"] <= ts(p["t_end"]) + tol
            ),
            None,
        )
        if hit is None:
            acc["missed"][kind] += 1
            acc["fn"] += 1
            acc["ufn"] += g["quantity"]
            acc["lines"].append(f"  missed {label} {kind}: {g['type']} {g['quantity']} x {g['sku']} "
                                f"shelf {g['gondola']}-{g['shelf']} plates {g['plates']}")
            continue
        used.add(hit)
        p = preds[hit]
        acc["tp"] += 1
        q = int(p["quantity"])
        acc["utp"] += min(q, g["quantity"])
        acc["ufp"] += max(0, q - g["quantity"])
        acc["ufn"] += max(0, g["quantity"] - q)
        acc["rel"].append((float(p["confidence"]), q == g["quantity"]))
    for i, p in enumerate(preds):
        if i in used:
            continue
        acc["fp"] += 1
        acc["ufp"] += int(p["quantity"])
        acc["rel"].append((float(p["confidence"]), False))
        cands = ", ".join(f"{c['sku']}x{c['quantity']} {c['score']:.2f}" for c in p.get("candidates", []))
        acc["lines"].append(f"  false  {label}: {p['type']} {p['quantity']} x {p['sku']} shelf {p['shelf']} "
                            f"{p['plate_deltas']} conf {p['confidence']:.2f} (then {cands})")
    acc["review"] += sum(1 for p in preds if p.get("review"))
    acc["events"] += len(preds)


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gen = args.shared / "checks" / "semireal" / "generate.py"
    base = args.shared / "data" / "aifi-benchmark-1"
    if not gen.exists() or not base.exists():
        print(f"semireal bench: {gen} or {base} is missing (the shared folder sits beside the checkout)")
        return 66
    args.out.mkdir(parents=True, exist_ok=True)
    acc = {"tp": 0, "fp": 0, "fn": 0, "utp": 0, "ufp": 0, "ufn": 0, "rel": [], "lines": [], "review": 0,
           "events": 0, "total": collections.Counter(), "missed": collections.Counter()}
    seeds = [int(s) for s in args.seeds.split(",") if s]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"s{seed}"
            subprocess.run([sys.executable, str(gen), str(base), str(out), str(args.cases), str(seed)],
                           check=True, stdout=subprocess.DEVNULL)
            for case in sorted(out.glob("case-*")):
                score_case(case, replay(case), acc, f"s{seed}/{case.name}")
            print(f"  seed {seed}: {args.cases} cases replayed ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    ev = prf(acc["tp"], acc["fp"], acc["fn"])
    un = prf(acc["utp"], acc["ufp"], acc["ufn"])
    rel = reliability.table(acc["rel"])
    print(f"Semi-real bench: seeds {seeds}, {args.cases} cases each, "
          f"{sum(acc['total'].values())} labelled events")
    for line in acc["lines"]:
        print(line)
    print(
        "  missed / total by kind:", ", ".join(f"{k} {acc['missed'][k]}/{n}" for k, n in sorted(acc["total"].items()))
    )
    print(f"  events {prf_text(ev['tp'], ev['fp'], ev['fn'], 4)}   units {prf_text(un['tp'], un['fp'], un['fn'], 4)}"
          f"   sent to review {acc['review']}/{acc['events']}")
    reliability.print_table(rel, "semi-real")
    png = args.out / "semireal_reliability.png"
    reliability.plot(rel, png, f"semi-real, seeds {','.join(map(str, seeds))}")
    print(f"  plot: {png}")
    print(json.dumps({"bench": "semireal", "seeds": seeds, "events": ev, "units": un,
                      "missed_by_kind": dict(acc["missed"]), "reliability": rel, "review": acc["review"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
