#!/usr/bin/env python3
"""Learned unit weights: how many events until a unit whose catalogue weights are 6 % off names
products as well as one that knows the true weights?

The simulator bench's unit (AIM3S products, real weighings' spread) runs once; its samples feed
three pipelines side by side:

- ``true``: the planogram's true unit weights (weighed entries);
- ``learning``: every SKU's catalogue weight 6 % off (alternately high and low), as a catalogue
  value (trusted to ~3 %), learning from confident events (the product's behaviour);
- ``frozen``: the same wrong catalogue, learning switched off.

Prints item accuracy (right SKU and quantity among detected events) per block of events, the
mean absolute error of the learned weights against the truth as it shrinks, and the first block
from which ``learning`` stays within one event per block of ``true``.

usage: .venv/bin/python bench/learning_bench.py [--events 900] [--seed 3] [--offset 0.06] [--block 100]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sim_bench  # noqa: E402

from daemon.layout import Layout  # noqa: E402
from daemon.pipeline import Pipeline  # noqa: E402
from daemon.sensing.sim import SimSource, expected_real_events  # noqa: E402


def biased(layout: Layout, offset: float) -> Layout:
    skus = sorted({p.sku for p in layout.placements})
    sign = {s: (1 if i % 2 == 0 else -1) for i, s in enumerate(skus)}
    return Layout(layout.plates, [dataclasses.replace(p, unit_weight_g=p.unit_weight_g * (1 + sign[p.sku] * offset),
                                                      weighed=False) for p in layout.placements])


def right_flags(truth: list[dict], events: list[dict]) -> list[tuple[float, bool]]:
    """(time, right sku and quantity) per real event that was detected, in time order."""
    truths = [g for g in truth if g["type"] in ("pick", "put_back")]
    preds = [dict(e, _a=sim_bench._ts(e["t_start"]), _b=sim_bench._ts(e["t_end"])) for e in events
             if e.get("type") in ("pick", "put_back")]
    loose = sim_bench._match(truths, preds, same_sku=False)
    out = []
    for gi, pi in loose.items():
        g, p = truths[gi], preds[pi]
        out.append((g["time"], str(p["sku"]) == str(g["sku"]) and int(p["quantity"]) == int(g["quantity"])))
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=900)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--offset", type=float, default=0.06)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    per_s = expected_real_events(1.0, sim_bench.EVENTS_PER_MIN)
    duration = int(args.events / per_s * 1.05 / 60.0 + 1) * 60.0
    cfg, _ = sim_bench.build_config(args.seed, duration, args.out / "learning_truth.json", args.out / "learning_state")
    layout = Layout.from_config(cfg)
    shelf, pid, sigma = sim_bench.HIGH_NOISE_PLATE
    src = SimSource(cfg, layout, plate_noise_g={f"{shelf}/{pid}": sigma})
    cal = src.factory_calibration()
    wrong = biased(layout, args.offset)
    pipes = {
        "true": Pipeline(
            cfg.store_id, cfg.unit_id, layout, list(src.channels), src.units, src.rate_hz, cal, cfg.detection
        ),
        "learning": Pipeline(
            cfg.store_id, cfg.unit_id, wrong, list(src.channels), src.units, src.rate_hz, cal, cfg.detection
        ),
        "frozen": Pipeline(
            cfg.store_id,
            cfg.unit_id,
            wrong,
            list(src.channels),
            src.units,
            src.rate_hz,
            cal,
            cfg.detection,
            learn_confidence=2.0,
        ),
    }
    events: dict[str, list[dict]] = {k: [] for k in pipes}
    true_w = {p.sku: p.unit_weight_g for p in layout.placements}
    err_trace = []   # (events seen by the learning pipeline, mean |learned − true| / true)
    src.start()
    print(f"simulating {duration:.0f} s ...", file=sys.stderr)
    while (b := src.read(0.0)) is not None:
        for k, pipe in pipes.items():
            events[k].extend(pipe.process(b))
        w = pipes["learning"].weights.w
        err_trace.append((len(events["learning"]),
                          sum(abs(w[s].mean_g - true_w[s]) / true_w[s] for s in true_w) / len(true_w)))
    for k, pipe in pipes.items():
        events[k].extend(pipe.finish())
    src.close()
    truth = src.truth
    flags = {k: right_flags(truth, ev) for k, ev in events.items()}
    n = min(len(f) for f in flags.values())
    blocks = list(range(0, n, args.block))
    print(f"Learned unit weights: seed {args.seed}, catalogue {100 * args.offset:.0f} % off, "
          f"{n} detected real events, blocks of {args.block}")
    if not n:
        print("  nothing to score: no real event was detected")
    print(f"  {'events':>11} {'true':>7} {'learning':>9} {'frozen':>7}   mean |weight error| (learning)")
    caught_up = None
    rows = []
    for a in blocks:
        b = min(n, a + args.block)
        acc = {k: sum(1 for _, r in flags[k][a:b] if r) / (b - a) for k in flags}
        err = next((e for cnt, e in err_trace if cnt >= b), err_trace[-1][1])
        rows.append({"from": a, "to": b, **{k: round(v, 4) for k, v in acc.items()}, "weight_error": round(err, 4)})
        print(f"  {a:>5}-{b:<5} {acc['true']:7.3f} {acc['learning']:9.3f} {acc['frozen']:7.3f}   {100 * err:5.2f} %")
    for i, r in enumerate(rows):
        if all(x["learning"] >= x["true"] - 1.0 / args.block for x in rows[i:]):
            caught_up = r["from"]
            break
    first_err = err_trace[0][1] if err_trace else float("nan")
    print(f"  weight error: {100 * first_err:.2f} % at the start, {100 * err_trace[-1][1]:.2f} % at the end; "
          f"SKUs flagged drifting: {pipes['learning'].weights.drifting() or 'none'}")
    print(f"  learning names products as well as with true weights (within one event per block) from event "
          f"{caught_up if caught_up is not None else 'never'} on")
    print(json.dumps({"bench": "learning", "seed": args.seed, "offset": args.offset, "blocks": rows,
                      "caught_up_at_event": caught_up}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
