"""cartd benchmark: events/s turned into committed cart lines, and exit → receipt latency under load.

One run, three set-ups, each through a real Mosquitto on loopback with real `cartd run` processes:
  1. one cartd on SQLite
  2. two cartd instances on PostgreSQL (MQTT 5 shared subscription)
  3. four cartd instances on PostgreSQL
For each: a store with 200 shoppers inside (tracking at 4 Hz for everybody), 4 shelf units
publishing item events QoS 1 as fast as a separate publisher process can (by default a lean MQTT
client writing pre-encoded packets, so the units' CPU does not come out of cartd's two cores;
--publisher paho uses a paho client as before), the units' heartbeat
(retained health every 0.2 s), and 40 shoppers leaving during the stream. Throughput = events /
(time from the first event published to the last cart line committed, polled in the database).
Receipt latency = exit published → receipt received on the broker.

    .venv/bin/python bench/cartd_bench.py [--events 30000] [--pg-events 10000] [--no-pg] [--publisher raw|paho]

Writes bench/out/cartd_bench.json and .png. PostgreSQL: 127.0.0.1:5432, database test (a schema
per run, dropped afterwards).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from aggregator.messages import fmt_ts  # noqa: E402

PREFIX, STORE = "gondola/v1", "bench"
BASE = f"{PREFIX}/{STORE}"
UNITS = ["u1", "u2", "u3", "u4"]
N_SESSIONS, N_EXITS = 200, 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
             "max_queued_messages 0", "max_inflight_messages 0", "log_dest stderr", "log_type error"]
    if os.geteuid() == 0:
        import pwd
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def client(port: int):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def event_doc(unit: str, seq: int, shelf: str, t: float) -> str:
    from ulid import ULID
    return json.dumps({"schema": "gondola.item-event/1", "event_id": str(ULID()), "store_id": STORE, "unit_id": unit,
                       "seq": seq, "shelf": shelf, "plates": [1], "type": "pick", "sku": "A", "quantity": 1,
                       "t_start": fmt_ts(t), "t_end": fmt_ts(t + 0.5), "delta_g": -50.0, "confidence": 0.95,
                       "candidates": [{"sku": "A", "quantity": 1, "score": 0.95}]}, separators=(",", ":"))


def publisher(port: int, payloads: list[tuple[str, int, str]], published, started, done) -> None:
    """Separate process: publish every event QoS 1 as fast as the broker takes them; after each
    acknowledged chunk, record each unit's last published seq (what its heartbeat claims)."""
    c = client(port)
    started.value = time.time()
    infos = []
    last = {u: 0 for u in UNITS}
    for i, (unit, seq, p) in enumerate(payloads):
        infos.append(c.publish(f"{BASE}/{unit}/events", p, qos=1))
        last[unit] = seq
        if i % 500 == 499:
            for inf in infos:
                inf.wait_for_publish(30)
            infos = []
            for k, u in enumerate(UNITS):
                published[k] = last[u]
    for inf in infos:
        inf.wait_for_publish(30)
    for k, u in enumerate(UNITS):
        published[k] = last[u]
    done.value = time.time()
    c.disconnect()
    c.loop_stop()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def raw_publisher(port: int, payloads: list[tuple[str, int, str]], published, started, done) -> None:
    """Separate process: the same events as publisher(), sent by a lean MQTT 3.1.1 client.

    The units are separate machines in a store; here they share two cores with cartd, and a paho
    publisher at >10k msg/s takes a whole core that cartd then lacks. This one writes pre-encoded
    PUBLISH packets (QoS 1) in chunks of 500 with at most 2000 unacknowledged, and reads the
    PUBACKs (Mosquitto acknowledges one connection's packets in order). Same topics, payloads,
    QoS and heartbeat bookkeeping as publisher()."""
    import select
    n = len(payloads)
    pkts, marks, last = [], [], {u: 0 for u in UNITS}
    for i, (unit, seq, p) in enumerate(payloads):
        mid = i % 65535 + 1
        pkts.append(_packet(0x32, _mqtt_str(f"{BASE}/{unit}/events") + mid.to_bytes(2, "big") + p.encode()))
        last[unit] = seq
        marks.append(tuple(last[u] for u in UNITS))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_packet(0x10, _mqtt_str("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
                         + _mqtt_str(f"bench-pub-{os.getpid()}")))
    buf = b""
    while len(buf) < 4:
        buf += sock.recv(4 - len(buf))
    if buf[0] != 0x20 or buf[3] != 0:
        raise RuntimeError(f"CONNACK refused: {buf!r}")
    started.value = time.time()
    sent = acked = 0
    buf = b""
    while acked < n:
        if sent < n and sent - acked < 2000:
            j = min(n, sent + 500)
            sock.sendall(b"".join(pkts[sent:j]))
            sent = j
            if sent - acked < 2000 and not select.select([sock], [], [], 0)[0]:
                continue
        buf += sock.recv(65536)
        while len(buf) >= 2 and len(buf) >= 2 + buf[1]:  # PUBACKs: 4 bytes each (length < 128)
            if buf[0] >> 4 == 4:
                acked += 1
            buf = buf[2 + buf[1]:]
        if acked:
            for k in range(len(UNITS)):
                published[k] = marks[acked - 1][k]
    done.value = time.time()
    sock.sendall(bytes([0xE0, 0]))
    sock.close()


def run_setup(label: str, port: int, storages: list[dict], n_events: int, work: Path, count_lines,
              pub_kind: str = "raw") -> dict:
    print(f"\n== {label}: {n_events} events", flush=True)
    load_before = os.getloadavg()
    now = time.time()
    (work / "cat.yaml").write_text(yaml.safe_dump({"items": [{"sku": "A", "name": "Apple", "price": 100}]}))
    procs = []
    # Each set-up has its own instance ids and shared group: Mosquitto keeps giving a shared
    # group's offline members (a persistent session of an earlier set-up, expiry 600 s) their share
    # of the messages, so reusing the group would strand 1/3 (x2) or 1/5 (x4) of the events.
    tag = label.replace(" ", "")
    for i, st in enumerate(storages):
        cfg = {"version": 1, "store_id": STORE, "instance_id": f"{tag}-{i}",
               "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX, "session_expiry_s": 600,
                        "shared_group": f"bench-{tag}"},
               "storage": st, "catalogue": str(work / "cat.yaml"),
               "units": [{"unit_id": u} for u in UNITS], "receipts": {"deadline_s": 30},
               "health_interval_s": 2.0, "tick_s": 0.1}
        path = work / f"cartd-{tag}-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(work / f"{path.stem}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "aggregator.cli", "run", "--config", str(path)],
                                      cwd=REPO, stdout=log, stderr=log))
    c = client(port)
    receipts: dict[str, float] = {}
    rlock = threading.Lock()

    def on_message(_c, _u, msg):
        if "/_store/receipts/" in msg.topic:
            with rlock:
                receipts.setdefault(msg.topic.rsplit("/", 1)[1], time.monotonic())
    online: set[str] = set()
    counters: dict[str, dict] = {}

    def on_message2(_c, _u, msg):
        if "/_store/cartd/health/" in msg.topic:
            try:
                counters[msg.topic] = json.loads(msg.payload).get("counters", {})
            except ValueError:
                pass
        elif "/_store/cartd/status/" in msg.topic:
            if json.loads(msg.payload).get("state") == "online":
                online.add(msg.topic)
        else:
            on_message(_c, _u, msg)
    c.on_message = on_message2
    c.subscribe(f"{BASE}/_store/receipts/+", qos=1)
    c.subscribe(f"{BASE}/_store/cartd/status/+", qos=1)
    c.subscribe(f"{BASE}/_store/cartd/health/+", qos=1)
    deadline = time.monotonic() + 60
    while len(online) < len(storages) and time.monotonic() < deadline:  # every instance subscribed
        time.sleep(0.1)
    time.sleep(0.5)
    # shoppers enter; tracking history for the past 12 s (everyone at their own shelf)
    sid = [f"B{i:04d}" for i in range(N_SESSIONS)]
    for s in sid:
        c.publish(f"{BASE}/_store/gates/entry", json.dumps({"schema": "gondola.gate-entry/1", "session_id": s,
                                                            "t": fmt_ts(now - 60), "gate": "g"}), qos=1)
    for k in range(48):
        t = now - 12 + 0.25 * k
        obs = [
            {"session_id": s, "unit_id": UNITS[i % 4], "shelf": str(i), "confidence": 0.9} for i, s in enumerate(sid)
        ]
        c.publish(
            f"{BASE}/_store/tracking",
            json.dumps({"schema": "gondola.tracking/1", "t": fmt_ts(t), "observations": obs}),
            qos=1,
        )
    time.sleep(1.0)
    base_lines = count_lines()
    # the events: shoppers who stay (index ≥ N_EXITS), at their shelf, inside the tracked window
    seq = {u: 0 for u in UNITS}
    payloads = []
    for k in range(n_events):
        i = N_EXITS + (k * 7919) % (N_SESSIONS - N_EXITS)
        u = UNITS[i % 4]
        seq[u] += 1
        payloads.append((u, seq[u], event_doc(u, seq[u], str(i), now - 10 + (k % 16) * 0.5)))
    published = mp.Array("q", len(UNITS))
    started, done = mp.Value("d", 0.0), mp.Value("d", 0.0)
    pub = mp.Process(target=raw_publisher if pub_kind == "raw" else publisher,
                     args=(port, payloads, published, started, done))
    pub.start()
    # heartbeat + exits while the stream runs
    exits: dict[str, float] = {}
    t_poll = []
    k_exit = 0
    t0 = time.monotonic()
    last_hb = last_tr = 0.0
    obs_now = [
        {"session_id": s, "unit_id": UNITS[i % 4], "shelf": str(i), "confidence": 0.9} for i, s in enumerate(sid)
    ]
    finished_at = None
    last_n, last_progress = -1, time.monotonic()
    while True:
        mono = time.monotonic()
        if mono - last_hb >= 0.2:
            last_hb = mono
            # the units' heartbeat: retained health with the time and their last published seq
            for k, u in enumerate(UNITS):
                c.publish(f"{BASE}/{u}/health", json.dumps({"t": fmt_ts(time.time()), "outbox": {
                    "depth": 0, "oldest_pending_age_s": None, "last_seq": int(published[k])}}), qos=1, retain=True)
        if mono - last_tr >= 0.25:
            # the tracker keeps running at 4 Hz (association waits until tracking passes an event)
            last_tr = mono
            c.publish(f"{BASE}/_store/tracking", json.dumps({"schema": "gondola.tracking/1", "t": fmt_ts(time.time()),
                                                             "observations": obs_now}), qos=1)
        if started.value and k_exit < N_EXITS and mono - t0 >= 0.3 + k_exit * 0.15:
            s = sid[k_exit]
            exits[s] = time.monotonic()
            c.publish(f"{BASE}/_store/gates/exit", json.dumps({"schema": "gondola.gate-exit/1", "session_id": s,
                                                               "t": fmt_ts(time.time()), "gate": "g"}), qos=1)
            k_exit += 1
        n = count_lines() - base_lines
        t_poll.append((time.time(), n))
        if n >= n_events and finished_at is None:
            finished_at = time.time()
        with rlock:
            got = sum(1 for s in exits if s in receipts)
        if finished_at and k_exit == N_EXITS and got == N_EXITS:
            break
        if n != last_n:
            last_n, last_progress = n, mono
        if mono - t0 > 240 or (done.value and mono - last_progress > 20):
            print(f"  stopped waiting: {n} of {n_events} lines committed", flush=True)
            break
        time.sleep(0.05)
    pub.join(30)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    # The units' retained health would otherwise seed the next set-up's fresh units with this
    # run's last_seq as their baseline (and hide any seq gap there).
    for u in UNITS:
        c.publish(f"{BASE}/{u}/health", b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    t_start = started.value
    t_end = finished_at or time.time()
    rate = n_events / (t_end - t_start) if finished_at else float("nan")
    pub_rate = n_events / (done.value - t_start) if done.value else float("nan")
    lat = sorted(receipts[s] - exits[s] for s in exits if s in receipts)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")
    res = {"setup": label, "instances": len(storages), "events": n_events, "publisher": pub_kind,
           "lines_per_s": round(rate, 1),
           "publish_rate": round(pub_rate, 1), "receipts": len(lat), "receipt_p50_s": round(pct(50), 3),
           "receipt_p99_s": round(pct(99), 3), "receipt_max_s": round(lat[-1], 3) if lat else None,
           # The machine is shared: the 1-minute load average before and after says how much.
           "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
           "cpus": os.cpu_count(),
           # From the instances' last health (every 2 s): deadlocks/serialization failures retried.
           "tx_retries": sum(int(v.get("tx_retries", 0)) for k, v in counters.items() if f"/{tag}-" in k),
           "tx_splits": sum(int(v.get("tx_splits", 0)) for k, v in counters.items() if f"/{tag}-" in k)}
    print(f"  committed lines/s {res['lines_per_s']:.0f} (publisher offered {res['publish_rate']:.0f}/s); "
          f"receipts {len(lat)}/{N_EXITS}: p50 {res['receipt_p50_s']} s, p99 {res['receipt_p99_s']} s; "
          f"load average {res['loadavg_1m_before']} → {res['loadavg_1m_after']} on {res['cpus']} cores; "
          f"transaction retries {res['tx_retries']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=30000)
    ap.add_argument("--pg-events", type=int, default=10000)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--publisher", choices=["raw", "paho"], default="raw",
                    help="raw: lean pre-encoded MQTT 3.1.1 publisher (default); paho: paho-mqtt client")
    ap.add_argument("--dsn", default="host=127.0.0.1 port=5432 dbname=test")
    args = ap.parse_args()
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cartd-bench-"))
    broker, port = start_mosquitto(work)
    results = []
    try:
        db = work / "cartd.sqlite3"

        def count_sqlite():
            if not db.exists():
                return 0
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                    return c.execute("SELECT COUNT(*) FROM lines").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
        if not args.no_sqlite:
            results.append(
                run_setup(
                    "sqlite x1",
                    port,
                    [{"type": "sqlite", "path": str(db)}],
                    args.events,
                    work,
                    count_sqlite,
                    args.publisher,
                )
            )
        if not args.no_pg:
            import psycopg
            for n in (2, 4):
                schema = f"cartd_bench_{uuid.uuid4().hex[:8]}"
                st = {"type": "postgres", "dsn": args.dsn, "schema": schema}

                def count_pg(schema=schema):
                    try:
                        with psycopg.connect(args.dsn) as c:
                            c.execute(f'SET search_path TO "{schema}"')
                            return c.execute("SELECT COUNT(*) FROM lines").fetchone()[0]
                    except psycopg.Error:
                        return 0
                try:
                    results.append(run_setup(f"postgres x{n}", port, [st] * n, args.pg_events, work, count_pg,
                                             args.publisher))
                finally:
                    if os.environ.get("CARTD_BENCH_KEEP"):  # kept for a look at events.state etc.
                        print(f"  kept schema {schema}", flush=True)
                    else:
                        with psycopg.connect(args.dsn, autocommit=True) as c:
                            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        broker.terminate()
        broker.wait(5)
    (out / "cartd_bench.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [r["setup"] for r in results]
        a1.bar(labels, [r["lines_per_s"] for r in results], color="#4a7")
        a1.axhline(10000, ls="--", color="grey", label="target 10k/s (SQLite)")
        a1.set_ylabel("committed cart lines / s")
        a1.legend()
        x = range(len(results))
        a2.bar([i - 0.2 for i in x], [r["receipt_p50_s"] for r in results], width=0.4, label="p50")
        a2.bar([i + 0.2 for i in x], [r["receipt_p99_s"] for r in results], width=0.4, label="p99")
        a2.set_xticks(list(x), labels)
        a2.set_ylabel("exit → receipt on broker (s)")
        a2.legend()
        loads = ", ".join(f"{r['setup']} {r['loadavg_1m_before']:.1f}" for r in results)
        fig.suptitle(
            f"cartd on {os.cpu_count()} shared cores, Mosquitto loopback (1-min load before: {loads})", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(out / "cartd_bench.png", dpi=110)
    except ImportError:
        pass
    print(
        f"\nwrote {out / 'cartd_bench.json'}"
        + (f" and {out / 'cartd_bench.png'}" if (out / 'cartd_bench.png').exists() else "")
    )
    if not os.environ.get("CARTD_BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
