"""cartd defends its receipts against input that is well-formed but wrong (a faulty or forged
unit, a bad clock, a huge message), over a real Mosquitto and real SQLite with `cartd run` as a
subprocess: each case is a dead letter, and none of them moves a watermark, marks seqs lost or
turns off gap detection."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
from cartd_support import BASE, Cartd, Pub, entry, exit_, health, item_event, tracking, validate, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def start(tmp_path, broker, subscriber_factory, **over):
    cfg = write_config(tmp_path, broker, **over)
    s = {"receipts": subscriber_factory(broker, f"{BASE}/_store/receipts/+"),
         "dead": subscriber_factory(broker, f"{BASE}/_store/cartd/deadletter"),
         "req": subscriber_factory(broker, f"{BASE}/+/req/+"),
         "db": tmp_path / "cartd.sqlite3"}
    status = subscriber_factory(broker, f"{BASE}/_store/cartd/status/+")
    s["cartd"] = Cartd(cfg, tmp_path / "cartd.log").start()
    status.wait_for(1, timeout=30, where=lambda m: m.json().get("state") == "online")
    s["pub"] = Pub(broker)
    return s


@pytest.fixture
def cartd(tmp_path, mosquitto, subscriber_factory):
    s = start(tmp_path, mosquitto, subscriber_factory)
    yield s
    s["pub"].close()
    rc = s["cartd"].stop()
    assert rc == 0, s["cartd"].logtext()[-3000:]
    assert "Traceback" not in s["cartd"].logtext()


def q(s, sql, args=()):
    with sqlite3.connect(s["db"], timeout=10) as db:
        return db.execute(sql, args).fetchall()


def dead(s, reason, n=1, timeout=15.0):
    docs = [m.json() for m in s["dead"].wait_for(n, timeout=timeout, where=lambda m: m.json()["reason"] == reason)]
    for d in docs:
        validate(d, "deadletter")
    return docs


def receipt(s, session, timeout=15.0):
    (m,) = s["receipts"].wait_for(1, timeout=timeout, where=lambda m: m.topic.endswith("/" + session))[:1]
    doc = m.json()
    validate(doc, "receipt")
    return doc


def lines(r):
    return {l["sku"]: l["quantity"] for l in r["lines"]}


def test_duplicate_event_id_with_other_content_is_a_conflict_and_its_seq_is_not_lost(cartd):
    s, pub, now = cartd, cartd["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 40))
    pub.flush()
    e1 = item_event("unit-a", 1, "1", "pick", "A", 1, now - 30)
    e2 = item_event("unit-a", 2, "1", "pick", "B", 1, now - 25)
    # seq 3 reuses e1's event_id with other content (a reused id, or a forgery): not a duplicate
    e3 = item_event("unit-a", 3, "1", "pick", "C", 5, now - 20, event_id=e1["event_id"])
    e4 = item_event("unit-a", 4, "1", "pick", "B", 1, now - 15)
    for e in (e1, e2):
        pub.send("unit-a/events", e)
    pub.send("unit-a/events", {**e1, "historical": True})  # a resent copy: a plain duplicate
    pub.send("unit-a/events", e3)
    pub.send("unit-a/events", e4)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("unit-a/health", health(now, 4), retain=True)
    pub.send("unit-b/health", health(now, 0), retain=True)
    pub.flush()
    (d,) = dead(s, "duplicate_event_conflict")
    assert d["event_id"] == e1["event_id"] and d["action"] == "kept" and '"seq": 3' in d["payload"]
    r = receipt(s, "S1")
    assert r["complete"] is True and lines(r) == {"A": 1, "B": 2}, r
    # seq 3 is accounted for by the conflict. (Before, it was a gap: asked for three times, then
    # recorded lost, and only then was the receipt complete.)
    assert q(s, "SELECT contiguous_seq FROM units WHERE unit_id='unit-a'") == [(4,)]
    assert q(s, "SELECT seq, reason FROM seq_notes") == [(3, "duplicate_event_conflict")]
    assert q(s, "SELECT * FROM lost") == []
    assert not [m for m in s["req"].messages if m.topic.endswith("/req/resend")]
    assert not [m for m in s["dead"].messages if m.json()["reason"] == "events_lost"]
    assert len([m for m in s["dead"].messages if m.json()["reason"] == "duplicate_event_conflict"]) == 1


def test_an_implausible_seq_jump_is_refused_and_gap_detection_keeps_working(cartd):
    s, pub, now = cartd, cartd["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 40))
    pub.flush()
    for seq in (1, 2, 3):
        pub.send("unit-a/events", item_event("unit-a", seq, "1", "pick", "A", 1, now - 35 + seq))
    pub.flush()
    forged = item_event("unit-a", 1_000_000, "1", "pick", "C", 4, now - 30)
    pub.send("unit-a/events", forged)
    for seq in (4, 5):
        pub.send("unit-a/events", item_event("unit-a", seq, "1", "pick", "B", 1, now - 30 + seq))
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("unit-a/health", health(now, 5), retain=True)
    pub.send("unit-b/health", health(now, 0), retain=True)
    pub.flush()
    (d,) = dead(s, "seq_implausible")
    assert d["event_id"] == forged["event_id"] and d["action"] == "kept" and "1000000" in d["detail"]
    r = receipt(s, "S1")
    assert r["complete"] is True and lines(r) == {"A": 3, "B": 2}, r
    assert q(s, "SELECT contiguous_seq, max_seq FROM units WHERE unit_id='unit-a'") == [(5, 5)]
    assert q(s, "SELECT COUNT(*) FROM events WHERE seq > 5") == [(0,)]
    # gap detection is still on: seq 6 goes missing, 7 arrives, cartd asks for exactly 6
    pub.send("unit-a/events", item_event("unit-a", 7, "1", "pick", "A", 1, now - 2))
    pub.flush()
    (m,) = s["req"].wait_for(1, timeout=15, where=lambda m: m.topic == f"{BASE}/unit-a/req/resend")[:1]
    assert (m.json()["from_seq"], m.json()["to_seq"]) == (6, 6)
    assert q(s, "SELECT * FROM lost") == []


def test_future_timestamps_are_refused_and_never_move_a_watermark(cartd):
    """The issue's case: an event a day ahead made the next receipt "complete" 0.1 s after the
    exit. Now it is refused; unit-a, silent since seq 1, is waited for until the deadline."""
    s, pub, now = cartd, cartd["pub"], time.time()
    day = 86400.0
    pub.send("_store/gates/entry", entry("S1", now - 40))
    pub.flush()
    e1 = item_event("unit-a", 1, "1", "pick", "A", 1, now - 30)
    ahead = item_event("unit-a", 2, "1", "pick", "B", 1, now + day)
    pub.send("unit-a/events", e1)
    pub.send("unit-a/events", ahead)
    pub.send("unit-b/health", health(now + day, 0), retain=True)  # a unit clock a day ahead: clamped
    pub.send("_store/tracking", tracking(now + day, [("S1", "unit-a", "1", 0.9)]))
    pub.send("_store/gates/entry", entry("S2", now + day))
    pub.flush()
    docs = dead(s, "clock_skew", n=3)
    assert all(d["action"] == "kept" for d in docs)
    assert {d["topic"].rsplit("/", 1)[1] for d in docs} == {"events", "tracking", "entry"}
    assert [d["event_id"] for d in docs if d["event_id"]] == [ahead["event_id"]]
    t_exit = time.time()
    pub.send("_store/gates/exit", exit_("S1", t_exit))
    pub.flush()
    r = receipt(s, "S1", timeout=20)
    took = time.time() - t_exit
    # unit-a is waited for (its watermark stayed at seq 1); unit-b's health a day ahead was taken
    # as "now", so it may be waited for as well
    assert r["complete"] is False and "unit-a" in r["waited_for"], r
    assert took >= 5.0  # the 6 s deadline, not at once
    assert lines(r) == {"A": 1}
    (contig_t, health_t), = q(s, "SELECT contig_t_end, health_t FROM units WHERE unit_id='unit-a'")
    assert contig_t < now and health_t is None
    (health_b,), = q(s, "SELECT health_t FROM units WHERE unit_id='unit-b'")
    assert health_b <= time.time()
    assert q(s, "SELECT COUNT(*) FROM events WHERE event_id=?", (ahead["event_id"],)) == [(0,)]
    assert q(s, "SELECT COUNT(*) FROM sessions WHERE session_id='S2'") == [(0,)]
    feed = q(s, "SELECT t FROM feeds WHERE name='tracking'")
    assert feed == [] or feed[0][0] <= time.time()
    # seq 2 is accounted for (refused), not asked for or recorded lost
    assert q(s, "SELECT seq, reason FROM seq_notes") == [(2, "clock_skew")]
    assert q(s, "SELECT * FROM lost") == []


def test_oversized_payloads_are_dead_lettered_unstored(tmp_path, mosquitto, subscriber_factory):
    s = start(tmp_path, mosquitto, subscriber_factory, limits={"max_payload_bytes": 16384})
    pub, now = s["pub"], time.time()
    try:
        pub.send("_store/gates/entry", entry("S1", now - 40))
        pub.flush()
        small = item_event("unit-a", 1, "1", "pick", "A", 1, now - 30, note="x" * 8000)  # 8 KB: fine
        big = item_event("unit-a", 2, "1", "pick", "B", 1, now - 28, note="x" * 20000)    # valid, 20 KB
        huge = item_event("unit-a", 3, "1", "pick", "C", 1, now - 26, note="y" * 1_000_000)
        vast = b"[" + b"1," * 5_000_000 + b"1]"  # 10 MB
        for p in (small, big, huge):
            pub.send("unit-a/events", p)
        pub.send("unit-a/events", vast)
        pub.send("_store/tracking", {**tracking(now - 20, []), "pad": "z" * 50000})
        pub.flush(timeout=60)
        docs = dead(s, "payload_too_large", n=4, timeout=30)
        assert {d["topic"] for d in docs} == {f"{BASE}/unit-a/events", f"{BASE}/_store/tracking"}
        assert all(d["payload"] is None and d["action"] == "kept" for d in docs)
        sizes = sorted(int(d["detail"].split()[0]) for d in docs)
        assert sizes[-1] == len(vast) and sizes[-2] == len(json.dumps(huge))
        assert all("limit 16384" in d["detail"] and "sha256" in d["detail"] for d in docs)
        # nothing of them stored: not as events, not in dead letters
        assert q(s, "SELECT seq FROM events ORDER BY seq") == [(1,)]
        assert q(s, "SELECT MAX(LENGTH(payload)) FROM deadletters")[0][0] is None
        (n,) = q(s, "SELECT COUNT(*) FROM deadletters WHERE reason='payload_too_large' AND payload IS NULL")[0]
        assert n == 4
        # still working: the small event is on the receipt
        pub.send("_store/gates/exit", exit_("S1", now - 5))
        pub.send("unit-a/health", health(now, 1), retain=True)
        pub.send("unit-b/health", health(now, 0), retain=True)
        pub.flush()
        assert lines(receipt(s, "S1")) == {"A": 1}
    finally:
        pub.close()
        rc = s["cartd"].stop()
    assert rc == 0, s["cartd"].logtext()[-3000:]


def test_an_event_that_disagrees_with_its_topic_is_refused(cartd):
    s, pub, now = cartd, cartd["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 40))
    pub.flush()
    other_unit = item_event("unit-b", 1, "1", "pick", "A", 2, now - 30)        # on unit-a's topic
    other_store = item_event("unit-a", 50, "1", "pick", "C", 2, now - 29, store_id="store-9")
    pub.send("unit-a/events", other_unit)
    pub.send("unit-a/events", other_store)
    good = item_event("unit-a", 1, "1", "pick", "B", 1, now - 28)
    pub.send("unit-a/events", good)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("unit-a/health", health(now, 1), retain=True)
    pub.send("unit-b/health", health(now, 0), retain=True)
    pub.flush()
    (mis,) = dead(s, "topic_mismatch")
    (wrong,) = dead(s, "wrong_store")
    assert mis["event_id"] == other_unit["event_id"] and "unit-b" in mis["detail"] and mis["action"] == "kept"
    assert wrong["event_id"] == other_store["event_id"] and "store-9" in wrong["detail"]
    r = receipt(s, "S1")
    assert r["complete"] is True and lines(r) == {"B": 1}
    assert q(s, "SELECT event_id FROM events") == [(good["event_id"],)]
    assert q(s, "SELECT unit_id, max_seq FROM units WHERE max_seq > 0") == [("unit-a", 1)]
