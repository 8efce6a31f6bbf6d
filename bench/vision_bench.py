#!/usr/bin/env python3
"""Vision benchmark: item accuracy weight-only vs fused (camera) in one simulator run, and cost.

    .venv/bin/python bench/vision_bench.py [--visits 80] [--seed 1] [--out bench/out]
                                           [--action-model models/action/action-v1.tflite]

A 2-shelf × 6-plate unit whose planogram holds the cases weight cannot decide:

* ``equal_weight``: two SKUs of the same unit weight sharing one plate (picks and put-backs);
* ``swap``: a shopper takes a unit and puts back a *different* product of the same weight on that
  plate (scripted as a pick then a misplaced put-back in one visit);
* ``misplaced``: a product of the same weight as a plate's own is returned onto that plate;
* ``separable``: products whose weight alone identifies them (the control group: fused must stay
  at the weight-only level).

The simulator runs the script (``sensing.script``) at speed 0 through the real pipeline with the
sim camera, the real TFLite models (product: the shared MobileNet v1 embedding extractor with a
gallery enrolled from the unit's own camera geometry; action: the project's trained model when
present) and the tempered fusion. Every event is scored twice from the same run: its weight-only
identification and its fused one (``Pipeline.observer``). Cost: vision analysis and model
inference milliseconds per event, and the pipeline process's CPU share while idle and during events
(live run at speed 1 with the camera thread, measured with ``time.process_time``).

Prints a table and one JSON line; writes ``<out>/vision_bench.json`` and ``vision_bench.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon.config import parse_config  # noqa: E402
from daemon.layout import Layout  # noqa: E402
from daemon.pipeline import Pipeline, run_offline  # noqa: E402
from daemon.sensing.sim import SimSource  # noqa: E402
from daemon.vision.setup import build_vision  # noqa: E402
from daemon.vision.sim_camera import enroll_sim_gallery  # noqa: E402

log = logging.getLogger("vision_bench")

SHARED = Path(os.environ.get("GONDOLA_SHARED", ROOT.parent / "shared"))
EMBEDDER = SHARED / "models" / "coral" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
EMBEDDER_SIDECAR = ROOT / "models" / "coral" / "mobilenet_v1_1.0_224_quant_embedding_extractor.json"

def distinct_skus(n: int) -> list[str]:
    """The first ``n`` codes 2000000xxxxx whose renderer look differs from every other one (hue
    12 % of the circle apart, or 5 % and another shape). The sim draws each SKU from a hash of
    its code, so arbitrary codes can land on look-alike packaging (four purple cans); this bench
    measures fusion, not look-alikes, which a store must enrol with care (docs/vision.md)."""
    import colorsys

    from daemon.vision.render import appearance

    def hue(code):
        return colorsys.rgb_to_hsv(*(c / 255 for c in appearance(code).color))[0]

    chosen: list[str] = []
    for k in range(1, 1000):
        code = f"2000000{k:05d}"
        a = appearance(code)
        def apart(c, code=code, a=a):
            dh = min(abs(hue(code) - hue(c)), 1 - abs(hue(code) - hue(c)))
            return dh >= 0.12 or (dh >= 0.05 and a.shape != appearance(c).shape)

        if all(apart(c) for c in chosen):
            chosen.append(code)
        if len(chosen) == n:
            return chosen
    raise RuntimeError("not enough distinct SKUs")


# (name, shelf, plates, unit weight g). Families of equal weight: 250 g (A, B, H), 90 g (F, G, M),
# 120 g (D, K), 180 g (J, L). C, E, I are separable by weight.
_UNIT = [
    ("Pasta A", "1", [1], 250.0), ("Pasta B", "1", [1], 250.0), ("Olive oil C", "1", [2], 400.0),
    ("Crackers D", "1", [3], 120.0), ("Coffee E", "1", [4], 330.0), ("Tea J", "1", [5], 180.0),
    ("Gum M", "1", [6], 90.0), ("Candy F", "2", [1], 90.0), ("Candy G", "2", [1], 90.0),
    ("Rice H", "2", [2], 250.0), ("Juice I", "2", [3, 4], 600.0), ("Biscuits K", "2", [5], 120.0),
    ("Soup L", "2", [6], 180.0),
]
PLANOGRAM = [(sku, *row) for sku, row in zip(distinct_skus(len(_UNIT)), _UNIT)]
# misplaced returns and swaps: (product, onto the plate of) — same weight, spread over plates so
# no plate collects a pile of strays (nobody tidies up in the script)
SAME_WEIGHT = [("A", "H"), ("B", "H"), ("H", "A"), ("D", "K"), ("K", "D"), ("F", "M"), ("M", "F"),
               ("J", "L"), ("L", "J"), ("G", "M")]
SKU = {name.split()[-1]: sku for sku, name, *_ in PLANOGRAM}
HOME = {sku: (shelf, plates) for sku, _, shelf, plates, _ in PLANOGRAM}
GAP_S = 8.0
CAMERA = (640, 480)


def unit_config(state_dir: Path, script: Path | None, *, speed: float = 0.0, duration: float | None = None,
                seed: int = 1, action_model: Path | None = None, shoppers: bool = True) -> dict:
    sensing = {"backend": "sim", "seed": seed, "speed": speed, "noise_g": 0.7, "glitch_rate": 0.0,
               "events_per_min": 8}
    if script is not None:
        sensing["script"] = str(script)
    if duration is not None:
        sensing["duration_s"] = duration
    if not shoppers:
        sensing["shoppers"] = False
    vision = {"product_model": str(EMBEDDER), "product_sidecar": str(EMBEDDER_SIDECAR)}
    if action_model is not None:
        vision["action_model"] = str(action_model)
    return {
        "version": 1, "unit_id": "vision-bench", "store_id": "bench", "state_dir": str(state_dir),
        "sensing": sensing,
        "shelves": [{"id": s, "plates": [{"id": p} for p in range(1, 7)]} for s in ("1", "2")],
        "planogram": [{"sku": sku, "name": name, "shelf": shelf, "plates": plates, "unit_weight_g": w, "stock": 8}
                      for sku, name, shelf, plates, w in PLANOGRAM],
        "camera": {"type": "sim", "fps": 5, "width": CAMERA[0], "height": CAMERA[1]},
        "vision": vision,
    }


def make_script(visits: int, rng: np.random.Generator) -> tuple[list[dict], dict[int, str]]:
    """Script lines and the case of each *put-back or pick line index* that forms an event."""
    lines: list[dict] = []
    case_of: dict[int, str] = {}
    t = 4.0
    kinds = ["equal_weight", "swap", "misplaced", "separable"]

    def add(case: str, typ: str, sku: str, shelf: str | None = None, plates: list[int] | None = None):
        nonlocal t
        home_shelf, home_plates = HOME[sku]
        row = {"t": round(t, 2), "type": typ, "sku": sku, "shelf": shelf or home_shelf,
               "dur": round(float(rng.uniform(1.2, 2.8)), 2)}
        if plates:
            row["plates"] = plates
        case_of[len(lines)] = case
        lines.append(row)
        t += GAP_S

    for i in range(visits):
        case = kinds[i % len(kinds)]
        if case == "equal_weight":
            sku = SKU[str(rng.choice(["A", "B", "F", "G"]))]
            add(case, "pick", sku)
            add(case, "put_back", sku)
        elif case == "swap":
            # take one, put back a different product of the same weight on the same plate
            back, took = (SKU[x] for x in SAME_WEIGHT[int(rng.integers(len(SAME_WEIGHT)))])
            shelf, plates = HOME[took]
            shared = sum(1 for p in PLANOGRAM if p[2] == shelf and plates[0] in p[3]) > 1
            add("equal_weight" if shared else "separable", "pick", took)
            add(case, "put_back", back, shelf, [plates[0]])
        elif case == "misplaced":
            sku, onto = (SKU[x] for x in SAME_WEIGHT[int(rng.integers(len(SAME_WEIGHT)))])
            shelf, plates = HOME[onto]
            add(case, "put_back", sku, shelf, [plates[0]])
        else:
            sku = SKU[str(rng.choice(["C", "E", "I", "J"]))]
            add(case, "pick", sku)
            add(case, "put_back", sku)
    return lines, case_of


def score(truth: list[dict], records: list[dict], case_by_time: dict[float, str]) -> dict:
    """Each truth event matched to the detection on its shelf overlapping it in time."""
    per = defaultdict(lambda: {"n": 0, "found": 0, "weight_ok": 0, "fused_ok": 0})
    used = set()
    rows = []
    for tr in truth:
        case = case_by_time.get(round(tr["t_start"], 1), "separable")
        d = per[case]
        d["n"] += 1
        match = None
        for i, r in enumerate(records):
            if i in used or r["shelf"] != tr["shelf"]:
                continue
            if r["t_start"] - 3.0 <= tr["time"] <= r["t_end"] + 3.0 and r["type"] == tr["type"]:
                match = i
                break
        if match is None:
            rows.append({"case": case, "truth": tr["sku"], "found": False})
            continue
        used.add(match)
        r = records[match]
        d["found"] += 1
        w_ok = r["weight_sku"] == tr["sku"] and r["weight_q"] == tr["quantity"]
        f_ok = r["fused_sku"] == tr["sku"] and r["fused_q"] == tr["quantity"]
        d["weight_ok"] += w_ok
        d["fused_ok"] += f_ok
        rows.append({"case": case, "type": tr["type"], "truth": tr["sku"], "weight": r["weight_sku"],
                     "fused": r["fused_sku"], "vision": r["vision_status"], "top": r["vision_top"],
                     "scores": r["vision_scores"], "action": r["action"], "fused_candidates": r["fused_candidates"],
                     "fused_conf": round(r["fused_conf"], 4)})
    # the action model against the truth's type (a swap label counts for both directions)
    acts = [(r["type"], max(r["action"], key=r["action"].get)) for r in rows if r.get("action")]
    action_acc = round(sum(a in (t, "swap") for t, a in acts) / len(acts), 3) if acts else None
    out = {}
    for case, d in per.items():
        f = max(1, d["found"])
        out[case] = {**d, "weight_acc": round(d["weight_ok"] / f, 3), "fused_acc": round(d["fused_ok"] / f, 3)}
    return {"cases": out, "rows": rows, "action_agreement": action_acc}


def accuracy_run(args, work: Path) -> dict:
    """The scripted visits in segments of ``--tidy-every`` visits: each segment is a fresh run of
    the same unit (as if staff had put the strays back), the gallery enrolled once."""
    rng = np.random.default_rng(args.seed)
    records: list[dict] = []
    truth: list[dict] = []
    case_by_time: dict[float, str] = {}
    statuses: dict[str, int] = defaultdict(int)
    ms: list[float] = []
    run_s = sim_s = render_ms = enroll_s = 0.0
    n_enrolled = 0
    models: dict = {}
    calibration = None

    def observe(change, w_ident, f_ident, vres, event):
        if change.kind != "change" or w_ident is None:
            return
        records.append({"shelf": change.shelf, "t_start": change.t_start, "t_end": change.t_end,
                        "type": event["type"],
                        "weight_sku": w_ident.best.sku, "weight_q": w_ident.best.quantity,
                        "fused_sku": f_ident.best.sku, "fused_q": f_ident.best.quantity,
                        "fused_conf": f_ident.confidence, "weight_conf": w_ident.confidence,
                        "vision_status": vres.status if vres else None, "vision_ms": vres.ms if vres else None,
                        "vision_top": max(vres.skus, key=vres.skus.get) if vres and vres.skus else None,
                        "vision_scores": sorted(((k, round(v, 4)) for k, v in (vres.skus or {}).items()),
                                                key=lambda kv: -kv[1])[:3] if vres else None,
                        "action": vres.action if vres else None,
                        "fused_candidates": [(h.sku, h.quantity, round(h.score, 4)) for h in f_ident.candidates]})

    segments = max(1, int(np.ceil(args.visits / args.tidy_every)))
    for seg in range(segments):
        n = min(args.tidy_every, args.visits - seg * args.tidy_every)
        lines, case_of = make_script(n, rng)
        script = work / f"script-{seg}.jsonl"
        script.write_text("".join(json.dumps(r) + "\n" for r in lines))
        cfg = parse_config(unit_config(work / "state", script, duration=lines[-1]["t"] + 10.0,
                                       seed=args.seed * 100 + seg, action_model=args.action_model))
        layout = Layout.from_config(cfg)
        src = SimSource(cfg, layout)
        vis = build_vision(cfg, layout, src, offline=True)
        if seg == 0:
            t0 = time.perf_counter()
            n_enrolled = enroll_sim_gallery(vis.engine.product_model, sorted(layout.skus), args.enroll,
                                            seed=args.seed + 100, geom=vis.runner.source.geom)
            vis.engine.calibrate()   # the gallery's scoring, fitted on its own images
            enroll_s = time.perf_counter() - t0
        vis.start()
        # run_offline builds its own Pipeline; hook the observer in for this run
        orig_init = Pipeline.__init__

        def init(self, *a, **kw):
            orig_init(self, *a, **kw)  # noqa: B023 - called only within this iteration
            self.observer = observe

        Pipeline.__init__ = init
        t0 = time.perf_counter()
        n_before = len(records)
        try:
            stats = run_offline(cfg, src, layout, lambda ev: None, vision=vis.pipeline_kwargs())
        finally:
            Pipeline.__init__ = orig_init
        run_s += time.perf_counter() - t0
        sim_s += stats.data_seconds
        vis.stop()
        for i, row in enumerate(lines):   # the case of each truth: the script line it came from
            case_by_time[round(src.t0 + row["t"], 1)] = case_of[i]
        truth += [r for r in src.truth if r["type"] in ("pick", "put_back")]
        seg_ms = [r["vision_ms"] for r in records[n_before:] if r["vision_status"] == "ok"]
        ms += seg_ms
        render_ms += vis.runner.source.render_ms
        for r in records[n_before:]:
            statuses[r["vision_status"]] += 1
        for role, m in (("action", vis.engine.action_model), ("product", vis.engine.product_model)):
            if m is not None:
                d = models.setdefault(role, {"name": m.name, "sha256": m.sha256[:12], "invocations": 0,
                                             "total_ms": 0.0, "size_mb": round(m.size_bytes / 1e6, 2)})
                d["invocations"] += m.stats.count
                d["total_ms"] += m.stats.total_ms
        calibration = vis.engine.health()["product_calibration"]
    for d in models.values():
        d["mean_invoke_ms"] = round(d.pop("total_ms") / max(1, d["invocations"]), 2)
    sc = score(truth, records, case_by_time)
    render_ms_per_event = render_ms / max(1, len(ms))
    return {"visits": args.visits, "segments": segments, "truth_events": len(truth), "detected": len(records),
            "sim_render_ms_per_event": round(render_ms_per_event, 1),
            "analysis_ms_without_render": round(float(np.mean(ms)) - render_ms_per_event, 1) if ms else None,
            "sim_seconds": round(sim_s, 1), "run_s": round(run_s, 1),
            "enrolled_images": n_enrolled, "enroll_s": round(enroll_s, 1),
            "vision_status": dict(statuses), "models": models, "product_calibration": calibration,
            "analysis_ms_mean": round(float(np.mean(ms)), 1) if ms else None,
            "analysis_ms_p95": round(float(np.percentile(ms, 95)), 1) if ms else None,
            **sc}


def cpu_run(args, work: Path, seconds: float) -> dict:
    """Live (speed 1) run of the same unit with the camera: CPU share of this process while the
    shelf is idle vs during events (vision analyses included)."""
    res = {}
    # during events: one interaction every 3.5 s, alternating shelves (what a busy shelf sees)
    busy = []
    for i in range(int((seconds - 6) / 3.5)):
        sku = [SKU["A"], SKU["F"], SKU["C"], SKU["I"]][i % 4]
        busy.append({"t": round(3.0 + 3.5 * i, 2), "type": "pick" if (i // 4) % 2 == 0 else "put_back",
                     "sku": sku, "shelf": HOME[sku][0], "dur": 1.5})
    script = work / "busy.jsonl"
    script.write_text("".join(json.dumps(r) + "\n" for r in busy))
    for label, shoppers, deadline in (("idle", False, None), ("events", True, None),
                                      ("events, deadline 100 ms", True, 100)):
        d = unit_config(work / f"state-{label[:6]}-{deadline}", script if shoppers else None, speed=1.0,
                        duration=seconds, seed=args.seed, action_model=args.action_model, shoppers=shoppers)
        if deadline is not None:
            d["vision"]["deadline_ms"] = deadline
        cfg = parse_config(d)
        layout = Layout.from_config(cfg)
        src = SimSource(cfg, layout)
        vis = build_vision(cfg, layout, src)
        enroll_sim_gallery(vis.engine.product_model, sorted(layout.skus), 2, geom=vis.runner.source.geom)
        vis.engine.calibrate()
        vis.start()
        # how long each event waited for its vision answer (submission → event built)
        submitted: dict[float, float] = {}
        waits: list[float] = []
        orig_submit = vis.engine.submit

        def submit(change, _orig=orig_submit):
            submitted[change.t_start] = time.perf_counter()  # noqa: B023 - called only within this iteration
            return _orig(change)

        vis.engine.submit = submit
        events = []

        def emit(ev):
            events.append(ev)  # noqa: B023 - called only within this iteration

        orig_init = Pipeline.__init__

        def init(self, *a, **kw):
            orig_init(self, *a, **kw)  # noqa: B023 - called only within this iteration
            self.observer = lambda ch, *_: (
                waits.append(time.perf_counter() - submitted[ch.t_start])  # noqa: B023 - within this iteration
                if ch.t_start in submitted else None)  # noqa: B023 - within this iteration

        Pipeline.__init__ = init
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            run_offline(cfg, src, layout, emit, vision=vis.pipeline_kwargs())
        finally:
            Pipeline.__init__ = orig_init
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        vis.stop()
        res[label] = {"cpu_share": round(cpu / wall, 3), "wall_s": round(wall, 1), "events": len(events),
                      "vision_ok": sum(1 for e in events if e.get("vision", {}).get("status") == "ok"),
                      "vision_timeouts": sum(1 for e in events if e.get("vision", {}).get("status") == "timeout"),
                      "event_wait_ms_mean": round(1000 * float(np.mean(waits)), 1) if waits else None,
                      "event_wait_ms_max": round(1000 * float(np.max(waits)), 1) if waits else None,
                      "deadline_ms": round(1000 * vis.deadline_s)}
    return res


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = ["equal_weight", "swap", "misplaced", "separable"]
    cs = [c for c in cases if c in result["accuracy"]["cases"]]
    w = [result["accuracy"]["cases"][c]["weight_acc"] for c in cs]
    f = [result["accuracy"]["cases"][c]["fused_acc"] for c in cs]
    x = np.arange(len(cs))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].bar(x - 0.2, w, 0.4, label="weight only")
    ax[0].bar(x + 0.2, f, 0.4, label="weight + camera")
    ax[0].axhline(0.95, color="k", ls="--", lw=0.8)
    ax[0].set_xticks(x, [f"{c}\n(n={result['accuracy']['cases'][c]['found']})" for c in cs])
    ax[0].set_ylim(0, 1.05)
    ax[0].set_ylabel("item accuracy")
    ax[0].legend(loc="lower right")
    ax[0].set_title("Item accuracy, one simulator run")
    cpu = result.get("cpu") or {}
    if cpu:
        ax[1].bar([k.replace(", ", "\n") for k in cpu], [cpu[k]["cpu_share"] * 100 for k in cpu])
        ax[1].set_ylabel("CPU % of one core (pipeline process)")
        ms = result["accuracy"].get("analysis_ms_mean")
        ax[1].set_title(f"Cost: vision analysis {ms} ms/event")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--visits", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--enroll", type=int, default=8, help="gallery images per SKU")
    ap.add_argument("--tidy-every", type=int, default=20,
                    help="visits per segment: misplaced units are put away between segments")
    ap.add_argument("--cpu-seconds", type=float, default=30.0, help="live seconds per CPU run (0: skip)")
    ap.add_argument("--action-model", type=Path, default=None,
                    help="default: the first models/action/*.tflite, if any")
    ap.add_argument("--camera", default="640x480", help="frame size WxH")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    global CAMERA
    CAMERA = tuple(int(v) for v in args.camera.lower().split("x"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.action_model is None:
        found = sorted((ROOT / "models" / "action").glob("*.tflite"))
        args.action_model = found[0] if found else None
    if args.action_model is None:
        log.warning("no action model in models/action/: fused figures use the product model only")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        acc = accuracy_run(args, work)
        cpu = cpu_run(args, work, args.cpu_seconds) if args.cpu_seconds > 0 else {}
    result = {"accuracy": acc, "cpu": cpu, "action_model": str(args.action_model) if args.action_model else None}
    rows = acc.pop("rows")
    (args.out / "vision_bench.json").write_text(json.dumps({**result, "rows": rows}, indent=1))
    plot(result, args.out / "vision_bench.png")
    print(f"\nvision bench: {acc['truth_events']} truth events, {acc['detected']} detected, "
          f"{acc['sim_seconds']} s simulated ({acc['segments']} segments) in {acc['run_s']} s; "
          f"camera {CAMERA[0]}×{CAMERA[1]}; vision status {acc['vision_status']}")
    print(f"{'case':<14}{'n':>4}{'found':>7}{'weight-only':>13}{'fused':>8}")
    for case in ("equal_weight", "swap", "misplaced", "separable"):
        d = acc["cases"].get(case)
        if d:
            print(f"{case:<14}{d['n']:>4}{d['found']:>7}{d['weight_acc']:>13.3f}{d['fused_acc']:>8.3f}")
    if acc.get("action_agreement") is not None:
        print(f"action model's best label agrees with the true pick/put_back (swap counts as either): "
              f"{acc['action_agreement']:.3f}")
    print(
        f"vision analysis per event: mean {acc['analysis_ms_mean']} ms, p95 {acc['analysis_ms_p95']} ms, "
        f"of which drawing the sim frames {acc['sim_render_ms_per_event']} ms "
        f"(→ {acc['analysis_ms_without_render']} ms for crops + models); models: "
        + ", ".join(
            f"{r} {m['name']} {m['mean_invoke_ms']} ms/invoke ({m['size_mb']} MB)" for r, m in acc["models"].items()
        )
    )
    for k, v in cpu.items():
        wait = (
            (
                f"; events waited for vision {v['event_wait_ms_mean']} ms mean, {v['event_wait_ms_max']} ms max "
                f"(deadline {v['deadline_ms']} ms, {v['vision_timeouts']} timeouts)"
            )
            if v["event_wait_ms_mean"] is not None
            else ""
        )
        print(
            f"CPU share ({k}, live {v['wall_s']} s, {v['events']} events): "
            f"{100 * v['cpu_share']:.1f} % of one core{wait}"
        )
    print(json.dumps({k: v for k, v in result.items()}, separators=(",", ":")))


if __name__ == "__main__":
    main()
