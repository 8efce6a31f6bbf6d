"""Store-in-a-box benchmark: receipts of a simulated store against what the shoppers took.

    .venv/bin/python bench/store_bench.py [--shoppers 200] [--units 4] [--seed 1]
                                          [--tracking clean noisy] [--out bench/out]

For each tracking mode, one real run (real time): a private Mosquitto, one ``shelfd`` per unit
(sim backend performing the planned interactions), ``cartd``, the gate and tracking feeds. The
modes share the plan (same seed), so the shelves do the same thing and only tracking differs; they
run side by side, each with its own broker. Reports line-item precision / recall / F1 (product,
quantity and shopper, the AutoCheckout measure; its winner scored 84.4 %), how many shelf
interactions the units reported exactly, receipt latency (exit gate → receipt on the broker), and
writes ``store_bench.json`` and ``store_bench.png``.

``--evidence-only``: no run; how often the tracking alone names the right shopper, and cartd's
association rule replayed on the planned touches (``replay_association``, which
bench/review_bench.py builds its staff-review figures on), in about a second.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import associate  # noqa: E402
from aggregator.config import AssociationConfig  # noqa: E402
from aggregator.sim.plan import Interaction, Plan, PlanParams, make_plan  # noqa: E402
from aggregator.sim.runner import RunOptions, StoreRun  # noqa: E402
from aggregator.sim.score import Score, score, shelf_events, tracking_evidence  # noqa: E402
from aggregator.sim.store import build_store  # noqa: E402
from aggregator.sim.tracking import batches  # noqa: E402

# A unit reports a touch as t_start ≈ the touch, t_end ≈ the touch's end + 0.45 s (measured on the
# store runs: the detector's settle), and flags a return set down on a plate that is not its
# product's facing as ``misplaced`` (the identifier's stray check).
EVENT_T_END_LAG_S = 0.45


@dataclass
class Line:
    """One planned touch as cartd turns it into a cart line, replayed offline."""
    touch: Interaction
    session_id: str | None                  # who got it; None: dead-lettered (no_session)
    reasons: list[str]                      # why it is in the review queue ([] = not queued)
    candidates: list[tuple[str, float]]     # (session, score), best first, as stored with the line
    evidence: str = "tracking"              # tracking | only_shopper | none (dead letter)

    @property
    def right(self) -> bool:
        return self.session_id == self.touch.session_id

    @property
    def share(self) -> float:
        """The winner's score (its share of the evidence, or its posterior): how sure cartd is."""
        return self.candidates[0][1] if self.candidates else 0.0


def replay_association(plan: Plan, batches_: list[tuple[float, list[dict]]],
                       assoc: AssociationConfig | None = None, busy: bool = False) -> list[Line]:
    """cartd's association rule (aggregator/associate.py) on the planned touches, fed the way the
    engine feeds it (aggregator/engine/association.py): sightings at the event's (unit, shelf) and
    (unit, shelf unknown) over [t_start - tol - context_before_s, t_end + tol + context_after_s],
    candidates inside the store during [t_start - tol, t_end + tol], the only shopper inside when
    nobody was seen (else a ``no_session`` dead letter), and for a put-back what each candidate's
    cart holds from the lines before it. Events in t_end order, the events exact (the units
    reported 584/586 touches exactly on the store run), so every wrong line is association's.
    ``busy``: also hand ``associate.decide`` each candidate's earlier lines at another shelf that
    overlap the event (one shopper, one shelf at a time), which the engine does not pass yet.
    Returns one Line per pick/put-back, in that order (also bench/review_bench.py's input)."""
    a = assoc or AssociationConfig()
    idx: dict[tuple[str, str], tuple[list[float], list[associate.Sighting]]] = {}
    for t, obs in batches_:
        for o in obs:
            ts, vals = idx.setdefault((o["unit_id"], o["shelf"] or ""), ([], []))
            ts.append(t)
            vals.append(associate.Sighting(o["session_id"], o["shelf"] or "", round(t, 3), o["confidence"]))
    spans = {s.session_id: (s.t_entry, s.t_exit) for s in plan.sessions}
    touches = sorted((i for i in plan.interactions if i.type in ("pick", "put_back")),
                     key=lambda i: i.t + i.dur)
    carts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    out: list[Line] = []
    for i in touches:
        t_start, t_end = i.t, i.t + i.dur + EVENT_T_END_LAG_S
        lo, hi = t_start - a.clock_tolerance_s, t_end + a.clock_tolerance_s
        w_lo, w_hi = lo - a.context_before_s, hi + a.context_after_s
        seen: list[associate.Sighting] = []
        for sh in (i.shelf, ""):
            ts, vals = idx.get((i.unit_id, sh), ([], []))
            seen += vals[bisect_left(ts, w_lo):bisect_right(ts, w_hi)]
        scores = {sid: p for sid, p in associate.presence(seen, i.shelf, rounded=True).items()
                  if spans[sid][0] <= hi and spans[sid][1] >= lo}
        evidence = "tracking"
        if not scores:
            inside = [sid for sid, (x, y) in spans.items() if x <= hi and y >= lo]
            if len(inside) != 1:
                out.append(Line(i, None, ["no_session"], [], "none"))
                continue
            scores, evidence = {inside[0]: associate.Presence(1.0, 1.0, 1)}, "only_shopper"
        put_back = i.type == "put_back"
        holding = {sid: carts[sid][i.sku] for sid in scores} if put_back else None
        engaged: dict[str, float] | None = None
        if busy:
            engaged = {}
            for ln in reversed(out[-80:]):
                o = ln.touch
                if (ln.session_id in scores and (o.unit_id, o.shelf) != (i.unit_id, i.shelf)
                        and o.t < t_end and o.t + o.dur + EVENT_T_END_LAG_S > t_start):
                    engaged[ln.session_id] = max(engaged.get(ln.session_id, 0.0), ln.share)
        d = associate.decide(scores, put_back=put_back, holding=holding, quantity=i.quantity,
                             min_confidence=a.min_confidence, ambiguity_margin=a.ambiguity_margin,
                             not_holding_factor=a.not_holding_factor, busy=engaged)
        assert d is not None and i.sku is not None
        carts[d.session_id][i.sku] += i.quantity if not put_back else -i.quantity
        reasons = list(d.reasons)
        if put_back and i.wrong_place:
            reasons.append("misplaced")
        out.append(Line(i, d.session_id, reasons, d.candidates, evidence))
    return out


def score_lines(plan: Plan, lines: list[Line], fixed: Callable[[Line], bool] | None = None,
                truth: dict[str, dict[str, int]] | None = None) -> Score:
    """Line-item P/R/F1 (sim/score.py) of the receipts the lines make; ``fixed(line)``: a person
    resolved that line (it goes to its true shopper; a dead-lettered event is assigned). ``truth``:
    ``plan.truth()``, when the caller has it already."""
    carts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ln in lines:
        who = ln.touch.session_id if fixed is not None and fixed(ln) else ln.session_id
        if who is None or ln.touch.sku is None:
            continue
        carts[who][ln.touch.sku] += ln.touch.quantity if ln.touch.type == "pick" else -ln.touch.quantity
    receipts = [{"session_id": sid, "n": 1, "lines": [{"sku": k, "quantity": q} for k, q in c.items()]}
                for sid, c in carts.items()]
    return score(truth if truth is not None else plan.truth(), receipts)


def one_run(store, plan, mode: str, workdir: Path, results: dict) -> None:
    run = StoreRun(store, plan, workdir, RunOptions(tracking=mode, watch_events=True, receipt_grace_s=60))
    t_start = time.time()
    try:
        run.start()
        complete = run.wait()
    finally:
        run.stop()
    receipts = run.all_receipts()
    truth = plan.truth()
    s = score(truth, receipts)
    ev = shelf_events(plan, run.events, run.t0)
    exits = {x.session_id: run.t0 + x.t_exit for x in plan.sessions}
    lat = [run.receipt_seen_at[rid] - exits[r["session_id"]] for rid, r in run.receipts.items()
           if r.get("n", 1) == 1 and r.get("session_id") in exits and rid in run.receipt_seen_at]
    results[mode] = {
        "score": s.as_dict(),
        "all_receipted": complete,
        "shelf_events": {k: v for k, v in ev.items() if k != "phantom_events"},
        "receipt_latency_s": {
            "p50": round(float(np.percentile(lat, 50)), 2) if lat else None,
            "p99": round(float(np.percentile(lat, 99)), 2) if lat else None,
            "max": round(max(lat), 2) if lat else None,
            "n": len(lat),
        },
        "latencies": [round(x, 3) for x in lat],
        "line_errors": s.errors,
        "wall_s": round(time.time() - t_start, 1),
        "workdir": str(workdir),
    }


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files (Agg), or None, said once on stderr, when the bench
    extra is not installed (the benches that import this one use it too)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG (pip install -e .[bench])", file=sys.stderr)
        return None
    return plt


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    modes = list(results)
    x = np.arange(3)
    w = 0.8 / max(1, len(modes))
    for i, m in enumerate(modes):
        sc = results[m]["score"]
        vals = [sc["precision"], sc["recall"], sc["f1"]]
        bars = a.bar(x + i * w, vals, w, label=f"{m} tracking")
        for bar, v in zip(bars, vals):
            a.text(bar.get_x() + bar.get_width() / 2, v + 0.003, f"{v:.3f}", ha="center", fontsize=8)
    a.axhline(0.99, color="g", ls="--", lw=1, label="target 0.99 (clean)")
    a.axhline(0.844, color="r", ls=":", lw=1, label="AutoCheckout winner 0.844")
    a.set_xticks(x + w * (len(modes) - 1) / 2, ["precision", "recall", "F1"])
    lowest = min(min(results[m]["score"][k] for k in ("precision", "recall", "f1")) for m in modes)
    a.set_ylim(max(0.0, min(0.8, lowest - 0.25)), 1.02)
    a.set_title("receipt line items (product, quantity, shopper)")
    a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    for m in modes:
        lat = results[m]["latencies"]
        if lat:
            b.hist(
                lat,
                bins=30,
                alpha=0.6,
                label=f"{m}: p50 {np.percentile(lat, 50):.1f} s, p99 {np.percentile(lat, 99):.1f} s",
            )
    b.set_xlabel("exit gate → receipt on the broker (s)")
    b.set_ylabel("receipts")
    b.set_title("receipt latency")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=200)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arrival-gap", type=float, default=2.6)
    ap.add_argument("--tracking", nargs="+", choices=["clean", "noisy"], default=["clean", "noisy"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from OUT/store_bench.json")
    ap.add_argument("--evidence-only", action="store_true",
                    help="only how often tracking alone (and cartd's rule, replayed) names the right shopper (no run)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot(json.loads((args.out / "store_bench.json").read_text())["results"], args.out / "store_bench.png")
        return 0
    store = build_store(n_units=args.units)
    plan = make_plan(store, PlanParams(shoppers=args.shoppers, seed=args.seed, arrival_gap_s=args.arrival_gap))
    truth = plan.truth()
    print(f"store: {len(store.units)} units × {len(store.units[0].shelves)} shelves, {len(store.facings())} facings; "
          f"{args.shoppers} shoppers, {len(plan.interactions)} shelf interactions "
          f"({sum(i.wrong_place for i in plan.interactions)} returns to the wrong place), "
          f"{sum(len(v) for v in truth.values())} true receipt lines; last exit at {plan.end_s:.0f} s; "
          f"modes: {', '.join(args.tracking)} (run side by side, real time)", flush=True)
    evidence = {m: tracking_evidence(plan, batches(plan, store, m, args.seed)) for m in args.tracking}
    for m, e in evidence.items():
        print(f"  tracking alone, {m}: right shopper for {e['right_by_max']}/{e['touches']} touches by highest "
              f"confidence, {e['right_by_sum']}/{e['touches']} by summed confidence", flush=True)
    for m in args.tracking:  # cartd's association rule replayed offline on the planned touches
        lines = replay_association(plan, batches(plan, store, m, args.seed))
        sc = score_lines(plan, lines)
        queued = Counter(r for ln in lines for r in ln.reasons if r != "misplaced")
        assoc = sum(any(r != "misplaced" for r in ln.reasons) for ln in lines)
        misplaced = sum("misplaced" in ln.reasons for ln in lines)
        evidence[m]["replay"] = {"touches": len(lines), "right": sum(ln.right for ln in lines), **sc.as_dict(),
                                 "review": assoc, "review_by_reason": queued, "misplaced": misplaced}
        print(f"  cartd rule replayed, {m}: right shopper {evidence[m]['replay']['right']}/{len(lines)}, "
              f"line P {sc.precision:.3f} R {sc.recall:.3f} F1 {sc.f1:.3f}, lines for review {assoc} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(queued.items())) or 'none'}) "
              f"+ {misplaced} misplaced returns the units flag", flush=True)
    if args.evidence_only:
        return 0
    results: dict = {}
    threads = [threading.Thread(target=one_run, args=(store, plan, m, args.out / f"store_run_{m}", results))
               for m in args.tracking]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\n{'tracking':<9} {'P':>6} {'R':>6} {'F1':>6} {'TP':>5} {'FP':>4} {'FN':>4} {'receipts':>9} "
          f"{'review':>7} {'shelf exact':>12} {'phantoms':>9} {'lat p50':>8} {'p99':>6}")
    for m in args.tracking:
        if m not in results:
            print(f"{m:<9} run failed")
            continue
        r = results[m]
        sc, ev, lat = r["score"], r["shelf_events"], r["receipt_latency_s"]
        print(
            f"{m:<9} {sc['precision']:6.3f} {sc['recall']:6.3f} {sc['f1']:6.3f} {sc['tp']:5d} {sc['fp']:4d} "
            f"{sc['fn']:4d} {sc['receipts']:4d}/{sc['sessions']:<4d} {sc['review_lines']:7d} "
            f"{ev['right']:5d}/{ev['planned']:<6d} {ev['phantoms']:9d} {lat['p50'] or 0:7.2f}s {lat['p99'] or 0:5.2f}s"
        )
    doc = {"shoppers": args.shoppers, "units": args.units, "seed": args.seed, "interactions": len(plan.interactions),
           "true_lines": sum(len(v) for v in truth.values()), "tracking_evidence": evidence, "results": results}
    (args.out / "store_bench.json").write_text(json.dumps(doc, indent=1))
    plot(results, args.out / "store_bench.png")
    print(json.dumps({m: {"f1": r["score"]["f1"], "precision": r["score"]["precision"], "recall": r["score"]["recall"]}
                      for m, r in results.items()}))
    print(f"wrote {args.out / 'store_bench.json'} and {args.out / 'store_bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
