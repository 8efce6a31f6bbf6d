"""`make demo`: a private Mosquitto, a simulated shelf unit running the real daemon, events live.

Stops on Ctrl-C or after ``--seconds`` and leaves no process behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_bin() -> str:
    for c in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("mosquitto is missing: install it with 'sudo apt-get install mosquitto'")


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private Mosquitto on a free loopback port (config in ``work``), once it accepts connections."""
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate what is still running, newest first; kill what does not stop within 5 s."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def format_event(e: dict[str, Any], names: dict[str, str]) -> str:
    """One line per item event, in fixed columns whatever the plates, quantity or name."""
    plates = ",".join(str(p) for p in e.get("plates") or [])
    sku = str(e.get("sku") or "?")
    name = names.get(sku, sku)
    name = name if len(name) <= 26 else name[:25] + "…"
    return (f"  #{e['seq']:<5} {e['t_end'][11:23]}  shelf {e['shelf']!s:<3} plates {plates:<7}"
            f"  {e['type']:<14} {e['quantity']:>2} × {name:<26}"
            f" Δ {e['delta_g']:+8.1f} g  confidence {e['confidence']:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "sim-unit.yaml")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gondola-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker, port = start_broker(work)
        procs.append(broker)
        cfg = yaml.safe_load(args.config.read_text())
        cfg["mqtt"]["port"] = port
        cfg["state_dir"] = str(work / "state")
        cfg["sensing"]["duration_s"] = args.seconds
        (work / "unit.yaml").write_text(yaml.safe_dump(cfg))
        prefix = f"{cfg['mqtt'].get('topic_prefix', 'gondola/v1')}/{cfg['store_id']}/{cfg['unit_id']}"
        names = {p["sku"]: p.get("name", p["sku"]) for p in cfg.get("planogram", [])}
        done = threading.Event()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.topic.endswith("/events"):
                print(format_event(json.loads(msg.payload), names), flush=True)
            elif msg.topic.endswith("/status"):
                s = json.loads(msg.payload)
                print(f"  [status] {s['state']}{' — ' + s['reason'] if s.get('reason') else ''}", flush=True)
                if s["state"] == "stopped":
                    done.set()

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gondola-demo-viewer")
        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.subscribe([(f"{prefix}/events", 1), (f"{prefix}/status", 1)])
        sub.loop_start()
        print(f"Gondola demo: broker 127.0.0.1:{port}, unit {prefix}, {args.seconds:.0f} s of simulated "
              f"shoppers (Ctrl-C to stop)\n  watch it yourself: mosquitto_sub -p {port} -t '{prefix}/#' -v\n",
              flush=True)
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(work / "unit.yaml")],
                                  cwd=ROOT, stderr=open(work / "shelfd.log", "w"))
        procs.append(daemon)
        try:
            daemon.wait()
        except KeyboardInterrupt:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
        done.wait(3)
        sub.loop_stop()
        print(f"\ndaemon log: {work / 'shelfd.log'}")
        return 0
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
