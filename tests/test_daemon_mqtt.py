"""`shelfd run` as a real subprocess against a real Mosquitto: contract, clean stop, and no loss
through broker outages and SIGKILLs."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import REPO, validate_event, write_config

pytestmark = pytest.mark.integration
PREFIX = "gondola/v1/demo-store/sim-unit-1"


def start_daemon(cfg, log):
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)],
                            cwd=REPO, stderr=open(log, "a"), stdout=subprocess.DEVNULL)


def unit_config(tmp_path, broker, **sensing):
    s = {"backend": "sim", "seed": 5, "speed": 0, "events_per_min": 40, "duration_s": 240}
    s.update(sensing)
    return write_config(tmp_path / "unit.yaml", state_dir=str(tmp_path / "state"),
                        mqtt__port=broker.port, mqtt__health_interval_s=1, sensing=s)


def events_of(sub):
    return [m.json() for m in sub.messages if m.topic.endswith("/events")]


def test_run_publishes_contract_topics(tmp_path, mosquitto, subscriber_factory):
    cfg = unit_config(tmp_path, mosquitto)
    sub = subscriber_factory(mosquitto, f"{PREFIX}/#")
    p = start_daemon(cfg, tmp_path / "log")
    assert p.wait(60) == 0, (tmp_path / "log").read_text()
    sub.wait_for(1, 5, where=lambda m: m.topic.endswith("/status") and m.json()["state"] == "stopped")
    evs = events_of(sub)
    assert len(evs) >= 20
    for e in evs:
        validate_event(e)
        assert e["store_id"] == "demo-store" and e["unit_id"] == "sim-unit-1"
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert all(not m.retain for m in sub.messages if m.topic.endswith("/events"))
    # retained documents a late subscriber sees at once
    late = subscriber_factory(mosquitto, f"{PREFIX}/+")
    got = {m.topic.rsplit("/", 1)[1]: m.json() for m in late.wait_for(3, 5) if m.retain}
    assert got["status"]["state"] == "stopped"
    assert got["health"]["channels"] and got["health"]["outbox"]["depth"] == 0
    assert got["state"]["facings"] and "plates" in got["state"]


def test_sigterm_stops_cleanly(tmp_path, mosquitto, subscriber_factory):
    cfg = unit_config(tmp_path, mosquitto, speed=1.0, duration_s=None)
    sub = subscriber_factory(mosquitto, f"{PREFIX}/status")
    p = start_daemon(cfg, tmp_path / "log")
    sub.wait_for(1, 20, where=lambda m: m.json()["state"] == "online")
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0
    sub.wait_for(1, 5, where=lambda m: m.json()["state"] == "stopped")
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log


def test_unreachable_broker_at_start_keeps_events(tmp_path, mosquitto, subscriber_factory):
    mosquitto.stop()
    cfg = unit_config(tmp_path, mosquitto, speed=4.0, duration_s=None)
    p = start_daemon(cfg, tmp_path / "log")
    try:
        time.sleep(6)
        assert p.poll() is None, "the daemon must keep running without a broker"
        db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3")
        stored = db.execute("select count(*) from events").fetchone()[0]
        db.close()
        assert stored >= 1
        mosquitto.start()
        sub = subscriber_factory(mosquitto, f"{PREFIX}/events")
        got = sub.wait_for(stored, 20)
        assert {m.json()["seq"] for m in got} >= set(range(1, stored + 1))
        assert "unreachable" in (tmp_path / "log").read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(15)


def test_outage_and_sigkill_lose_nothing(tmp_path, persistent_mosquitto, subscriber_factory):
    broker = persistent_mosquitto
    cfg = unit_config(tmp_path, broker, speed=8.0, duration_s=None, events_per_min=60)
    # a persistent session: the subscriber also receives what was published while it was away
    sub = subscriber_factory(broker, f"{PREFIX}/events", client_id="loss-test", clean_session=False)
    log = tmp_path / "log"
    p = start_daemon(cfg, log)
    try:
        time.sleep(3)
        broker.stop()                       # outage: events pile up in the outbox
        time.sleep(3)
        for _ in range(3):                  # power-cut-like deaths at arbitrary instants
            p.send_signal(signal.SIGKILL)
            p.wait(5)
            p = start_daemon(cfg, log)
            time.sleep(1.5)
        broker.start()
        time.sleep(3)
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        p = start_daemon(cfg, log)
        time.sleep(3)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3")
    stored = {seq: eid for seq, eid in db.execute("select seq, event_id from events")}
    db.close()
    assert len(stored) >= 10
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = events_of(sub)
        if {e["seq"] for e in got} >= set(stored):
            break
        time.sleep(0.2)
    got = events_of(sub)
    by_seq: dict[int, set[str]] = {}
    for e in got:
        by_seq.setdefault(e["seq"], set()).add(e["event_id"])
    missing = sorted(set(stored) - set(by_seq))
    assert not missing, f"events never delivered: seq {missing[:20]}"
    assert all(len(ids) == 1 for ids in by_seq.values()), "an event was published under two ids"
    assert all(by_seq[s] == {eid} for s, eid in stored.items())
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "seq has gaps"
