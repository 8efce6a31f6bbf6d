"""cartd end to end over a real Mosquitto and real SQLite: association, receipts, corrections,
dead letters, seq gaps → resend requests."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
from cartd_support import (
    BASE,
    Cartd,
    Pub,
    UnitResponder,
    entry,
    exit_,
    health,
    item_event,
    tracking,
    validate,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path, mosquitto, subscriber_factory):
    """A running cartd, a publisher, a receipts subscriber and a dead-letter subscriber."""
    cfg = write_config(tmp_path, mosquitto)
    receipts = subscriber_factory(mosquitto, f"{BASE}/_store/receipts/+")
    dead = subscriber_factory(mosquitto, f"{BASE}/_store/cartd/deadletter")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    pub = Pub(mosquitto)
    # cartd is up once its retained status says online
    status = subscriber_factory(mosquitto, f"{BASE}/_store/cartd/status/+")
    status.wait_for(1, timeout=15, where=lambda m: m.json().get("state") == "online")
    yield {"pub": pub, "receipts": receipts, "dead": dead, "cartd": cartd, "db": tmp_path / "cartd.sqlite3",
           "broker": mosquitto, "tmp": tmp_path}
    pub.close()
    rc = cartd.stop()
    assert rc == 0, cartd.logtext()[-3000:]


def receipts_for(sub, session, n=1, timeout=10.0):
    got = sub.wait_for(n, timeout=timeout, where=lambda m: m.topic.endswith("/" + session))
    docs = [m.json() for m in got]
    for d in docs:
        validate(d, "receipt")
    return docs


def idle_units(pub, t, last=None):
    """Both units say (retained health) they have published everything up to time t."""
    last = last or {}
    for u in ("unit-a", "unit-b"):
        pub.send(f"{u}/health", health(t, last.get(u, 0)), retain=True)


def test_one_shopper_receipt_with_prices_and_put_back(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 30))
    pub.flush()
    time.sleep(0.2)
    evs = [item_event("unit-a", 1, "1", "pick", "A", 2, now - 20),
           item_event("unit-a", 2, "1", "pick", "B", 1, now - 15),
           item_event("unit-a", 3, "1", "put_back", "A", 1, now - 10)]
    for e in evs:
        pub.send("unit-a/events", e)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    idle_units(pub, now, {"unit-a": 3})
    pub.flush()
    (r,) = receipts_for(store["receipts"], "S1")
    assert r["kind"] == "receipt" and r["n"] == 1 and r["complete"] is True
    lines = {l["sku"]: l for l in r["lines"]}
    assert lines["A"]["quantity"] == 1 and lines["A"]["amount"] == 250
    assert lines["B"]["quantity"] == 1 and lines["B"]["amount"] == 120
    assert r["total"] == 370
    # logged for people in the currency's units (it was written before the receipt went out)
    assert "receipt S1/1: 2 lines, total $3.70" in store["cartd"].logtext()
    assert sorted(lines["A"]["events"]) == sorted([evs[0]["event_id"], evs[2]["event_id"]])
    assert not any(l["needs_review"] for l in r["lines"])


def test_two_shoppers_tracking_decides_and_put_back_goes_to_holder(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 60))
    pub.send("_store/gates/entry", entry("S2", now - 60))
    pub.flush()
    # S1 at shelf 1, S2 at shelf 2 around t0; later both at shelf 3 with S2 clearly closer.
    t0 = now - 40
    for k in range(10):
        t = t0 + 0.5 * k
        pub.send("_store/tracking", tracking(t, [("S1", "unit-a", "1", 0.9), ("S2", "unit-a", "2", 0.9)]))
    t1 = now - 30
    for k in range(10):
        t = t1 + 0.5 * k
        pub.send("_store/tracking", tracking(t, [("S1", "unit-b", "3", 0.3), ("S2", "unit-b", "3", 0.95)]))
    # Later both stand at shelf 4 with equal confidence: S1 holds A, so S1's put-back of A is clear;
    # a pick there is ambiguous.
    t2 = now - 20
    for k in range(10):
        t = t2 + 0.5 * k
        pub.send("_store/tracking", tracking(t, [("S1", "unit-b", "4", 0.8), ("S2", "unit-b", "4", 0.8)]))
    pub.send("_store/tracking", tracking(now, []))
    pub.flush()
    e1 = item_event("unit-a", 1, "1", "pick", "A", 2, t0 + 1)
    e2 = item_event("unit-a", 2, "2", "pick", "B", 1, t0 + 2)
    e3 = item_event("unit-b", 1, "3", "pick", "C", 1, t1 + 1)
    e4 = item_event("unit-b", 2, "4", "put_back", "A", 1, t2 + 1)
    e5 = item_event("unit-b", 3, "4", "pick", "B", 1, t2 + 2)
    pub.send("unit-a/events", e1)
    pub.send("unit-a/events", e2)
    for e in (e3, e4, e5):
        pub.send("unit-b/events", e)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("_store/gates/exit", exit_("S2", now - 5))
    idle_units(pub, now, {"unit-a": 2, "unit-b": 3})
    pub.flush()
    (r1,) = receipts_for(store["receipts"], "S1")
    (r2,) = receipts_for(store["receipts"], "S2")
    l1 = {l["sku"]: l for l in r1["lines"]}
    l2 = {l["sku"]: l for l in r2["lines"]}
    assert l1["A"]["quantity"] == 1 and e4["event_id"] in l1["A"]["events"]  # 2 picked, 1 put back
    assert not l1["A"]["needs_review"]
    assert l2["B"]["quantity"] >= 1 and e2["event_id"] in l2["B"]["events"]
    assert l2["C"]["quantity"] == 1 and not l2["C"]["needs_review"]
    assert "C" not in l1
    # e5: two shoppers with equal evidence → one of them gets it, marked for review
    holder = l1 if "B" in l1 else l2
    assert e5["event_id"] in holder["B"]["events"] and holder["B"]["needs_review"]
    with sqlite3.connect(store["db"]) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM lines WHERE needs_review=1").fetchone()
    assert n == 1


def test_duplicates_are_applied_once_and_receipt_is_issued_once(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 30))
    pub.send("_store/gates/entry", entry("S1", now - 30))  # repeated entry: harmless
    pub.flush()
    ev = item_event("unit-a", 1, "1", "pick", "C", 1, now - 20)
    for _ in range(3):
        pub.send("unit-a/events", ev)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    idle_units(pub, now, {"unit-a": 1})
    pub.flush()
    (r,) = receipts_for(store["receipts"], "S1")
    assert r["lines"] == [{"sku": "C", "name": "Crisps", "quantity": 1, "unit_price": 199, "amount": 199,
                           "needs_review": False, "events": [ev["event_id"]]}]
    time.sleep(1.5)
    assert len([m for m in store["receipts"].messages if m.topic.endswith("/S1")]) == 1
    assert store["dead"].messages == []


def test_late_historical_event_becomes_a_correction(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 60))
    pub.flush()
    pub.send("unit-a/events", item_event("unit-a", 1, "1", "pick", "A", 1, now - 50))
    pub.send("_store/gates/exit", exit_("S1", now - 10))
    idle_units(pub, now, {"unit-a": 1})
    pub.flush()
    (r1,) = receipts_for(store["receipts"], "S1")
    assert r1["total"] == 250
    # unit-b had an outage: its pick (inside the visit) arrives after the receipt, historical.
    late = item_event("unit-b", 1, "2", "pick", "B", 2, now - 40, historical=True)
    pub.send("unit-b/events", late)
    pub.flush()
    r1_, r2 = receipts_for(store["receipts"], "S1", n=2)
    assert r1_ == r1
    assert r2["kind"] == "correction" and r2["n"] == 2 and r2["corrects"] == "S1/1"
    assert r2["total"] == 250 + 240 and r2["total_delta"] == 240
    assert r2["adjustments"] == [{"sku": "B", "name": "Bagel", "quantity_delta": 2, "amount_delta": 240,
                                  "events": [late["event_id"]]}]


def test_bad_input_is_dead_lettered_and_cartd_survives(store):
    pub, now = store["pub"], time.time()
    pub.send("unit-a/events", b"{not json")
    bad = item_event("unit-a", 1, "1", "pick", "A", 0, now - 10)  # pick with quantity 0
    pub.send("unit-a/events", bad)
    pub.send("unit-a/events", item_event("unit-a", 2, "1", "pick", "A", 1, now - 9))  # nobody in the store
    pub.send("unit-z/events", item_event("unit-z", 1, "1", "pick", "A", 1, now - 9))  # unknown unit
    pub.send("_store/gates/exit", exit_("GHOST", now - 5))  # exit without entry
    pub.send("_store/tracking", {"schema": "gondola.tracking/1", "t": "yesterday", "observations": []})
    pub.send("unit-a/events", item_event("unit-a", 3, "1", "pick", "A", 1, now + 60, now + 61))  # clock ahead
    pub.flush()
    # 7: the clock-skewed event is refused (kept), never applied, so it makes no no_session.
    store["dead"].wait_for(7, timeout=10)
    time.sleep(0.3)  # nothing more may come
    docs = [m.json() for m in store["dead"].wait_for(7, timeout=1)]
    for d in docs:
        validate(d, "deadletter")
    reasons = sorted(d["reason"] for d in docs)
    assert reasons == sorted(["malformed_json", "schema_violation", "no_session", "unknown_unit",
                              "exit_without_entry", "schema_violation", "clock_skew"]), docs
    assert [d["action"] for d in docs if d["reason"] == "clock_skew"] == ["kept"]
    by = {d["reason"]: d for d in docs}
    assert "quantity" in [d for d in docs if d["reason"] == "schema_violation" and "unit-a" in d["topic"]][0]["detail"]
    assert by["malformed_json"]["payload"] == "{not json"
    # the entry arriving after the orphan exit completes the session and yields a receipt
    pub.send("_store/gates/entry", entry("GHOST", now - 20))
    idle_units(pub, now, {"unit-a": 3})
    pub.flush()
    (r,) = receipts_for(store["receipts"], "GHOST")
    assert r["exited_at"] is not None
    with sqlite3.connect(store["db"]) as db:
        rows = db.execute("SELECT reason FROM deadletters").fetchall()
    assert len(rows) >= 7
    assert store["cartd"].proc.poll() is None


def test_seq_gap_triggers_resend_and_the_resent_event_lands(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 60))
    pub.flush()
    evs = {s: item_event("unit-a", s, "1", "pick", "A" if s != 3 else "C", 1, now - 50 + s) for s in range(1, 6)}
    unit = UnitResponder(store["broker"], "unit-a", events=evs, last_seq=5)
    try:
        for s in (1, 2, 4, 5):  # seq 3 lost on the way
            pub.send("unit-a/events", evs[s])
        pub.send("_store/gates/exit", exit_("S1", now - 5))
        pub.send("unit-b/health", health(now, 0), retain=True)
        pub.send("unit-a/health", health(now, 5), retain=True)
        pub.flush()
        (r,) = receipts_for(store["receipts"], "S1", timeout=10)
        resends = [q for c, q in unit.requests if c == "resend"]
        assert resends and resends[0]["from_seq"] == 3 and resends[0]["to_seq"] == 3
        lines = {l["sku"]: l["quantity"] for l in r["lines"]}
        assert lines == {"A": 4, "C": 1} and r["complete"] is True
    finally:
        unit.close()


def test_idle_unit_answers_rebirth_and_unblocks_the_receipt(store):
    pub, now = store["pub"], time.time()
    units = [UnitResponder(store["broker"], u, last_seq=0) for u in ("unit-a", "unit-b")]
    try:
        pub.send("_store/gates/entry", entry("S1", now - 10))
        pub.send("_store/gates/exit", exit_("S1", now))
        pub.flush()
        t0 = time.monotonic()
        (r,) = receipts_for(store["receipts"], "S1", timeout=6)
        took = time.monotonic() - t0
        assert r["complete"] is True and r["lines"] == []
        assert any(c == "rebirth" for u in units for c, _ in u.requests)
        assert took < 5.5  # well before the 6 s deadline: the fresh health unblocked it
    finally:
        for u in units:
            u.close()


def test_deadline_receipt_when_a_unit_stays_silent(store):
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 10))
    pub.send("unit-a/events", item_event("unit-a", 1, "1", "pick", "A", 1, now - 8))
    pub.send("_store/gates/exit", exit_("S1", now))
    pub.flush()
    (r,) = receipts_for(store["receipts"], "S1", timeout=12)
    assert r["complete"] is False and "unit-b" in r["waited_for"]
    assert r["total"] == 250


def test_identity_swap_and_dropped_sightings_do_not_move_the_line(store):
    """S1 stands at unit-a shelf 1 and S2 at shelf 2 for 6 s, both taking something; the tracker
    drops some sightings and, for 1.5 s in the middle of both touches, swaps their ids at higher
    confidence (and the swapped batches arrive three times). The old rule (the highest single
    confidence) gave both lines to the wrong shopper without even a review flag; presence over
    the window gives each their own, clearly."""
    pub, now = store["pub"], time.time()
    pub.send("_store/gates/entry", entry("S1", now - 60))
    pub.send("_store/gates/entry", entry("S2", now - 60))
    pub.flush()
    t0 = now - 40
    dropped = {2, 10}  # instants at which the tracker lost both
    swap = {5, 6, 7}   # t0 + 2.5 .. 3.5 s
    for k in range(13):
        t = t0 + 0.5 * k
        if k in dropped:
            obs = []
        elif k in swap:
            obs = [("S2", "unit-a", "1", 0.95), ("S1", "unit-a", "2", 0.95)]
        else:
            obs = [("S1", "unit-a", "1", 0.7), ("S2", "unit-a", "2", 0.7)]
        for _ in range(3 if k in swap else 1):
            pub.send("_store/tracking", tracking(t, obs))
    pub.send("_store/tracking", tracking(now, []))
    pub.flush()
    e1 = item_event("unit-a", 1, "1", "pick", "A", 1, t0 + 2.0, t0 + 3.5)
    e2 = item_event("unit-a", 2, "2", "pick", "B", 1, t0 + 2.2, t0 + 3.6)
    pub.send("unit-a/events", e1)
    pub.send("unit-a/events", e2)
    pub.send("_store/gates/exit", exit_("S1", now - 5))
    pub.send("_store/gates/exit", exit_("S2", now - 5))
    idle_units(pub, now, {"unit-a": 2})
    pub.flush()
    (r1,) = receipts_for(store["receipts"], "S1")
    (r2,) = receipts_for(store["receipts"], "S2")
    assert [(l["sku"], l["quantity"], l["needs_review"]) for l in r1["lines"]] == [("A", 1, False)]
    assert [(l["sku"], l["quantity"], l["needs_review"]) for l in r2["lines"]] == [("B", 1, False)]
    with sqlite3.connect(store["db"]) as db:
        (cands,) = db.execute("SELECT candidates FROM lines WHERE event_id=?", (e1["event_id"],)).fetchone()
    shares = {c["session_id"]: c["score"] for c in json.loads(cands)}
    assert set(shares) == {"S1", "S2"} and shares["S1"] > shares["S2"] + 0.2
    assert abs(sum(shares.values()) - 1.0) < 1e-3


def test_presence_rule_against_the_old_rule():
    """The pure function: a brief high-confidence sighting loses to a long presence; a tie is
    ambiguous; a put-back goes to the holder; a repeated (session, instant) counts once."""
    from aggregator import associate as A
    kw = dict(min_confidence=0.5, ambiguity_margin=0.2, not_holding_factor=0.2)
    obs = [("S1", "1", 0.5 * k, 0.6) for k in range(8)] + [("S2", "1", 1.0, 0.95)] * 5
    ev = A.presence(obs, "1")
    assert ev["S2"].evidence == pytest.approx(0.95) and ev["S1"].evidence == pytest.approx(4.8)
    d = A.decide(ev, put_back=False, holding=None, quantity=1, **kw)
    assert d.session_id == "S1" and d.reasons == []
    old_winner = max(ev, key=lambda s: ev[s].peak)
    assert old_winner == "S2"  # what the highest-confidence rule would have done
    tie = A.presence([("S1", "", 0.0, 0.8), ("S2", "", 0.0, 0.8), ("S1", "1", 0.5, 0.4), ("S2", "1", 0.5, 0.4)], "1")
    d = A.decide(tie, put_back=False, holding=None, quantity=1, **kw)
    assert "ambiguous" in d.reasons and "weak_evidence" in d.reasons  # peaks 0.4 (0.8 at half weight)
    d = A.decide(tie, put_back=True, holding={"S2": 1}, quantity=1, **kw)
    assert d.session_id == "S2" and d.reasons == ["weak_evidence"]
    d = A.decide(tie, put_back=True, holding={}, quantity=1, **kw)
    assert "put_back_not_in_cart" in d.reasons
