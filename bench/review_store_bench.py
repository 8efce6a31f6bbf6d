"""The review loop on the real store: reviews per 100 receipts, and receipt accuracy once staff
have resolved every queued line.

    .venv/bin/python bench/review_store_bench.py [--shoppers 200] [--tracking noisy] [--seed 1]

Runs the store-in-a-box (real shelfd units, cartd, broker; aggregator/sim) to its last receipt,
then plays a perfect reviewer through the real path: each line in cartd's review queue gets the
decision the truth calls for (accept; the right product; the right shopper; remove a line no one
took), queued as the console queues it (aggregator/console/desk.py) and applied by the running
cartd, which issues the correction receipts. Scores the first receipts and the final ones
(line items: product, quantity, shopper) and writes bench/out/review_store_bench.{json,png}.
The reviewer is an oracle: the figure is what review can reach, not what tired people reach.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from store_bench import pyplot  # noqa: E402

from aggregator.catalogue import Catalogue  # noqa: E402
from aggregator.config import load_config  # noqa: E402
from aggregator.console.accounts import Accounts, Staff  # noqa: E402
from aggregator.console.desk import Desk  # noqa: E402
from aggregator.console.guarded import GuardedStore  # noqa: E402
from aggregator.sim.plan import Interaction, Plan, PlanParams, make_plan  # noqa: E402
from aggregator.sim.runner import RunOptions, StoreRun  # noqa: E402
from aggregator.sim.score import score, shelf_events  # noqa: E402
from aggregator.sim.store import build_store  # noqa: E402
from aggregator.store import open_store  # noqa: E402
from aggregator.views import Views  # noqa: E402

OUT = ROOT / "bench" / "out"


def oracle(item: dict, touch: Interaction | None) -> list[dict]:
    """The decisions a reviewer who knows the truth makes for one queued line."""
    if touch is None:
        return [{"action": "remove"}]  # no one took anything here: a phantom
    out = []
    if touch.sku != item["sku"] or touch.quantity != abs(item["quantity"]):
        out.append({"action": "product", "sku": touch.sku, "quantity": touch.quantity})
    if touch.session_id != item["session_id"]:
        out.append({"action": "shopper", "session_id": touch.session_id})
    return out or [{"action": "accept"}]


def stray_picks(db: GuardedStore, session_id: str, sku: str) -> list[tuple[int, str, str]]:
    """(line id, event id, session) of picks of sku assigned to other shoppers, still unreviewed."""
    return db.read(lambda: db.store.q("SELECT id, event_id, session_id FROM lines WHERE sku=? AND qty>0"
                                      " AND session_id<>? AND reviewed_by IS NULL ORDER BY id", (sku, session_id)))


def review_everything(run: StoreRun, plan: Plan, matches: dict[str, str]) -> dict:
    cfg = load_config(run.cartd_config)
    store = open_store(cfg.storage, threads=True)
    cat = Catalogue.load(cfg.catalogue, cfg.receipts.currency)
    accounts = Accounts(store)
    accounts.add_user("oracle", "oracle-password", "reviewer", actor="bench")
    desk = Desk(accounts.db, cat)
    who = Staff("oracle", "reviewer", "")
    touches = {i.id: i for i in plan.interactions}
    with accounts.lock:
        queue = Views(cfg, store, cat).review_queue(limit=100000)
    reasons: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    pending = []

    def decide(line_id: int, d: dict) -> None:
        actions[d["action"]] += 1
        try:
            pending.append(desk.decide(who, line_id, d))
        except ValueError as exc:  # the console would refuse it too: count it
            actions[f"refused: {exc}"] += 1
    for item in queue:
        reasons.update(item["reasons"])
        tid = matches.get(item["event_id"])
        touch = touches.get(tid) if tid else None
        for d in oracle(item, touch):
            decide(item["line_id"], d)
        if "put_back_not_in_cart" in item["reasons"] and touch is not None and touch.session_id == item["session_id"]:
            # the put-back is right, so the shopper's pick of it went to someone else: a reviewer
            # opens the shopper's visit and moves that pick too (one more review action)
            for line_id, eid, sid in stray_picks(accounts.db, touch.session_id, touch.sku):
                t = touches.get(matches.get(eid, ""))
                if t is not None and t.session_id == touch.session_id and sid != touch.session_id:
                    decide(line_id, {"action": "shopper", "session_id": touch.session_id})
                    actions["pick moved for a put-back"] += 1
                    break
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        pending = [d for d in pending if not (desk.outcome(d) or (None,))[0]]
        time.sleep(0.3)
    store.close()
    # one review action per queued line (whatever it decided), plus each other line a reviewer had
    # to open to finish one (the misassigned pick behind a put-back)
    return {"queued_lines": len(queue), "review_actions": len(queue) + actions["pick moved for a put-back"],
            "reasons": dict(reasons), "decisions": dict(actions),
            "unapplied": len(pending)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shoppers", type=int, default=200)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracking", choices=["clean", "noisy"], default="noisy")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a new temp folder)")
    ap.add_argument("--sure-misplaced-off-queue", action="store_true",
                    help="cartd's review.misplaced_returns: false (sure misplaced returns are not queued)")
    ap.add_argument("--ambiguity-margin", type=float, default=None,
                    help="cartd's association.ambiguity_margin (default: cartd's, 0.2)")
    args = ap.parse_args()
    store = build_store(n_units=args.units)
    plan = make_plan(store, PlanParams(shoppers=args.shoppers, seed=args.seed))
    truth = plan.truth()
    work = args.out or Path(tempfile.mkdtemp(prefix="gondola-review-bench-"))
    print(f"{args.shoppers} shoppers, {args.tracking} tracking, seed {args.seed}: running the store "
          f"(~{plan.end_s / 60:.0f} min of store time) in {work}", flush=True)
    over: dict = {"review": {"misplaced_returns": False}} if args.sure_misplaced_off_queue else {}
    if args.ambiguity_margin is not None:
        over["association"] = {"ambiguity_margin": args.ambiguity_margin}
    run = StoreRun(store, plan, work, RunOptions(tracking=args.tracking, watch_events=True, receipt_grace_s=60,
                                                 cartd_overrides=over))
    t0 = time.time()
    try:
        run.start()
        complete = run.wait()
        first = [r for r in run.all_receipts() if r.get("n", 1) == 1]
        before = score(truth, first)
        print(f"store done in {time.time() - t0:.0f} s; receipts {len(first)}; before review: {before.text()}",
              flush=True)
        ev = shelf_events(plan, run.events, run.t0)
        rev = review_everything(run, plan, ev["matches"])
        print(f"review queue: {rev['queued_lines']} lines {rev['reasons']}; decisions {rev['decisions']}",
              flush=True)
        n_before = len(run.all_receipts())
        time.sleep(3.0)  # corrections are issued on cartd's next tick and published
        while len(run.all_receipts()) != n_before:
            n_before = len(run.all_receipts())
            time.sleep(2.0)
    finally:
        run.stop()
    after = score(truth, run.all_receipts())
    per100 = 100.0 * rev["review_actions"] / max(1, len(first))
    result = {"shoppers": args.shoppers, "tracking": args.tracking, "seed": args.seed, "all_receipted": complete,
              "sure_misplaced_queued": not args.sure_misplaced_off_queue, "ambiguity_margin": args.ambiguity_margin,
              "receipts": len(first), "true_lines": sum(len(v) for v in truth.values()),
              "before": before.as_dict(), "after": after.as_dict(), "reviews_per_100_receipts": round(per100, 1),
              **rev, "corrections": sum(1 for r in run.all_receipts() if r.get("n", 1) > 1),
              "wall_s": round(time.time() - t0, 1), "workdir": str(work)}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "review_store_bench" + ("_nomisplaced" if args.sure_misplaced_off_queue else "") + (
        f"_margin{args.ambiguity_margin:g}" if args.ambiguity_margin is not None else "")
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    print("\n| tracking | receipts | F1 first receipts | lines queued | review actions | per 100 receipts |"
          " F1 after review |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.tracking} | {len(first)} | {before.text()} | {rev['queued_lines']} | {rev['review_actions']} | "
          f"{per100:.1f} | {after.text()} |")
    plot(result, OUT / f"{name}.png")
    return 0


def plot(r: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    vals = [r["before"]["precision"], r["before"]["recall"], r["before"]["f1"],
            r["after"]["precision"], r["after"]["recall"], r["after"]["f1"]]
    labels = ["P", "R", "F1", "P", "R", "F1"]
    colors = ["#9aa7b8"] * 3 + ["#1565c0"] * 3
    bars = ax.bar(range(6), vals, color=colors)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.003, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(6), labels)
    ax.axhline(0.99, color="g", ls="--", lw=1, label="target F1 0.99")
    ax.set_ylim(max(0.0, min(vals) - 0.1), 1.02)
    ax.set_title(f"{r['shoppers']} shoppers, {r['tracking']} tracking: first receipts (grey) vs after review "
                 f"(blue)\n{r['review_actions']} review actions = {r['reviews_per_100_receipts']} per 100 receipts",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
