"""cartd killed with SIGKILL mid-stream restarts from its persistent MQTT session and loses nothing;
every receipt is issued exactly once."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from cartd_support import BASE, Cartd, Pub, health, receipt_carts, scenario, tracking, validate, write_config
from conftest import Broker, _find_mosquitto, _skip_or_fail

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path_factory):
    """Mosquitto configured as docs/aggregator.md asks: no cap on an offline session's queue."""
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    b = Broker(binary, tmp_path_factory.mktemp("mosq"))
    b.conf.write_text(b.conf.read_text() + "max_queued_messages 0\nmax_inflight_messages 0\n")
    b.start()
    yield b
    b.stop()


def test_kill_9_mid_stream_loses_nothing_and_receipts_once(tmp_path, broker, subscriber_factory):
    now = time.time()
    msgs, expect, last = scenario(40, 12, now, seed=7)
    cfg = write_config(tmp_path, broker, receipts={"deadline_s": 30.0})
    receipts = subscriber_factory(broker, f"{BASE}/_store/receipts/+")
    status = subscriber_factory(broker, f"{BASE}/_store/cartd/status/+")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    status.wait_for(1, timeout=15, where=lambda m: m.json().get("state") == "online")
    pub = Pub(broker)
    done = threading.Event()

    def feed():
        for i, (topic, doc) in enumerate(msgs):
            pub.send(topic, doc)
            if i % 50 == 49:
                pub.flush()
                time.sleep(0.08)
        pub.send("_store/tracking", tracking(now, []))
        for u, s in last.items():
            pub.send(f"{u}/health", health(now, s), retain=True)
        pub.flush()
        done.set()

    th = threading.Thread(target=feed)
    th.start()
    kills = 0
    try:
        for pause in (0.8, 1.2, 0.6):
            time.sleep(pause)
            cartd.kill()  # SIGKILL: no goodbye, mid-batch
            kills += 1
            time.sleep(0.3)
            before = len([m for m in status.messages if m.json().get("state") == "online"])
            cartd.start()
        # the last start is up (earlier ones may have died before they even connected)
        status.wait_for(before + 1, timeout=15, where=lambda m: m.json().get("state") == "online")
        th.join(60)
        assert done.is_set()
        # distinct receipt ids (a receipt republished after a crash repeats an id, same bytes)
        deadline = time.monotonic() + 40
        while len({m.json()["receipt_id"] for m in receipts.messages}) < len(expect) and time.monotonic() < deadline:
            time.sleep(0.2)
        got = [m for m in receipts.messages if m.json()["n"] == 1]
    finally:
        th.join(5)
        pub.close()
        rc = cartd.stop()
    assert kills == 3 and rc == 0
    # exactly one receipt n=1 per session on the broker (a republish after a crash would carry the
    # same receipt_id and bytes; count distinct ids and compare payloads)
    by_id: dict[str, bytes] = {}
    for m in got:
        rid = m.json()["receipt_id"]
        assert by_id.setdefault(rid, m.payload) == m.payload
        validate(m.json(), "receipt")
    assert len(by_id) == len(expect)
    assert receipt_carts([m.json() for m in got]) == expect
    with sqlite3.connect(tmp_path / "cartd.sqlite3") as db:
        n_events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        n_lines = db.execute("SELECT COUNT(*) FROM lines").fetchone()[0]
        n_receipts = db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        dead = db.execute("SELECT reason, detail FROM deadletters").fetchall()
    total_events = sum(1 for t, _ in msgs if t.endswith("/events"))
    assert n_events == total_events and n_lines == total_events
    assert n_receipts == len(expect)
    assert dead == []
