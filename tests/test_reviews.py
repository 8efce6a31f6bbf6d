"""The review workflow in cartd's engine (in process, real SQLite, a clock the test moves): which
lines are queued, and what each staff decision does to the cart, the receipt and the audit log.

The console and `cartd review decide` only queue a decision (tables/reviews.add); the engine's tick
applies it (engine/reviews.py). Receipts are read back as cartd published them."""
from __future__ import annotations

import json

import pytest
from cartd_support import BASE, entry, exit_, health, item_event, tracking, write_config

from aggregator.catalogue import Catalogue
from aggregator.config import load_config
from aggregator.engine import Engine
from aggregator.store import SqliteStore
from aggregator.tables import audit, reviews

T0 = 1_800_000_000.0


class _NoBroker:
    host, port = "127.0.0.1", 1


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def shop(tmp_path):
    def make(**over):
        cfg = load_config(write_config(tmp_path, _NoBroker, units=[{"unit_id": "unit-a"}], **over))
        store = SqliteStore(cfg.storage.path)
        store.migrate()
        clock = Clock()
        eng = Engine(cfg, store, Catalogue.load(cfg.catalogue, cfg.receipts.currency), clock=clock)
        return eng, store, clock
    made = []
    yield lambda **over: made.append(make(**over)) or made[-1]
    for _, store, _ in made:
        store.close()


def _send(eng, msgs):
    out = eng.handle_batch([(f"{BASE}/{topic}", json.dumps(doc).encode()) for topic, doc in msgs])
    return [json.loads(o.payload) for o in out if o.kind == "receipt"]


def _tick(eng, clock, dt=0.5):
    clock.t += dt
    return [json.loads(o.payload) for o in eng.tick() if o.kind == "receipt"]


def _visit(eng, clock, events, shoppers=("S1",), exit_at=30.0):
    """Shoppers enter, the events happen at the shelf where tracking sees S1 (and S2 close by),
    everyone leaves; returns the receipts issued by ticking past the exit."""
    t = clock.t - 60
    msgs = [("_store/gates/entry", entry(s, t)) for s in shoppers]
    obs = [("S1", "unit-a", "1", 0.9)] + [(s, "unit-a", "1", 0.3) for s in shoppers[1:]]
    msgs += [("_store/tracking", tracking(t + k * 0.5, obs)) for k in range(0, 120)]
    msgs += [("unit-a/events", e) for e in events]
    msgs += [("unit-a/health", health(clock.t, len(events)))]
    msgs += [("_store/gates/exit", exit_(s, t + exit_at)) for s in shoppers]
    out = _send(eng, msgs)
    for _ in range(10):
        out += _tick(eng, clock)
    return out


def _ev(seq, sku, t, **extra):
    return item_event("unit-a", seq, "1", "pick", sku, 1, t, **extra)


def _queue(store):
    return store.q("SELECT id, event_id, sku, qty, reason, review_state FROM lines WHERE review_state='open'")


def test_doubtful_lines_are_queued_with_their_reasons(shop):
    eng, store, clock = shop()
    t = clock.t - 50
    sure = _ev(1, "A", t)
    doubt = _ev(2, "B", t + 5, confidence=0.55, review=True,
                candidates=[{"sku": "B", "quantity": 1, "score": 0.55}, {"sku": "C", "quantity": 1, "score": 0.4}])
    stray = _ev(3, "C", t + 10, misplaced=True)
    rec = _visit(eng, clock, [sure, doubt, stray])
    q = {r[1]: r[4] for r in _queue(store)}
    assert sure["event_id"] not in q
    assert q[doubt["event_id"]] == "low_confidence"
    assert q[stray["event_id"]] == "misplaced"
    assert len(rec) == 1 and rec[0]["kind"] == "receipt"
    flagged = {l["sku"]: l["needs_review"] for l in rec[0]["lines"]}
    assert flagged == {"A": False, "B": True, "C": True}


def test_choosing_another_product_after_the_receipt_issues_a_correction_and_an_audit_entry(shop):
    eng, store, clock = shop()
    doubt = _ev(1, "B", clock.t - 50, confidence=0.55,
                candidates=[{"sku": "B", "quantity": 1, "score": 0.55}, {"sku": "C", "quantity": 1, "score": 0.4}])
    first = _visit(eng, clock, [doubt])
    assert [l["sku"] for l in first[0]["lines"]] == ["B"]
    (line_id, *_), = _queue(store)
    store.begin()
    reviews.add(store, line_id, "product", "alice", clock.t, sku="C", quantity=1)
    store.commit()
    (corr,) = _tick(eng, clock)  # applied and corrected in one tick
    assert corr["kind"] == "correction" and corr["corrects"] == first[0]["receipt_id"]
    assert [(l["sku"], l["quantity"], l["needs_review"]) for l in corr["lines"]] == [("C", 1, False)]
    assert {a["sku"]: a["quantity_delta"] for a in corr["adjustments"]} == {"B": -1, "C": 1}
    assert _queue(store) == []
    (entry_,) = [a for a in audit.recent(store) if a[3] == "review.product"]
    assert entry_[2] == "alice" and entry_[4] == f"line {line_id}" and "correction for S1 due" in entry_[5]
    assert store.q("SELECT reviewed_by, review_state FROM lines WHERE id=?", (line_id,)) == [("alice", "changed")]


def test_moving_a_line_to_another_shopper_corrects_both_receipts(shop):
    eng, store, clock = shop()
    doubt = _ev(1, "A", clock.t - 50, confidence=0.6)
    first = _visit(eng, clock, [doubt], shoppers=("S1", "S2"))
    assert {r["session_id"]: [l["sku"] for l in r["lines"]] for r in first} == {"S1": ["A"], "S2": []}
    (line_id, *_), = _queue(store)
    store.begin()
    reviews.add(store, line_id, "shopper", "bob", clock.t, session_id="S2")
    store.commit()
    out = _tick(eng, clock) + _tick(eng, clock)
    assert {r["session_id"]: [l["sku"] for l in r["lines"]] for r in out} == {"S1": [], "S2": ["A"]}
    assert all(r["kind"] == "correction" for r in out)


def test_removing_a_line_and_accepting_one(shop):
    eng, store, clock = shop()
    a = _ev(1, "A", clock.t - 50, confidence=0.6)
    b = _ev(2, "B", clock.t - 45, confidence=0.6)
    first = _visit(eng, clock, [a, b])
    assert sorted(l["sku"] for l in first[0]["lines"]) == ["A", "B"]
    ids = {eid: lid for lid, eid, *_ in _queue(store)}
    store.begin()
    reviews.add(store, ids[a["event_id"]], "remove", "carol", clock.t)
    reviews.add(store, ids[b["event_id"]], "accept", "carol", clock.t)
    store.commit()
    (corr,) = _tick(eng, clock) + _tick(eng, clock)
    assert [(l["sku"], l["needs_review"]) for l in corr["lines"]] == [("B", False)]
    assert corr["total_delta"] == -first[0]["lines"][0]["amount"]


def test_a_refused_decision_changes_nothing_and_says_why(shop):
    eng, store, clock = shop()
    first = _visit(eng, clock, [_ev(1, "A", clock.t - 50, confidence=0.6)])
    (line_id, *_), = _queue(store)
    store.begin()
    bad = reviews.add(store, line_id, "shopper", "dave", clock.t, session_id="NOPE")
    store.commit()
    assert _tick(eng, clock) + _tick(eng, clock) == []
    applied_at, result = reviews.outcome(store, bad)
    assert applied_at is not None and result == "refused: no session 'NOPE'"
    assert len(_queue(store)) == 1 and first


def test_a_held_receipt_waits_for_the_review_then_goes_out_right(shop):
    eng, store, clock = shop(review={"hold_receipt_s": 120})
    doubt = _ev(1, "B", clock.t - 50, confidence=0.55,
                candidates=[{"sku": "B", "quantity": 1, "score": 0.55}, {"sku": "C", "quantity": 1, "score": 0.4}])
    assert _visit(eng, clock, [doubt]) == []  # held: a line awaits review
    (line_id, *_), = _queue(store)
    store.begin()
    reviews.add(store, line_id, "product", "erin", clock.t, sku="C")
    store.commit()
    (rec,) = _tick(eng, clock) + _tick(eng, clock)
    assert rec["kind"] == "receipt" and [(l["sku"], l["needs_review"]) for l in rec["lines"]] == [("C", False)]


def test_a_held_receipt_goes_out_when_the_hold_expires(shop):
    eng, store, clock = shop(review={"hold_receipt_s": 20})
    assert _visit(eng, clock, [_ev(1, "B", clock.t - 50, confidence=0.55)]) == []
    clock.t += 60
    (rec,) = _tick(eng, clock)
    assert rec["lines"][0]["needs_review"] is True


def _cartd(*args, stdin=None):
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "aggregator.cli", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, stdin=stdin, env=dict(os.environ, PYTHONPATH=str(repo)))


def test_cartd_user_and_review_commands(shop, tmp_path):
    import subprocess
    eng, store, clock = shop()
    cfg = str(tmp_path / "cartd.yaml")
    _visit(eng, clock, [_ev(1, "B", clock.t - 50, confidence=0.55)])
    r = _cartd("user", "add", "erin", "--config", cfg, stdin=subprocess.DEVNULL)
    assert r.returncode == 64 and "pass --password-file FILE" in r.stderr, r.stderr
    (tmp_path / "pw").write_text("short\n")
    r = _cartd("user", "add", "erin", "--config", cfg, "--password-file", str(tmp_path / "pw"))
    assert r.returncode == 64 and "at least 10 characters" in r.stderr
    (tmp_path / "pw").write_text("a-long-enough-password\n")
    r = _cartd("user", "add", "erin", "--config", cfg, "--password-file", str(tmp_path / "pw"), "--role", "viewer")
    assert r.returncode == 0 and r.stdout.strip() == "added erin (viewer)", r.stderr
    (item,) = [json.loads(line) for line in _cartd("review", "list", "--config", cfg).stdout.splitlines()]
    assert item["sku"] == "B" and item["reasons"] == ["low_confidence"]
    r = _cartd("review", "decide", str(item["line_id"]), "--config", cfg, "--by", "erin", "--accept")
    assert r.returncode == 64 and "not an enabled account allowed to review" in r.stderr  # a viewer
    _cartd("user", "add", "erin", "--config", cfg, "--password-file", str(tmp_path / "pw"), "--role", "reviewer")
    r = _cartd("review", "decide", str(item["line_id"]), "--config", cfg, "--by", "erin", "--product", "NOPE")
    assert r.returncode == 65 and "'NOPE' is not in the catalogue" in r.stderr
    r = _cartd("review", "decide", str(item["line_id"]), "--config", cfg, "--by", "erin", "--product", "C",
               "--quantity", "2")
    assert r.returncode == 0 and r.stdout.startswith("decision "), r.stderr
    (corr,) = _tick(eng, clock)
    assert [(l["sku"], l["quantity"]) for l in corr["lines"]] == [("C", 2)]
    assert _cartd("review", "list", "--config", cfg).stdout == ""


def test_accepting_a_line_after_the_receipt_sends_no_correction(shop):
    eng, store, clock = shop()
    _visit(eng, clock, [_ev(1, "A", clock.t - 50, confidence=0.6)])
    (line_id, *_), = _queue(store)
    store.begin()
    did = reviews.add(store, line_id, "accept", "gus", clock.t)
    store.commit()
    assert _tick(eng, clock) + _tick(eng, clock) == []
    assert reviews.outcome(store, did)[1] == "accepted" and _queue(store) == []


def test_sure_misplaced_returns_can_stay_off_the_queue(shop):
    eng, store, clock = shop(review={"misplaced_returns": False})
    t = clock.t - 50
    sure = _ev(1, "C", t, misplaced=True)
    unsure = _ev(2, "B", t + 5, misplaced=True, confidence=0.6)
    _visit(eng, clock, [sure, unsure])
    assert {r[1]: r[4] for r in _queue(store)} == {unsure["event_id"]: "low_confidence"}
