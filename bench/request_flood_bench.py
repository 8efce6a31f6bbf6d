#!/usr/bin/env python3
"""Request floods against a running unit: do live events keep flowing, does memory stay bounded?

    .venv/bin/python bench/request_flood_bench.py [--idle 8] [--seed 7] [--repo DIR] [--json OUT]

A private Mosquitto on a free loopback port (daemon.demo.start_broker, as the demo and the latency
bench use) and one simulated unit running the real ``shelfd run`` in real time (examples/sim-unit.yaml,
60 interactions a minute), whose outbox already holds 1,000 delivered events (seq 1..1000). After
``--idle`` seconds of quiet (idle RSS = median of the samples), three floods, each followed by a
few seconds of watching:

1. nested JSON: 6 KB of ``[[[...]]]`` on ``req/rebirth``, 3 a second for 10 s;
2. 2,000 requests in 3 s, every command the unit knows (and one it does not), round robin;
3. 1,000 ``resend`` requests (random ranges inside 1..1000, ~68 bytes each) as fast as they go.

For each phase: live events seen, their delay (subscriber arrival − the moment the daemon stored
the event in its outbox, read back from ``stored_at``: what a flood can add, since the detector's
own settle window is the same with or without one), the unit's RSS (max, and at the end, vs idle),
replies (ok / refused), and events republished by resends. Targets: delay ≤ 1 s, RSS within
100 MB of idle. Live events also count when they arrive late, in a later phase: a phase is
charged with every live event *stored* during it.

``--repo DIR`` runs the daemon from another checkout (e.g. ``git archive`` of an older commit)
to measure the before case with the same floods.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon.demo import start_broker, stop_all  # noqa: E402

COMMANDS = ["info", "snapshot", "raw", "rest", "tare", "rezero", "maintenance", "calibration_reload",
            "resend", "rebirth", "no_such_command"]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class Watcher:
    """Subscribes to the unit's events and replies; samples the daemon's RSS every 0.2 s."""

    def __init__(self, port: int, prefix: str, pid: int):
        self.lock = threading.Lock()
        self.events: list[tuple[float, dict]] = []
        self.replies: list[tuple[float, dict]] = []
        self.rss: list[tuple[float, float]] = []
        self.pid = pid
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood-watcher")
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([(f"{prefix}/events", 1), (f"{prefix}/res/#", 1)])
        self.c.loop_start()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _on_message(self, _c, _u, msg) -> None:
        now = time.time()
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            (self.events if msg.topic.endswith("/events") else self.replies).append((now, doc))

    def _sample(self) -> None:
        while not self._stop.is_set():
            r = rss_mb(self.pid)
            if r is not None:
                with self.lock:
                    self.rss.append((time.time(), r))
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self.c.loop_stop()
        self.c.disconnect()


def flooder(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood-sender")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def paced(c: mqtt.Client, msgs: list[tuple[str, bytes]], seconds: float) -> None:
    t0 = time.monotonic()
    for i, (topic, body) in enumerate(msgs):
        due = t0 + seconds * i / max(1, len(msgs))
        dt = due - time.monotonic()
        if dt > 0:
            time.sleep(dt)
        c.publish(topic, body, qos=1)


def prefill_outbox(state: Path, store: str, unit: str, n: int) -> None:
    from daemon.publish.outbox import Outbox
    ob = Outbox(state / "outbox.sqlite3")
    ids = []
    for i in range(n):
        ev = ob.add({"schema": "gondola.item-event/1", "store_id": store, "unit_id": unit, "shelf": "1",
                     "plates": [1], "type": "pick", "sku": "049000028911", "quantity": 1,
                     "t_start": "2026-01-01T00:00:00.000Z", "t_end": "2026-01-01T00:00:01.000Z",
                     "delta_g": -640.0, "confidence": 1.0, "candidates": [], "note": f"prefill {i}"})
        ids.append(ev["event_id"])
    ob.mark_sent_many(ids)
    ob.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=float, default=8.0, help="seconds of quiet before the floods")
    ap.add_argument("--watch", type=float, default=6.0, help="seconds watched after each flood")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose daemon to run")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="gondola-flood-"))
    procs: list[subprocess.Popen] = []
    try:
        broker, port = start_broker(work)
        procs.append(broker)
        cfg = yaml.safe_load((ROOT / "examples" / "sim-unit.yaml").read_text())
        cfg["mqtt"]["port"] = port
        cfg["mqtt"]["health_interval_s"] = 2
        cfg["state_dir"] = str(work / "state")
        cfg["sensing"].update({"seed": args.seed, "speed": 1.0, "events_per_min": 120})
        (work / "unit.yaml").write_text(yaml.safe_dump(cfg))
        prefix = f"{cfg['mqtt']['topic_prefix']}/{cfg['store_id']}/{cfg['unit_id']}"
        (work / "state").mkdir()
        prefill_outbox(work / "state", cfg["store_id"], cfg["unit_id"], 1000)
        env = dict(os.environ, PYTHONPATH=str(args.repo))
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(work / "unit.yaml")],
                                  cwd=args.repo, env=env, stderr=open(work / "shelfd.log", "w"))
        procs.append(daemon)
        w = Watcher(port, prefix, daemon.pid)
        fl = flooder(port)
        marks: dict[str, tuple[float, float]] = {}

        def phase(name: str, fn, watch: float) -> None:
            t0 = time.time()
            fn()
            time.sleep(watch)
            marks[name] = (t0, time.time())
            print(f"  {name}: done", flush=True)

        print(f"broker 127.0.0.1:{port}, unit {prefix} (pid {daemon.pid}), work {work}", flush=True)
        phase("idle", lambda: None, args.idle)
        nested = b'{"txid": "deep", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
        phase("nested JSON 3/s x 10 s", lambda: paced(fl, [(f"{prefix}/req/rebirth", nested)] * 30, 10.0), args.watch)

        def mixed() -> list[tuple[str, bytes]]:
            out = []
            for i in range(2000):
                cmd = COMMANDS[i % len(COMMANDS)]
                body = {"txid": f"m{i}", "plates": ["1/1"], "load_g": 0, "seconds": 5, "from_seq": 1, "to_seq": 20}
                out.append((f"{prefix}/req/{cmd}", json.dumps(body).encode()))
            return out
        phase("2000 requests in 3 s", lambda: paced(fl, mixed(), 3.0), args.watch)

        def resends() -> list[tuple[str, bytes]]:
            out = []
            for i in range(1000):
                lo = rng.randint(1, 1000)
                hi = rng.randint(lo, 1000)
                out.append(
                    (f"{prefix}/req/resend", json.dumps({"txid": f"r{i}", "from_seq": lo, "to_seq": hi}).encode())
                )
            return out
        rs = resends()
        print(f"  resend requests: {sum(len(b) for _, b in rs) / 1024:.0f} KiB in all", flush=True)
        phase("1000 resend requests", lambda: paced(fl, rs, 0.5), args.watch + 4)

        time.sleep(2.0)  # stragglers
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        w.close()
        fl.loop_stop()
        con = sqlite3.connect(work / "state" / "outbox.sqlite3")
        stored = {r[0]: r[1] for r in con.execute("SELECT seq, stored_at FROM events")}
        con.close()

        results = {}
        with w.lock:
            events, replies, rss = list(w.events), list(w.replies), list(w.rss)
        idle_rss = statistics.median([r for t, r in rss if marks["idle"][0] <= t <= marks["idle"][1]])
        print(f"\nidle RSS {idle_rss:.0f} MB; target: live-event delay <= 1 s, RSS <= idle + 100 MB\n")
        print(f"{'phase':<26} {'live':>4} {'delay max':>9} {'p50':>7} {'RSS max':>8} {'end':>6}"
              f" {'replies ok/refused':>19} {'republished':>11}")
        arrival: dict[int, float] = {}
        for t, e in events:
            if not e.get("historical") and e["seq"] > 1000:
                arrival.setdefault(e["seq"], t)
        never = [q for q in stored if q > 1000 and q not in arrival]
        for name, (t0, t1) in marks.items():
            live_seqs = [q for q, st in stored.items() if q > 1000 and t0 <= st <= t1 and q in arrival]
            live = [(arrival[q], {"seq": q}) for q in live_seqs]
            delays = [arrival[q] - stored[q] for q in live_seqs]
            hist = sum(1 for t, e in events if t0 <= t <= t1 and e.get("historical"))
            rp = [d for t, d in replies if t0 <= t <= t1]
            ok = sum(1 for d in rp if d.get("ok"))
            phase_rss = [r for t, r in rss if t0 <= t <= t1]
            res = {"live_events": len(live), "delay_max_s": max(delays) if delays else None,
                   "delay_p50_s": statistics.median(delays) if delays else None,
                   "rss_max_mb": max(phase_rss) if phase_rss else None,
                   "rss_end_mb": phase_rss[-1] if phase_rss else None,
                   "replies_ok": ok, "replies_refused": len(rp) - ok, "republished": hist}
            results[name] = res
            f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
            print(f"{name:<26} {len(live):>4} {f(res['delay_max_s'], 3):>8}s {f(res['delay_p50_s'], 3):>6}s"
                  f" {f(res['rss_max_mb'], 0):>6}MB {f(res['rss_end_mb'], 0):>4}MB"
                  f" {ok:>10}/{len(rp) - ok:<8} {hist:>11}")
        worst_delay = max((r["delay_max_s"] or 0) for r in results.values())
        worst_rss = max((r["rss_max_mb"] or 0) for r in results.values()) - idle_rss
        no_live = [n for n, r in results.items() if r["live_events"] == 0]
        ok = worst_delay <= 1.0 and worst_rss <= 100 and not no_live and not never
        print(f"\nworst live-event delay {worst_delay:.3f} s, worst RSS {worst_rss:+.0f} MB vs idle"
              f"{'; no live events in ' + ', '.join(no_live) if no_live else ''}"
              f"{f'; {len(never)} live events never arrived' if never else ''}: {'PASS' if ok else 'FAIL'}")
        if args.json:
            args.json.write_text(json.dumps({"idle_rss_mb": idle_rss, "phases": results, "never_arrived": len(never),
                                             "pass": ok}, indent=2))
        return 0 if ok else 1
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
