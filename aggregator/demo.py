"""`make demo`: store-in-a-box. A private Mosquitto, simulated shelf units running the real
``shelfd``, simulated shoppers (gates and tracking), and ``cartd``; receipts are printed as they
are issued and, at the end, compared with what the shoppers really took.

    python -m aggregator.demo                       # a few shoppers, about 1–2 minutes
    python -m aggregator.demo --shoppers 200 --units 4   # the bench-sized store (~11 minutes)
    python -m aggregator.demo --tracking noisy      # occlusions, swaps, passers-by in tracking
    python -m aggregator.demo --web-port 8080       # and the staff console on http://127.0.0.1:8080/
    python -m aggregator.demo --unit                # the single-unit live view (daemon.demo)

Stops when every shopper has a receipt (or the grace time ran out), or on Ctrl-C, and leaves no
process behind. Everything it wrote (configs, logs, plan, databases) stays in the printed folder.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .money import fmt_money
from .sim.plan import Plan, PlanParams, make_plan
from .sim.runner import ChildExited, RunOptions, StoreRun, mosquitto_bin
from .sim.score import NOTHING_TO_SCORE, Score, final_receipts, receipt_cart, score, shelf_events
from .sim.store import build_store

_print_lock = threading.Lock()


def say(line: str = "") -> None:
    with _print_lock:
        try:
            print(line, flush=True)
        except OSError:  # the terminal went away (SIGHUP): keep stopping the children quietly
            pass


def format_receipt(r: dict[str, Any], want: dict[str, int]) -> str:
    """A receipt as the demo prints it, against what the shopper really took (``want``)."""
    cur = r.get("currency") or "USD"
    ok = "matches what they took" if receipt_cart(r) == want else "DIFFERS from what they took"
    state = "complete" if r.get("complete", True) else "incomplete"
    lines = [f"  ┌ receipt {r.get('receipt_id')}  ({r.get('kind', 'receipt')}, {state})"]
    for ln in r.get("lines", []):
        flag = "  ⚑ review" if ln.get("needs_review") else ""
        lines.append(f"  │ {ln.get('quantity'):>2} × {str(ln.get('name') or ln.get('sku'))[:28]:<28} "
                     f"{fmt_money(ln.get('amount'), cur):>10}{flag}")
    if not r.get("lines"):
        lines.append("  │ (nothing taken)")
    lines.append(f"  └ total {fmt_money(r.get('total'), cur)}   — {ok}")
    return "\n".join(lines)


def _interrupt(*_a: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo the same way Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aggregator.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=None,
                    help="shoppers (default 4; 12 with --web-port, so the review queue has something in it)")
    ap.add_argument("--units", type=int, default=None, help="shelf units (default 2, 4 from 20 shoppers)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracking", choices=["clean", "noisy"], default=os.environ.get("GONDOLA_TRACKING", "clean"))
    ap.add_argument("--arrival-gap", type=float, default=None, help="mean seconds between shoppers entering")
    ap.add_argument("--web-port", type=int, default=None,
                    help="also serve the staff console on this port (a demo account is printed)")
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a new temp folder)")
    ap.add_argument("--quiet-events", action="store_true", help="print receipts only, not every item event")
    ap.add_argument("--unit", action="store_true", help="the single-unit live view instead (daemon.demo)")
    args, rest = ap.parse_known_args(argv)
    if args.unit:
        from daemon import demo as unit_demo
        sys.argv = ["daemon.demo", *rest]
        return unit_demo.main()
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.shoppers is None:
        args.shoppers = int(os.environ.get("GONDOLA_SHOPPERS", 12 if args.web_port is not None else 4))
    if args.shoppers < 1:
        ap.error("--shoppers must be at least 1")
    if mosquitto_bin() is None:
        say("mosquitto is missing: install it with 'sudo apt-get install mosquitto'")
        return 69
    units = args.units or (4 if args.shoppers >= 20 else 2)
    gap = args.arrival_gap or (2.6 if args.shoppers >= 20 else 6.0)
    store = build_store(n_units=units)
    plan = make_plan(store, PlanParams(shoppers=args.shoppers, seed=args.seed, arrival_gap_s=gap))
    work = args.out or Path(tempfile.mkdtemp(prefix="gondola-store-"))
    names = {sku: p.name for sku, p in store.products.items()}
    truth = plan.truth()

    def on_event(e: dict[str, Any]) -> None:  # an item event as published (gondola.item-event/1)
        if args.quiet_events:
            return
        sku_id = e.get("sku")
        sku = names.get(sku_id, sku_id) if isinstance(sku_id, str) and sku_id else "?"
        say(f"    · {e['t_end'][11:21]}  {e['unit_id']} shelf {e['shelf']}  {e['type']:<8} "
            f"{e['quantity']} × {sku}  (Δ {e['delta_g']:+.0f} g, conf {e['confidence']:.2f})")

    def on_gate(kind: str, p: dict[str, Any]) -> None:
        say(f"  {'→ in ' if kind == 'entry' else '← out'}  {p['t'][11:21]}  {p['session_id']}")

    def on_receipt(r: dict[str, Any]) -> None:
        sid = r.get("session_id")
        say(format_receipt(r, truth.get(sid, {}) if isinstance(sid, str) else {}))

    def on_child_exit(line: str) -> None:
        say(f"  ✗ {line}")

    opts = RunOptions(tracking=args.tracking, watch_events=not args.quiet_events, web_port=args.web_port)
    run = StoreRun(store, plan, work, opts, on_receipt=on_receipt, on_event=on_event, on_gate=on_gate,
                   on_child_exit=on_child_exit)
    interrupted = reported = False
    # Ctrl-C: the children run in their own sessions, so only we get it and stop them in order
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (a `&` job)
    signal.signal(signal.SIGHUP, _interrupt)  # the terminal closed: still stop the children in order
    try:
        run.start()
        say(f"Gondola store-in-a-box: {len(store.units)} units × {len(store.units[0].shelves)} shelves, "
            f"{args.shoppers} shopper(s), {args.tracking} tracking, seed {args.seed}; store opens in "
            f"{run.t0 - time.time():.0f} s, last shopper leaves after ~{plan.end_s:.0f} s (Ctrl-C to stop)")
        say(f"  broker 127.0.0.1:{run.broker.port}   watch: mosquitto_sub -p {run.broker.port} -t '{run.base}/#' -v")
        say(f"  files: {work}")
        if args.web_port is not None:
            user, pw = run.web_account or ("?", "?")
            say(f"  staff console: http://127.0.0.1:{args.web_port}/   sign in as {user} / {pw}"
                f"   (log: {work / 'web.log'})")
        say()
        done = run.wait()
        if not done:
            say("\n  (grace time over: some shoppers have no receipt)")
        if args.web_port is not None and sys.stdin.isatty():
            # someone is at the console: keep the store up for them to review lines
            report(plan, truth, run.all_receipts(), names, run, False)
            reported = True
            say(f"\n  the staff console stays up on http://127.0.0.1:{args.web_port}/ : resolve the lines in its"
                " review queue and watch the corrections arrive; Ctrl-C to stop")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        interrupted = not reported
        say("\n  stopping …")
    except ChildExited as exc:  # a shelf unit (or cartd before the staff page) is gone: no run to finish
        interrupted = True
        run.check_children()  # its line, unless it was reported already
        say(f"  stopping: the run cannot go on without {exc.name}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C (or the terminal closing) must not cut the stop short
        run.stop()
    if not reported:
        report(plan, truth, run.all_receipts(), names, run, interrupted)
    return 0


def score_line(s: Score, shoppers: int) -> str:
    """The demo's line-item score; over zero line items (Ctrl-C before any receipt, shoppers who
    took nothing) there is nothing to score."""
    if s.empty:
        return (f"{NOTHING_TO_SCORE} ({s.receipts}/{shoppers} receipts, no line items)" if shoppers
                else f"{NOTHING_TO_SCORE} (no receipt yet)")
    return (f"{s.text()}  ({s.tp} right, {s.fp} wrong, {s.fn} missed; {s.receipts}/{shoppers} receipts, "
            f"{s.review_lines} line(s) for review)")


def report(plan: Plan, truth: dict[str, dict[str, int]], receipts: list[dict[str, Any]], names: dict[str, str],
           run: StoreRun, interrupted: bool) -> None:
    final = final_receipts(receipts)
    shown = [s.session_id for s in plan.sessions if not interrupted or s.session_id in final]
    say("\nWhat the shoppers took against their receipts:")
    for sid in shown:
        want, got = truth.get(sid, {}), receipt_cart(final[sid]) if sid in final else None
        mark = "✓" if got == want else "✗"
        w = ", ".join(f"{q}× {names.get(k, k)}" for k, q in want.items()) or "nothing"
        say(f"  {mark} {sid}: took {w}")
        if got is None:
            say("      no receipt")
        elif got != want:
            g = ", ".join(f"{q}× {names.get(k, k)}" for k, q in got.items()) or "nothing"
            say(f"      receipt says {g}")
    s = score({k: truth[k] for k in shown}, [r for r in receipts if r.get("session_id") in shown])
    ev = shelf_events(plan, run.events, run.t0) if run.events and not interrupted else None
    say(f"\n  line items: {score_line(s, len(shown))}")
    if ev:
        seen = f"{ev['right']}/{ev['planned']} interactions seen exactly right" if ev["planned"] else NOTHING_TO_SCORE
        say(f"  shelf events: {seen}, {ev['phantoms']} phantom(s)")
    (run.dir / "result.json").write_text(
        json.dumps({"score": s.as_dict(), "errors": s.errors, "shelf_events": ev}, indent=1)
    )
    say(f"  details: {run.dir / 'result.json'}")


if __name__ == "__main__":
    sys.exit(main())
