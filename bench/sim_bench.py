#!/usr/bin/env python3
"""Simulator benchmark: a 4-shelf × 6-plate unit stocked with real AIM3S products, run at speed 0
through the detection pipeline (``daemon.pipeline.run_offline``) and scored against the truth.

    .venv/bin/python bench/sim_bench.py [--events 600] [--seed 1] [--out bench/out] [--standin]

Scoring (events): a prediction matches a ground-truth event of the same type, sku and shelf whose
time lies in [t_start - 3 s, t_end + 3 s]; each truth is matched once (greedy in time order, as
``shared/checks/score.py`` does). Item accuracy: among truths found by type+shelf+time alone, the
share with the right sku *and* quantity. Phantoms: predictions matching nothing, and those lying on
a lean, press or glitch. Writes ``<out>/sim_bench.json``, ``<out>/sim_bench.png``, the events and
the ground truth; prints a table and one JSON summary line.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aggregator.sim.score import NOTHING_TO_SCORE, prf_text, ratio_text  # noqa: E402
from daemon.config import Config, parse_config  # noqa: E402
from daemon.layout import Layout  # noqa: E402
from daemon.sensing.sim import SimSource, expected_real_events  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import reliability  # noqa: E402

log = logging.getLogger("sim_bench")

TOL_S = 3.0
EVENTS_PER_MIN = 20.0
HIGH_NOISE_PLATE = ("2", 6, 8.0)  # shelf, plate, σ g: an AiFi-like bad plate (their max was 14 g)

# (shelf, plates, AIM3S product name prefix). Heavy cleaners low, candy (30–80 g) on top, as stores do.
UNIT_LAYOUT = [
    ("1", [1], "409 Multi-Surface"), ("1", [2], "Toilet bowl cleaner"), ("1", [3, 4], "Lysol Toilet bleach"),
    ("1", [5], "Fabuloso Cleaner"), ("1", [6], "Raid"),
    ("2", [1], "Windex Original"), ("2", [2], "Palmolive"), ("2", [2], "Dawn dish liquid"),
    ("2", [3, 4], "7Eleven Dish Liquid"), ("2", [5], "Fabric Febreeze"), ("2", [6], "Glade Clean linen"),
    ("3", [1], "Bounty Paper Towels"), ("3", [2], "Ultra Premium Paper Towel"), ("3", [3], "Premium paper towels"),
    ("3", [4, 5], "Sanitex Vinyl Gloves"), ("3", [5], "Quart Freezer"), ("3", [6], "Cling Wrap"),
    ("4", [1], "Peanut M&M's"), ("4", [2], "Green Crispy M&M's"), ("4", [3], "Snickers Almond"),
    ("4", [4], "Rolo"), ("4", [4], "Kit Kat King Size"), ("4", [5, 6], "Skor"), ("4", [6], "Reese's Fast Break"),
]

# Used when ../shared is missing: (name, sku, unit weight g, sd g), weights from AIM3S.
BUILTIN_PRODUCTS = [
    ("409 Multi-Surface", "044600008899", 1028.0, 10.0), ("Toilet bowl cleaner", "052548575496", 799.0, 8.0),
    ("Lysol Toilet bleach", "019200850209", 776.5, 7.8), ("Fabuloso Cleaner", "035000530639", 684.5, 6.8),
    ("Raid", "046500216121", 439.3, 4.4), ("Windex Original", "019800001230", 409.0, 5.2),
    ("Palmolive", "03505900", 326.7, 3.3), ("Dawn dish liquid", "037000973782", 272.1, 2.7),
    ("7Eleven Dish Liquid", "052548588762", 459.9, 5.0), ("Fabric Febreeze", "037000197430", 575.5, 5.8),
    ("Glade Clean linen", "046500733321", 306.1, 3.1), ("Bounty Paper Towels", "037000762300", 152.5, 5.0),
    ("Ultra Premium Paper Towel", "052548570682", 264.0, 2.6), ("Premium paper towels", "052548560089", 201.0, 2.9),
    ("Sanitex Vinyl Gloves", "640562023941", 565.5, 7.8), ("Quart Freezer", "052548605148", 141.5, 4.4),
    ("Cling Wrap", "012587000106", 168.8, 1.7), ("Peanut M&M's", "040000000327", 53.5, 0.5),
    ("Green Crispy M&M's", "040000494805", 41.2, 1.2), ("Snickers Almond", "04010508", 52.7, 1.1),
    ("Rolo", "03424403", 49.7, 0.5), ("Kit Kat King Size", "03422900", 89.3, 1.8),
    ("Skor", "03437009", 40.6, 1.6), ("Reese's Fast Break", "0000000000081", 53.1, 1.8),
]


# ---------------------------------------------------------------- the unit


def shared_dir() -> Path:
    return Path(os.environ.get("GONDOLA_SHARED", ROOT.parent / "shared"))


def load_products() -> tuple[dict[str, tuple[str, float, float]], str]:
    """name → (sku, mean unit weight, sd) from AIM3S weighings, or the built-in copy."""
    path = shared_dir() / "data" / "aim3s" / "product_info.json"
    if not path.is_file():
        log.warning("%s missing; using built-in product list", path)
        return {n: (sku, w, sd) for n, sku, w, sd in BUILTIN_PRODUCTS}, "builtin"
    out: dict[str, tuple[str, float, float]] = {}
    for p in json.loads(path.read_text())["products"]:
        w = [x for x in p.get("weights", []) if x > 0]
        if not w:
            continue
        mean = float(np.mean(w))
        # 2–6 weighings underestimate the spread; never below 1 % (packaging tolerance) or 0.5 g
        sd = max(float(np.std(w, ddof=1)) if len(w) > 1 else 0.0, 0.01 * mean, 0.5)
        sku = p.get("barcode") or ""
        if not sku or sku == "-":
            sku = f"aim3s-{p['id']}"
        out[p["name"]] = (sku, round(mean, 2), round(sd, 2))
    return out, str(path)


def build_config(seed: int, duration_s: float, gt_path: Path, state_dir: Path) -> tuple[Config, str]:
    products, source = load_products()
    planogram = []
    for shelf, plates, prefix in UNIT_LAYOUT:
        name = prefix if prefix in products else next((n for n in products if n.startswith(prefix)), None)
        if name is None:
            raise SystemExit(f"product {prefix!r} not in {source}")
        sku, w, sd = products[name]
        planogram.append({"sku": sku, "name": name, "shelf": shelf, "plates": plates,
                          "unit_weight_g": w, "unit_weight_sd_g": sd})
    cfg = parse_config({
        "version": 1, "unit_id": f"sim-bench-{seed}", "store_id": "bench", "state_dir": str(state_dir),
        "sensing": {"backend": "sim", "seed": seed, "speed": 0, "duration_s": duration_s,
                    "events_per_min": EVENTS_PER_MIN, "ground_truth": str(gt_path)},
        "shelves": [{"id": s, "plates": [{"id": i} for i in range(1, 7)]} for s in ("1", "2", "3", "4")],
        "planogram": planogram,
    })
    return cfg, source


# ---------------------------------------------------------------- running


class Tap:
    """Wraps the source: progress on stderr and a copy of the first ``keep_s`` seconds for the plot."""

    def __init__(self, src: SimSource, keep_s: float = 180.0):
        self._src = src
        self._keep = int(keep_s * src.rate_hz)
        self._total = (src.sim.duration_s or 0) * src.rate_hz
        self._seen = 0
        self._last = 0.0
        self.t: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read(self, timeout: float = 1.0):
        block = self._src.read(timeout)
        if block is not None and len(block):
            if self._seen < self._keep:
                self.t.append(block.t)
                self.v.append(block.values)
            self._seen += len(block)
            now = time.monotonic()
            if now - self._last > 2.0 and self._total:
                self._last = now
                print(f"\r  simulated {self._seen / self._src.rate_hz:7.0f} s "
                      f"({100 * self._seen / self._total:5.1f} %)", end="", file=sys.stderr, flush=True)
        elif block is None:
            print(file=sys.stderr)
        return block


def run_pipeline(cfg: Config, src, layout: Layout, standin: bool) -> tuple[list[dict], dict, str]:
    events: list[dict] = []
    if standin:
        stats = standin_detect(cfg, src, layout, events.append)
        return events, stats, "standin"
    try:
        from daemon.pipeline import run_offline
    except ImportError as exc:
        raise SystemExit(f"daemon.pipeline.run_offline not importable ({exc}); use --standin") from None
    stats = run_offline(cfg, src, layout, events.append, calibration=src.factory_calibration())
    if dataclasses.is_dataclass(stats):
        stats = dataclasses.asdict(stats)
    return events, stats if isinstance(stats, dict) else {"stats": repr(stats)}, "daemon.pipeline.run_offline"


def standin_detect(cfg: Config, src, layout: Layout, emit) -> dict:
    """A deliberately small detector (not the product): shelf-level REST→ACTIVE→REST on a moving
    std, Δ per plate from rest means, nearest (sku, quantity) by weight among the touched facings."""
    cal = src.factory_calibration()
    ts, gs = [], []
    src.start()
    while (b := src.read(0.0)) is not None:
        if not len(b):
            continue
        g = np.column_stack([cal.channels[c].to_grams(b.values[:, i]) for i, c in enumerate(src.channels)])
        ts.append(b.t)
        gs.append(g)
    src.close()
    t = np.concatenate(ts)
    g = np.concatenate(gs)
    plates = np.full((len(t), len(layout.plates)), np.nan)
    for p in layout.plates:
        cols = [src.channels.index(c) for c in p.channels]
        plates[:, p.index] = g[:, cols].sum(1)
    # fill gaps (glitch words) with the previous value, then a 5-sample median kills bit flips
    for j in range(plates.shape[1]):
        col = plates[:, j]
        ok = ~np.isnan(col)
        if ok.any():
            idx = np.where(ok, np.arange(len(col)), 0)
            np.maximum.accumulate(idx, out=idx)
            plates[:, j] = col[idx]
    plates = np.nan_to_num(plates)
    w = 5
    pad = np.pad(plates, ((w // 2, w // 2), (0, 0)), mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(pad, w, axis=0), axis=-1)
    n_win = int(0.5 * src.rate_hz)
    win = np.lib.stride_tricks.sliding_window_view(med, n_win, axis=0)
    sd = np.zeros_like(med)
    sd[n_win - 1:] = win.std(axis=-1)
    noise = np.median(sd, axis=0) + 0.3
    active = sd > np.maximum(5 * noise, 3.0)
    count = 0
    for shelf in layout.shelves:
        idx = [p.index for p in layout.shelf_plates(shelf)]
        act = active[:, idx].any(1)
        edges = np.flatnonzero(np.diff(act.astype(int)))
        starts = edges[act[edges + 1]] + 1 if len(edges) else []
        for s in starts:
            e = s + np.argmax(~act[s:]) if (~act[s:]).any() else None
            if e is None or s - n_win < 0 or e + n_win > len(t):
                continue
            before = med[s - n_win:s - 1, idx].mean(0)
            after = med[e + n_win // 2:e + n_win, idx].mean(0)
            d = after - before
            total = d.sum()
            if abs(total) < 8:
                continue
            touched = {layout.plates[i].id for i, x in zip(idx, d) if abs(x) > 5}
            best = None
            for pl in layout.placements_on(shelf, touched or None):
                q = max(1, round(abs(total) / pl.unit_weight_g))
                err = abs(abs(total) - q * pl.unit_weight_g) / (pl.unit_weight_sd_g * math.sqrt(q) + 2.0)
                if best is None or err < best[0]:
                    best = (err, pl.sku, q)
            if best is None:
                continue
            t0 = t[max(0, s - n_win)]
            emit({"type": "pick" if total < 0 else "put_back", "sku": best[1], "quantity": best[2],
                  "shelf": shelf, "plates": sorted(touched), "t_start": _rfc(t0), "t_end": _rfc(t[e]),
                  "delta_g": round(float(total), 1), "confidence": float(math.exp(-best[0])), "candidates": []})
            count += 1
    return {"events": count, "samples": len(t)}


# ---------------------------------------------------------------- scoring


def _rfc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    return dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def _match(truths: list[dict], preds: list[dict], same_sku: bool) -> dict[int, int]:
    """Greedy, truths in time order, each prediction used once: truth index → prediction index."""
    used: set[int] = set()
    out: dict[int, int] = {}
    for gi in sorted(range(len(truths)), key=lambda i: truths[i]["time"]):
        g = truths[gi]
        for pi, p in enumerate(preds):
            if pi in used or p["type"] != g["type"] or str(p.get("shelf")) != str(g["shelf"]):
                continue
            if same_sku and str(p.get("sku")) != str(g["sku"]):
                continue
            if p["_a"] - TOL_S <= g["time"] <= p["_b"] + TOL_S:
                used.add(pi)
                out[gi] = pi
                break
    return out


def score(truth_rows: list[dict], events: list[dict]) -> dict:
    truths = [g for g in truth_rows if g["type"] in ("pick", "put_back")]
    non_events = [g for g in truth_rows if g["type"] not in ("pick", "put_back")]
    preds = [dict(e, _a=_ts(e["t_start"]), _b=_ts(e["t_end"])) for e in events if e.get("type") in ("pick", "put_back")]
    other_types = Counter(e.get("type") for e in events if e.get("type") not in ("pick", "put_back"))
    strict = _match(truths, preds, same_sku=True)
    loose = _match(truths, preds, same_sku=False)
    tp = len(strict)
    res = {"events": _prf(tp, len(preds) - tp, len(truths) - tp)}
    right = sum(1 for gi, pi in loose.items()
                if str(preds[pi].get("sku")) == str(truths[gi]["sku"])
                and int(preds[pi].get("quantity") or 1) == int(truths[gi]["quantity"]))
    res["item_accuracy"] = {"detected": len(loose), "right_sku_and_quantity": right,
                            "accuracy": round(right / len(loose), 4) if loose else 0.0,
                            "detection_recall": round(len(loose) / len(truths), 4) if truths else 0.0}
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for gi, g in enumerate(truths):
        by_kind[g["kind"]][1] += 1
        by_kind[g["kind"]][0] += gi in strict
    res["per_kind"] = {k: {"found": f, "total": n, "recall": round(f / n, 4)} for k, (f, n) in sorted(by_kind.items())}
    # a phantom is a prediction with no real event of its type on its shelf at that time; one that
    # found its event but named the wrong product or quantity is a misidentification instead
    matched = set(loose.values())
    phantoms = [p for pi, p in enumerate(preds) if pi not in matched]
    on: Counter = Counter()
    for p in phantoms:
        for ne in non_events:
            same_shelf = str(ne["shelf"]) == str(p.get("shelf"))
            if same_shelf and p["_a"] - TOL_S <= ne["t_end"] and ne["t_start"] <= p["_b"] + TOL_S:
                on[ne["type"]] += 1
                break
    res["misidentified"] = len(loose) - right
    # confidence against being right (matched, same SKU and quantity); events with nothing real
    # behind them count as wrong
    by_pred = {pi: gi for gi, pi in loose.items()}
    pairs = []
    for pi, p in enumerate(preds):
        if p.get("type") not in ("pick", "put_back"):
            continue
        gi = by_pred.get(pi)
        ok = gi is not None and str(p.get("sku")) == str(truths[gi]["sku"]) \
            and int(p.get("quantity") or 1) == int(truths[gi]["quantity"])
        pairs.append((float(p.get("confidence") or 0.0), ok))
    res["reliability"] = reliability.table(pairs)
    misplaced = [g for g in truths if g["kind"] == "misplaced"]
    res["misplaced_share"] = round(len(misplaced) / len(truths), 4) if truths else 0.0
    for p in phantoms:
        log.info("phantom: shelf %s plates %s %s %s x%s Δ=%s g conf %s at %.2f..%.2f", p.get("shelf"),
                 p.get("plates"), p.get("type"), p.get("sku"), p.get("quantity"), p.get("delta_g"),
                 p.get("confidence"), p["_a"], p["_b"])
    res["phantoms"] = {"total": len(phantoms), "on_lean": on["lean"], "on_press": on["press"],
                       "on_glitch": on["glitch"], "other_event_types": dict(other_types)}
    res["non_events"] = dict(Counter(g["type"] for g in non_events))
    return res


# ---------------------------------------------------------------- report


def print_table(res: dict, meta: dict) -> None:
    e = res["events"]
    print(f"\nGondola simulator bench: seed {meta['seed']}, {meta['duration_s']:.0f} s simulated in "
          f"{meta['wall_s']:.1f} s ({meta['speedup']:.0f}x), detector {meta['detector']}")
    print(f"  real events {e['tp'] + e['fn']}, predicted {e['tp'] + e['fp']}   non-events {res['non_events']}")
    print(f"  events     {prf_text(e['tp'], e['fp'], e['fn'])}   (tp {e['tp']}, fp {e['fp']}, fn {e['fn']})")
    ia = res["item_accuracy"]
    if ia["detected"]:
        print(f"  items      detected {ia['detected']} (recall {ratio_text(ia['detected'], e['tp'] + e['fn'])}), "
              f"right sku+quantity {ia['right_sku_and_quantity']} → accuracy "
              f"{ratio_text(ia['right_sku_and_quantity'], ia['detected'])}")
    else:
        print(f"  items      {NOTHING_TO_SCORE} (no real event detected of {e['tp'] + e['fn']})")
    ph = res["phantoms"]
    print(f"  phantoms   {ph['total']} (on lean {ph['on_lean']}, press {ph['on_press']}, glitch {ph['on_glitch']});"
          f" other event types {ph['other_event_types']}")
    print(f"  {'kind':<14}{'found':>7}{'total':>7}{'recall':>9}")
    for k, v in res["per_kind"].items():
        print(f"  {k:<14}{v['found']:>7}{v['total']:>7}{v['recall']:>9.3f}")
    if e["tp"] + e["fn"]:
        print(f"  misplaced returns are {100 * res['misplaced_share']:.1f} % of real events "
              f"(weight alone cannot name one that weighs what the plate's own units weigh)")
    reliability.print_table(res["reliability"], "simulator, weight only")


def plot(
    path: Path, res: dict, tap: Tap, src: SimSource, layout: Layout, events: list[dict], truth: list[dict]
) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install .[bench]); no plot")
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 8), gridspec_kw={"height_ratios": [1, 1.4]})
    kinds = list(res["per_kind"])
    ax1.bar(kinds, [res["per_kind"][k]["recall"] for k in kinds], color="tab:blue")
    for i, k in enumerate(kinds):
        ax1.text(i, res["per_kind"][k]["recall"] + 0.02, f"{res['per_kind'][k]['found']}/{res['per_kind'][k]['total']}",
                 ha="center", fontsize=8)
    ax1.set_ylim(0, 1.1)
    ax1.set_ylabel("recall (type+sku+shelf+time)")
    e = res["events"]
    ax1.set_title(f"per-kind recall; events P {e['precision']:.2f} R {e['recall']:.2f} F1 {e['f1']:.2f}")
    if tap.t:
        t = np.concatenate(tap.t)
        v = np.concatenate(tap.v)
        cal = src.factory_calibration()
        # the plate with the most ground truth in the kept window makes the most telling trace
        busy = Counter((g["shelf"], pid) for g in truth if g["time"] <= t[-1] for pid in g["plates"])
        (shelf, pid), _ = busy.most_common(1)[0] if busy else ((layout.plates[0].shelf, layout.plates[0].id), 0)
        plate = layout.plate(shelf, pid)
        grams = sum(cal.channels[c].to_grams(v[:, src.channels.index(c)]) for c in plate.channels)
        ax2.plot(t - t[0], grams, lw=0.6, color="k", label=f"plate {plate.key} (g)")
        top = np.nanmax(grams) if np.isfinite(grams).any() else 1.0
        for g in truth:
            if g["shelf"] == shelf and pid in g["plates"] and g["time"] <= t[-1]:
                c = {"pick": "tab:red", "put_back": "tab:green"}.get(g["type"], "tab:gray")
                ax2.axvline(g["time"] - t[0], color=c, ls="--", lw=0.8)
                ax2.text(g["time"] - t[0], top, g["kind"], rotation=90, fontsize=7, va="top", color=c)
        for ev in events:
            if str(ev.get("shelf")) == shelf and pid in (ev.get("plates") or []):
                a, b = _ts(ev["t_start"]) - t[0], _ts(ev["t_end"]) - t[0]
                if a <= t[-1] - t[0]:
                    ax2.axvspan(a, b, color="tab:orange", alpha=0.25)
        ax2.set_xlabel("s (dashed: ground truth, red pick / green put-back / grey non-event; orange: detected)")
        ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=600, help="real events to simulate (approximately, at least)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--standin", action="store_true", help="use the bench's tiny stand-in detector")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    per_s = expected_real_events(1.0, EVENTS_PER_MIN)
    duration = math.ceil(args.events / per_s * 1.05 / 60.0) * 60.0
    gt_path = args.out / "sim_ground_truth.json"
    cfg, product_source = build_config(args.seed, duration, gt_path, args.out / "state")
    layout = Layout.from_config(cfg)
    shelf, pid, sigma = HIGH_NOISE_PLATE
    src = SimSource(cfg, layout, plate_noise_g={f"{shelf}/{pid}": sigma})
    tap = Tap(src)
    print(f"simulating {duration:.0f} s ({args.events} events wanted) ...", file=sys.stderr)
    t_wall = time.monotonic()
    events, stats, detector = run_pipeline(cfg, tap, layout, args.standin)
    wall = time.monotonic() - t_wall
    src.close()  # idempotent; writes the ground truth if the pipeline did not close the source
    truth = src.truth
    res = score(truth, events)
    meta = {"seed": args.seed, "duration_s": duration, "wall_s": round(wall, 2), "speedup": duration / max(wall, 1e-9),
            "detector": detector, "products": product_source, "plate_noise_g": src.plate_noise_g,
            "counters": {k: v.as_dict() for k, v in src.counters().items()}}
    print_table(res, meta)
    # everything that happened, non-events (leans, presses, glitches) included, for analysis
    (args.out / "sim_truth_all.json").write_text(json.dumps(truth, default=float))
    with (args.out / "sim_events.jsonl").open("w") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")
    (args.out / "sim_bench.json").write_text(json.dumps({"summary": res, "meta": meta, "pipeline": stats},
                                                        indent=1, default=str))
    plot(args.out / "sim_bench.png", res, tap, src, layout, events, truth)
    reliability.plot(res["reliability"], args.out / "sim_reliability.png", f"simulator seed {args.seed}, weight only")
    summary = {"bench": "sim", "seed": args.seed, "detector": detector, "events": res["events"],
               "item_accuracy": res["item_accuracy"]["accuracy"], "phantoms": res["phantoms"]["total"],
               "per_kind_recall": {k: v["recall"] for k, v in res["per_kind"].items()},
               "ece": res["reliability"]["ece"], "at_0.9": res["reliability"]["at_0.9"],
               "misplaced_share": res["misplaced_share"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
