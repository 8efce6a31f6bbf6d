#!/usr/bin/env python3
"""Latency benchmark: from the sample that ends a weight change to the event at an MQTT subscriber.

    .venv/bin/python bench/latency_bench.py [--duration 180] [--seed 3] [--out bench/out]

1. A simulated unit (examples/sim-unit.yaml, shoppers on) is recorded for ``--duration`` seconds.
2. The recording is run once offline, one sample at a time, to find for every event the *decision
   sample*: the first sample after which the detector emits it. Its distance from the event's
   ``t_end`` is the detector's settle window (rest must hold this long before an event is called).
3. The same recording is played at real time (``speed: 1``) through the real service,
   ``shelfd run`` in a subprocess: pipeline, SQLite outbox (fsync), MQTT publisher, a private
   Mosquitto on a free loopback port, and a subscriber in this process.
4. The daemon's own delay = arrival at the subscriber − the moment the decision sample was
   released by the replay (the replay logs its recording↔monotonic clock mapping; CLOCK_MONOTONIC
   is shared by all processes of this host).

Prints the settle window and the daemon's delay (p50/p95/p99/max), writes
``<out>/latency_bench.json`` and ``<out>/latency_bench.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon import calstate  # noqa: E402
from daemon.config import parse_config  # noqa: E402
from daemon.demo import start_broker  # noqa: E402
from daemon.pipeline import Pipeline  # noqa: E402
from daemon.sensing.base import SampleBlock  # noqa: E402
from daemon.sensing.factory import layout_for  # noqa: E402
from daemon.sensing.recording import RecordingWriter, ShelfdReplaySource  # noqa: E402
from daemon.sensing.sim import SimSource  # noqa: E402

PACED = re.compile(r"replay paced at [\d.]+x: recording t=([\d.]+) is monotonic ([\d.]+)")


def base_config(tmp: Path, seed: int, duration: float) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "sim-unit.yaml").read_text())
    doc["state_dir"] = str(tmp / "state")
    doc["sensing"].update({"seed": seed, "speed": 0, "duration_s": duration})
    return doc


def record(doc: dict, path: Path) -> tuple[float, int]:
    cfg = parse_config(doc)
    layout = layout_for(cfg)
    src = SimSource(cfg, layout)
    cal = src.factory_calibration()
    calstate.save(Path(cfg.state_dir), cal)
    w = RecordingWriter(path, list(src.channels), src.rate_hz, src.units, cfg.unit_id, cal.to_json())
    src.start()
    while (b := src.read(1.0)) is not None:
        w.write(b)
    src.close()
    w.close()
    return src.rate_hz, w.rows


def decision_times(doc: dict, rec: Path) -> dict[tuple, float]:
    """Offline, one sample at a time: event key → recording time of the sample that emitted it."""
    cfg = parse_config(doc)
    layout = layout_for(cfg)
    src = ShelfdReplaySource(rec, speed=0)
    cal = calstate.load(Path(cfg.state_dir), cfg.unit_id)
    pipe = Pipeline(cfg.store_id, cfg.unit_id, layout, list(src.channels), src.units, src.rate_hz, cal,
                    cfg.detection)
    out: dict[tuple, float] = {}
    src.start()
    while (b := src.read()) is not None:
        for i in range(len(b)):
            one = SampleBlock(b.t[i:i + 1], b.values[i:i + 1], b.flags[i:i + 1])
            for ev in pipe.process(one):
                out[key(ev)] = float(b.t[i])
    src.close()
    return out


def key(ev: dict) -> tuple:
    return (ev["shelf"], tuple(ev["plates"]), ev["t_start"], ev["t_end"], ev["type"])


def t_of(s: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def live_run(doc: dict, rec: Path, tmp: Path) -> tuple[list[tuple[float, dict]], tuple[float, float], str]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    broker, port = start_broker(tmp)
    try:
        live = dict(doc)
        live["mqtt"] = {**doc.get("mqtt", {}), "port": port, "host": "127.0.0.1"}
        live["sensing"] = {"backend": "replay", "format": "shelfd", "path": str(rec), "speed": 1.0}
        cfg_path = tmp / "live.yaml"
        cfg_path.write_text(yaml.safe_dump(live))
        cfg = parse_config(live)
        arrivals: list[tuple[float, dict]] = []
        lock = threading.Lock()
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, _u, _f, rc, _p: cl.subscribe(f"{cfg.topic_base}/events", qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()

        def on_message(_c, _u, m):
            now = time.monotonic()
            with lock:
                arrivals.append((now, json.loads(m.payload)))

        c.on_message = on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        subscribed.wait(5)
        proc = subprocess.run([str(ROOT / ".venv" / "bin" / "shelfd"), "run", "--config", str(cfg_path)],
                              capture_output=True, text=True, timeout=float(doc["sensing"]["duration_s"]) + 120)
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()
        m = PACED.search(proc.stderr)
        if proc.returncode != 0 or not m:
            raise SystemExit(f"shelfd run failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        return arrivals, (float(m.group(1)), float(m.group(2))), proc.stderr
    finally:
        broker.terminate()
        broker.wait(5)


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of simulated shelf (real time!)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="latency-") as td:
        tmp = Path(td)
        doc = base_config(tmp, args.seed, args.duration)
        rec = tmp / "unit.rec"
        rate, rows = record(doc, rec)
        print(f"recorded {rows} rows at {rate:.0f} Hz ({args.duration:.0f} s); finding decision samples …",
              file=sys.stderr)
        decided = decision_times(doc, rec)
        print(f"{len(decided)} events offline; replaying in real time through shelfd + Mosquitto "
              f"(takes {args.duration:.0f} s) …", file=sys.stderr)
        arrivals, (rec_t0, mono_t0), log_text = live_run(doc, rec, tmp)
        if os.environ.get("LATENCY_DEBUG"):
            print(log_text, file=sys.stderr)

    delays, settles, unmatched = [], [], 0
    for arrived, ev in arrivals:
        t_dec = decided.get(key(ev))
        if t_dec is None:
            unmatched += 1
            continue
        released = mono_t0 + (t_dec - rec_t0)
        delays.append((arrived - released) * 1000.0)
        settles.append(t_dec - t_of(ev["t_end"]))
    d, s = np.array(delays), np.array(settles)
    res = {
        "duration_s": args.duration,
        "seed": args.seed,
        "events_offline": len(decided),
        "events_received": len(arrivals),
        "unmatched": unmatched,
        "daemon_delay_ms": {
            "p50": pct(d, 50),
            "p95": pct(d, 95),
            "p99": pct(d, 99),
            "max": float(d.max()) if len(d) else None,
        },
        "settle_window_s": {
            "min": float(s.min()) if len(s) else None,
            "p50": pct(s, 50),
            "max": float(s.max()) if len(s) else None,
        },
        "config_settle_s": parse_config(doc).detection.settle_s,
        "delays_ms": [round(x, 2) for x in delays],
        "load_average": list(os.getloadavg()),
    }
    (args.out / "latency_bench.json").write_text(json.dumps(res, indent=2))
    print(f"events: {len(decided)} offline, {len(arrivals)} received, {unmatched} unmatched")
    print(f"settle window (t_end → decision sample): min {res['settle_window_s']['min']:.2f} s, "
          f"median {res['settle_window_s']['p50']:.2f} s, max {res['settle_window_s']['max']:.2f} s "
          f"(settle_s = {res['config_settle_s']} s quiet, 2× on vibrating plates, + median filter)")
    print(f"daemon's own delay (decision sample released → event at subscriber): "
          f"p50 {res['daemon_delay_ms']['p50']:.1f} ms, p95 {res['daemon_delay_ms']['p95']:.1f} ms, "
          f"p99 {res['daemon_delay_ms']['p99']:.1f} ms, max {res['daemon_delay_ms']['max']:.1f} ms")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        a1.hist(d, bins=30, color="#3a7")
        a1.axvline(50, color="r", ls="--", label="target 50 ms")
        a1.set(xlabel="ms", ylabel="events", title="daemon's own delay: decision sample → subscriber")
        a1.legend()
        a2.hist(s, bins=30, color="#37a")
        a2.set(xlabel="s", title="settle window: t_end → decision sample")
        fig.tight_layout()
        fig.savefig(args.out / "latency_bench.png", dpi=110)
        print(f"plot: {args.out / 'latency_bench.png'}")
    except ImportError:
        print("matplotlib missing: no plot (pip install '.[bench]')", file=sys.stderr)
    print(json.dumps({k: v for k, v in res.items() if k != "delays_ms"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
