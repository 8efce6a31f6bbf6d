"""Staff review, offline: how good receipts get once every queued line is resolved, per review.

    .venv/bin/python bench/review_bench.py [--seeds 1 2 3 4] [--held-out 5 6 7 8] [--shoppers 200]
                                           [--tracking clean noisy] [--budget 10] [--out bench/out]

For each seed and tracking mode: the plan's touches, the tracking feed, and cartd's association
rule replayed on them as the engine feeds it (``store_bench.replay_association``, the code behind
``store_bench.py --evidence-only``; < 1 s per seed, no run). Each touch becomes one line (one item
event, one shopper). Reported:

- receipt line-item P/R/F1 before review (sim/score.py: product, quantity and shopper);
- the lines queued for review per 100 receipts, by reason: association's (``weak_evidence``,
  ``ambiguous``, ``put_back_not_in_cart``), dead letters (``no_session``: a person assigns them)
  and the unit's ``misplaced`` flag (a return onto a plate that is not its product's: planned
  wrong-place returns; the unit's low-confidence flag is not modelled here, the replayed events
  are exact);
- F1 after an oracle reviewer resolves every queued line (each gets its true shopper; no line
  here should not exist, the events are exact);
- the trade-off as the queueing threshold varies: queue every line whose winner's score (share of
  the evidence, or posterior) is below x, plus the dead letters; F1 after review against reviews
  per 100 receipts, with and without the unit's misplaced flags, and the point of the budget
  (``--budget`` reviews per 100 receipts, the lowest scores first);
- wrong lines whose winner looked sure (score ≥ 0.9): what no threshold below that can catch.

Seeds are pooled (TP/FP/FN summed) per set; ``--held-out`` seeds are reported apart (judge a rule
change on them, not on the seeds it was looked at with). The ``noisy + busy`` rows replay the rule
with the evidence the engine does not pass yet: a candidate whose earlier line is a touch at
another shelf overlapping this event (one shopper, one shelf at a time) has its odds multiplied by
1 - that line's posterior (``associate.decide(busy=...)``). Writes ``review_bench.json`` and
``review_bench.png`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from store_bench import Line, pyplot, replay_association, score_lines  # noqa: E402

from aggregator.sim.plan import Plan, PlanParams, make_plan  # noqa: E402
from aggregator.sim.score import PRF, Score  # noqa: E402
from aggregator.sim.store import build_store  # noqa: E402
from aggregator.sim.tracking import batches  # noqa: E402

UNIT_FLAGS = ("misplaced",)        # the unit's reasons (not association's)
SURE = 0.9                         # a wrong line whose winner scored at least this "looked sure"
TARGET_F1 = 0.99


@dataclass
class SeedRun:
    seed: int
    mode: str
    plan: Plan
    lines: list[Line]
    truth: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.truth = self.truth or self.plan.truth()

    @property
    def receipts(self) -> int:
        return len(self.plan.sessions)


@dataclass
class Pooled(PRF):
    """TP/FP/FN summed over a set of seeds, with how many lines were reviewed and receipts made."""
    tp: int = 0
    fp: int = 0
    fn: int = 0
    reviews: int = 0
    receipts: int = 0
    extra: Counter = field(default_factory=Counter)

    def add(self, s: Score, reviews: int, receipts: int) -> None:
        self.tp, self.fp, self.fn = self.tp + s.tp, self.fp + s.fp, self.fn + s.fn
        self.reviews += reviews
        self.receipts += receipts

    @property
    def per100(self) -> float:
        return 100.0 * self.reviews / self.receipts if self.receipts else 0.0


def pooled(runs: list[SeedRun], queued: Callable[[Line], bool] | None) -> Pooled:
    """F1 after an oracle resolves every line ``queued`` says is queued (None: no review)."""
    out = Pooled()
    for r in runs:
        q = queued or (lambda ln: False)
        out.add(score_lines(r.plan, r.lines, fixed=q, truth=r.truth), sum(q(ln) for ln in r.lines), r.receipts)
    return out


def assoc_queued(ln: Line) -> bool:
    """Queued by association (or a dead letter), ignoring the unit's flags."""
    return any(x not in UNIT_FLAGS for x in ln.reasons)


def curve(runs: list[SeedRun], with_unit_flags: bool) -> list[tuple[float, float, float]]:
    """[(x, reviews per 100 receipts, F1 after review)] as the queue becomes "the winner's score
    is below x" (plus dead letters, plus the unit's flags when asked)."""
    shares = [ln.share for r in runs for ln in r.lines if ln.session_id is not None]
    xs = sorted({0.0, 1.0001, *(float(v) + 1e-6 for v in np.quantile(shares, np.linspace(0.0, 1.0, 161)))})
    out = []
    for x in xs:
        def q(ln: Line, x: float = x) -> bool:
            return (ln.session_id is None or ln.share < x
                    or (with_unit_flags and any(f in ln.reasons for f in UNIT_FLAGS)))
        p = pooled(runs, q)
        out.append((x, p.per100, p.f1))
    # keep the upper envelope in reviews order (several x give the same queue)
    out.sort(key=lambda v: (v[1], -v[2]))
    env: list[tuple[float, float, float]] = []
    for v in out:
        if not env or v[1] > env[-1][1] + 1e-9:
            env.append(v)
    return env


def at_budget(runs: list[SeedRun], per100: float, with_unit_flags: bool) -> Pooled:
    """F1 after review when each seed reviews ``per100`` lines per 100 receipts: the dead letters
    (and the unit's flags, when asked) first, then the lowest-scored winners."""
    out = Pooled()
    for r in runs:
        k = int(round(per100 * r.receipts / 100.0))
        must = [i for i, ln in enumerate(r.lines)
                if ln.session_id is None or (with_unit_flags and any(f in ln.reasons for f in UNIT_FLAGS))]
        must_set = set(must)
        rest = sorted((i for i in range(len(r.lines)) if i not in must_set), key=lambda i: r.lines[i].share)
        chosen = {id(r.lines[i]) for i in must[:k] + rest[:max(0, k - len(must))]}
        s = score_lines(r.plan, r.lines, fixed=lambda ln, c=chosen: id(ln) in c, truth=r.truth)
        out.add(s, len(chosen), r.receipts)
    return out


def perfect_at_budget(runs: list[SeedRun], per100: float) -> Pooled:
    """F1 after review when the queue holds only wrong lines (and dead letters), ``per100`` per 100
    receipts: what a perfect doubt score would reach; the association's own ceiling at that budget."""
    out = Pooled()
    for r in runs:
        k = int(round(per100 * r.receipts / 100.0))
        bad = sorted((ln for ln in r.lines if ln.session_id is None or not ln.right), key=lambda ln: ln.share)[:k]
        chosen = {id(ln) for ln in bad}
        out.add(score_lines(r.plan, r.lines, fixed=lambda ln, c=chosen: id(ln) in c, truth=r.truth), len(chosen),
                r.receipts)
    return out


def needed_for(env: list[tuple[float, float, float]], target: float) -> float | None:
    """The fewest reviews per 100 receipts on the curve that reach ``target`` F1."""
    return next((v[1] for v in env if v[2] >= target - 1e-12), None)


CAL_BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0001)


def calibration(runs: list[SeedRun]) -> list[tuple[str, int, int]]:
    """[(bin of the winner's score, lines, right lines)]: is the score a probability of being right?"""
    out = []
    for lo, hi in zip(CAL_BINS, CAL_BINS[1:]):
        ls = [ln for r in runs for ln in r.lines if ln.session_id is not None and lo <= ln.share < hi]
        out.append((f"{lo:g}-{min(hi, 1.0):g}", len(ls), sum(ln.right for ln in ls)))
    return out


def summarise(runs: list[SeedRun], budget: float) -> dict:
    before = pooled(runs, None)
    rule = pooled(runs, lambda ln: bool(ln.reasons))
    rule_assoc = pooled(runs, assoc_queued)
    receipts = sum(r.receipts for r in runs)
    reasons: Counter = Counter(x for r in runs for ln in r.lines for x in ln.reasons)
    wrong = [ln for r in runs for ln in r.lines if ln.session_id is not None and not ln.right]
    env_a, env_u = curve(runs, False), curve(runs, True)
    b_a, b_u = at_budget(runs, budget, False), at_budget(runs, budget, True)
    return {
        "seeds": [r.seed for r in runs], "receipts": receipts,
        "lines": sum(len(r.lines) for r in runs),
        "right": sum(ln.right for r in runs for ln in r.lines),
        "before": {"precision": round(before.precision, 4), "recall": round(before.recall, 4),
                   "f1": round(before.f1, 4), "tp": before.tp, "fp": before.fp, "fn": before.fn},
        "queued_per100": round(rule.per100, 2),
        "queued_assoc_per100": round(rule_assoc.per100, 2),
        "queued_by_reason_per100": {k: round(100.0 * v / receipts, 2) for k, v in sorted(reasons.items())},
        "f1_after_rule": round(rule.f1, 4),
        "f1_after_rule_assoc": round(rule_assoc.f1, 4),
        "wrong_lines": len(wrong),
        "wrong_not_queued": sum(not ln.reasons for ln in wrong),
        "wrong_sure": sum(ln.share >= SURE for ln in wrong),
        "budget_per100": budget,
        "f1_at_budget_assoc": round(b_a.f1, 4),
        "f1_at_budget_with_flags": round(b_u.f1, 4),
        "f1_at_budget_perfect_queue": round(perfect_at_budget(runs, budget).f1, 4),
        "per100_for_target_assoc": needed_for(env_a, TARGET_F1),
        "per100_for_target_with_flags": needed_for(env_u, TARGET_F1),
        "calibration": calibration(runs),
        "curve_assoc": [(round(x, 4), round(n, 2), round(f, 4)) for x, n, f in env_a],
        "curve_with_flags": [(round(x, 4), round(n, 2), round(f, 4)) for x, n, f in env_u],
    }


def table(results: dict, budget: float) -> str:
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"
    head = ("| tracking | seeds | P / R / F1 before | wrong lines (sure) | queued /100 receipts: assoc + misplaced "
            f"(by reason) | F1 after (rule's queue) | F1 after @ {budget:g}/100 | perfect queue @ {budget:g}/100 "
            f"| /100 for F1 {TARGET_F1} |")
    rows = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, s in results.items():
        mode, label = key.split(":")
        by = ", ".join(f"{k} {v:g}" for k, v in s["queued_by_reason_per100"].items()) or "none"
        b = s["before"]
        rows.append(
            f"| {mode} | {label} | {b['precision']:.3f} / {b['recall']:.3f} / **{b['f1']:.3f}** | "
            f"{s['wrong_lines']} ({s['wrong_sure']}) | {s['queued_assoc_per100']:.1f} + "
            f"{s['queued_by_reason_per100'].get('misplaced', 0):.1f} ({by}) | "
            f"{s['f1_after_rule_assoc']:.3f} / {s['f1_after_rule']:.3f} | "
            f"{s['f1_at_budget_assoc']:.3f} / {s['f1_at_budget_with_flags']:.3f} | "
            f"{s['f1_at_budget_perfect_queue']:.3f} | "
            f"{fmt(s['per100_for_target_assoc'])} / {fmt(s['per100_for_target_with_flags'])} |")
    rows.append("")
    rows.append("Pairs `a / b`: association's queue alone / with the unit's misplaced flags too. \"sure\": wrong "
                f"lines whose winner scored ≥ {SURE}. /100 = per 100 receipts (one receipt per shopper). Perfect "
                "queue: only wrong lines reviewed, the ceiling of the association's own accuracy.")
    return "\n".join(rows)


def plot(results: dict, budget: float, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for key, s in results.items():
        c = next(colours)
        ls = "--" if "held out" in key else "-"
        ax.plot([v[1] for v in s["curve_assoc"]], [v[2] for v in s["curve_assoc"]], ls, color=c, lw=1.5, label=key)
        ax.plot([s["queued_assoc_per100"]], [s["f1_after_rule_assoc"]], "o", color=c, ms=6)
        ax.plot([s["queued_per100"]], [s["f1_after_rule"]], "s", color=c, ms=6, mfc="none")
    ax.axhline(TARGET_F1, color="g", ls=":", lw=1)
    ax.axvline(budget, color="g", ls=":", lw=1)
    ax.fill_between([0, budget], TARGET_F1, 1.002, color="g", alpha=0.1,
                    label=f"target (F1 ≥ {TARGET_F1}, ≤ {budget:g}/100)")
    ax.set_xlim(0, 60)
    lo = min(min(v[2] for v in s["curve_assoc"]) for s in results.values())
    ax.set_ylim(max(0.0, min(0.9, lo - 0.01)), 1.002)
    ax.set_xlabel("lines reviewed per 100 receipts (queue: winner's score < x, and dead letters)")
    ax.set_ylabel("receipt line F1 after every queued line is resolved")
    ax.set_title("staff review trade-off; o: the rule's own queue, □: with the units' misplaced flags", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _label(seeds: list[int]) -> str:
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else ",".join(map(str, seeds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--held-out", type=int, nargs="*", default=[5, 6, 7, 8])
    ap.add_argument("--shoppers", type=int, default=200)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--arrival-gap", type=float, default=2.6)
    ap.add_argument("--tracking", nargs="+", choices=["clean", "noisy"], default=["clean", "noisy"])
    ap.add_argument("--budget", type=float, default=10.0, help="reviews per 100 receipts (default 10)")
    ap.add_argument("--no-busy", action="store_true",
                    help="leave out the noisy rows with the busy-elsewhere evidence (associate.decide(busy=...), "
                         "which the engine does not pass yet)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = build_store(n_units=args.units)
    sets = {_label(args.seeds): args.seeds}
    if args.held_out:
        sets[_label(args.held_out) + " held out"] = args.held_out
    results: dict[str, dict] = {}
    variants = [(m, False) for m in args.tracking]
    if "noisy" in args.tracking and not args.no_busy:
        variants.append(("noisy", True))
    feeds: dict[tuple[str, int], tuple[Plan, list]] = {}
    for mode, busy in variants:
        for label, seeds in sets.items():
            runs = []
            for seed in seeds:
                if (mode, seed) not in feeds:
                    plan = make_plan(store, PlanParams(shoppers=args.shoppers, seed=seed,
                                                       arrival_gap_s=args.arrival_gap))
                    feeds[(mode, seed)] = (plan, batches(plan, store, mode, seed))
                plan, feed = feeds[(mode, seed)]
                runs.append(SeedRun(seed, mode, plan, replay_association(plan, feed, busy=busy)))
            results[f"{mode}{' + busy' if busy else ''}:{label}"] = summarise(runs, args.budget)
    print(f"{args.shoppers} shoppers, {args.units} units; association replayed on the planned touches "
          f"({time.perf_counter() - t0:.1f} s)\n")
    print(table(results, args.budget))
    print("\nWinner's score against being right (lines right / lines, per score bin):\n")
    bins = [b for b, _, _ in next(iter(results.values()))["calibration"]]
    print("| tracking | seeds | " + " | ".join(bins) + " |")
    print("| --- | --- |" + " --- |" * len(bins))
    for key, r in results.items():
        mode, label = key.split(":")
        print(f"| {mode} | {label} | " + " | ".join(f"{k}/{n}" if n else "—" for _, n, k in r["calibration"]) + " |")
    (args.out / "review_bench.json").write_text(json.dumps(
        {"shoppers": args.shoppers, "units": args.units, "budget_per100": args.budget, "results": results}, indent=1))
    plot(results, args.budget, args.out / "review_bench.png")
    print(f"\nwrote {args.out / 'review_bench.json'} and {args.out / 'review_bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
