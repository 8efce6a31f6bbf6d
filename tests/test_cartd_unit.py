"""cartd against the REAL unit side: the daemon's Publisher + Outbox (in process, as shelfd runs
them) on a real Mosquitto, with a real `cartd run` subprocess. Two of the unit's events never
reach the broker (marked sent in the outbox without being published, as if their PUBACK had come
and the broker then lost them), so cartd sees a seq gap, sends `req/resend`, the daemon answers
with its own reply format and republishes them flagged historical, and the receipt is complete."""
from __future__ import annotations

import sqlite3
import time

import pytest
from cartd_support import BASE, PREFIX, STORE, Cartd, Pub, entry, exit_, ts, validate, write_config

from daemon.config import parse_config
from daemon.publish.mqtt import Publisher
from daemon.publish.outbox import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def unit_cfg(tmp, broker):
    return parse_config({
        "version": 1, "unit_id": "unit-a", "store_id": STORE, "state_dir": str(tmp / "unit"),
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX},
        "sensing": {"backend": "sim"},
        "shelves": [{"id": "1", "plates": [{"id": 0}]}],
    })


def unit_event(sku: str, t: float) -> dict:
    return {"schema": "gondola.item-event/1", "store_id": STORE, "unit_id": "unit-a", "shelf": "1",
            "plates": [0], "type": "pick", "sku": sku, "quantity": 1, "t_start": ts(t), "t_end": ts(t + 0.8),
            "delta_g": -120.0, "confidence": 0.93, "candidates": [{"sku": sku, "quantity": 1, "score": 0.93}]}


def test_seq_gap_is_filled_by_the_real_daemon_resend(tmp_path, mosquitto, subscriber_factory):
    (tmp_path / "unit").mkdir()
    cfg = write_config(tmp_path, mosquitto, units=[{"unit_id": "unit-a"}],
                       resend={"gap_wait_s": 0.3, "retry_s": 1.0, "max_attempts": 5})
    receipts = subscriber_factory(mosquitto, f"{BASE}/_store/receipts/+")
    requests = subscriber_factory(mosquitto, f"{BASE}/unit-a/req/+")
    replies = subscriber_factory(mosquitto, f"{BASE}/unit-a/res/+")
    events = subscriber_factory(mosquitto, f"{BASE}/unit-a/events")
    status = subscriber_factory(mosquitto, f"{BASE}/_store/cartd/status/+")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    ucfg = unit_cfg(tmp_path, mosquitto)
    outbox = Outbox(tmp_path / "unit" / "outbox.db")
    unit = Publisher(ucfg, outbox, reconnect_min_s=0.1, reconnect_max_s=0.5)
    pub = Pub(mosquitto)
    try:
        status.wait_for(1, timeout=15, where=lambda m: m.json().get("state") == "online")
        now = time.time()
        pub.send("_store/gates/entry", entry("S1", now - 40))
        pub.flush()
        skus = ["A", "B", "C", "A", "B", "C"]
        # The unit runs and delivers seq 1 and 2; cartd follows it from there.
        stored = [outbox.add(unit_event(s, now - 30 + 2 * i)) for i, s in enumerate(skus[:2])]
        unit.start()
        unit.publish_health({})  # as shelfd does: t and outbox.last_seq are stamped at send time
        unit.notify()
        db_path = tmp_path / "cartd.sqlite3"

        def contiguous() -> int:
            try:
                with sqlite3.connect(db_path) as db:
                    row = db.execute("SELECT contiguous_seq FROM units WHERE unit_id='unit-a'").fetchone()
            except sqlite3.OperationalError:
                return -1
            return row[0] if row else -1
        deadline = time.monotonic() + 15
        while contiguous() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert contiguous() == 2
        unit.stop(timeout=2)
        # While it is down, seq 3 and 4 are "acknowledged" without ever reaching the broker; 5 and
        # 6 wait in the outbox. The unit comes back and sends 5 and 6: cartd sees the hole.
        stored += [outbox.add(unit_event(s, now - 30 + 2 * (i + 2))) for i, s in enumerate(skus[2:])]
        assert [e["seq"] for e in stored] == [1, 2, 3, 4, 5, 6]
        for e in stored[2:4]:
            assert outbox.mark_sent(e["event_id"])
        unit = Publisher(ucfg, outbox, reconnect_min_s=0.1, reconnect_max_s=0.5)
        unit.start()
        unit.publish_health({})
        unit.notify()

        # cartd asks for exactly the hole, the daemon replies in its own format and resends.
        req = requests.wait_for(1, timeout=15, where=lambda m: m.topic.endswith("/req/resend"))[0].json()
        assert (req["from_seq"], req["to_seq"]) == (3, 4) and req["txid"]
        rep = replies.wait_for(1, timeout=10, where=lambda m: m.topic.endswith("/res/resend"))[0].json()
        assert rep["txid"] == req["txid"] and rep["ok"] is True and rep["command"] == "resend", rep
        assert rep["result"]["resent"] == 2 and rep["result"]["missing"] == [] and rep["result"]["last_seq"] == 6
        resent = [m.json() for m in events.wait_for(6, timeout=10)[4:]]
        assert [(e["seq"], e.get("historical")) for e in resent] == [(3, True), (4, True)]

        pub.send("_store/gates/exit", exit_("S1", time.time() - 0.5))
        pub.flush()
        # The receipt waits for the unit's word past the exit; cartd's req/rebirth makes the
        # daemon republish its retained health with a fresh t.
        r = receipts.wait_for(1, timeout=20, where=lambda m: m.topic.endswith("/S1"))[0].json()
        validate(r, "receipt")
        assert r["complete"] is True, r
        assert {l["sku"]: l["quantity"] for l in r["lines"]} == {"A": 2, "B": 2, "C": 2}
        assert sorted(e for l in r["lines"] for e in l["events"]) == sorted(e["event_id"] for e in stored)
        assert any(m.topic.endswith("/req/rebirth") for m in requests.wait_for(1, timeout=1))
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM events WHERE historical=1").fetchone()[0] == 2
            assert db.execute("SELECT COUNT(*) FROM lost").fetchone()[0] == 0
            assert db.execute("SELECT contiguous_seq FROM units WHERE unit_id='unit-a'").fetchone()[0] == 6
        time.sleep(0.5)
        assert len(receipts.wait_for(1, timeout=1, where=lambda m: m.topic.endswith("/S1"))) == 1  # once
    finally:
        pub.close()
        unit.stop(timeout=2)
        outbox.close()
        rc = cartd.stop()
    assert rc == 0, cartd.logtext()[-3000:]
