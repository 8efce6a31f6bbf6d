"""A live `shelfd run` publishes exactly the events `shelfd replay` writes for the same samples:
the unit's record, replayed through the full service (MQTT, outbox) in real time, against the
same recording replayed as fast as possible."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, shelfd, write_config

pytestmark = pytest.mark.integration
SKIP = ("event_id", "seq", "published_at", "historical")


def key(e: dict) -> str:
    return json.dumps({k: v for k, v in e.items() if k not in SKIP}, sort_keys=True)


def test_live_run_of_a_record_gives_the_replays_events(tmp_path, mosquitto, subscriber_factory):
    sim = write_config(tmp_path / "sim.yaml", state_dir=str(tmp_path / "sim-state"),
                       sensing={"backend": "sim", "seed": 11, "speed": 0, "events_per_min": 40, "duration_s": 40})
    rec = tmp_path / "unit.jsonl"
    r = shelfd("record", "--config", str(sim), "--out", str(rec), "--duration", "40")
    assert r.returncode == 0, r.stderr
    fast = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(sim))
    assert fast.returncode == 0, fast.stderr
    expected = [key(json.loads(line)) for line in fast.stdout.splitlines() if line.strip()]
    assert len(expected) >= 5
    # a counts recording needs the unit's calibration in state_dir: a short run of the sim unit
    # writes its factory calibration there, as on a unit calibrated in the field
    boot = write_config(tmp_path / "boot.yaml", state_dir=str(tmp_path / "sim-state"), mqtt__port=mosquitto.port,
                        sensing={"backend": "sim", "seed": 11, "speed": 0, "events_per_min": 1, "duration_s": 1})
    assert subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(boot)], cwd=REPO,
                          capture_output=True, timeout=60).returncode == 0
    live_cfg = write_config(tmp_path / "live.yaml", state_dir=str(tmp_path / "sim-state"),
                            mqtt__port=mosquitto.port,
                            sensing={"backend": "replay", "format": "shelfd", "path": str(rec), "speed": 4})
    sub = subscriber_factory(mosquitto, "gondola/v1/+/+/events")
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(live_cfg)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"))
    assert p.wait(90) == 0, (tmp_path / "log").read_text()
    got = sub.wait_for(len(expected), 10)
    assert [key(m.json()) for m in got] == expected
