"""The flush-order invariant of cartd's engine (aggregator/engine/transactions.py: FLUSH_ORDER).

Several instances on PostgreSQL cannot deadlock only because every transaction takes its locks on
shared rows in one order: sessions (sorted), units (sorted), tracking rows (sorted by key), the
tracking feed. This records the statements one real transaction (SQLite) issues for a burst that
stages all of them — health of two units in reverse order, a status, tracking, item events of two
sessions — and checks their order; and that the check catches a reordered flush."""
from __future__ import annotations

import json
import re
import time
from itertools import pairwise

import pytest
from cartd_support import BASE, entry, health, item_event, tracking, write_config

from aggregator.catalogue import Catalogue
from aggregator.config import load_config
from aggregator.engine import Engine, transactions
from aggregator.store import SqliteStore

RANK = {"sessions": 0, "units": 1, "tracking": 2, "feeds": 3}
_TABLE = re.compile(r"^\s*(?:INSERT INTO|UPDATE)\s+(\w+)|FROM\s+(\w+)\b.*FOR UPDATE", re.DOTALL)


class RecordingStore(SqliteStore):
    """A real SQLite store that also records (sql, params) of every statement."""

    def __init__(self, path):
        super().__init__(path)
        self.log: list[tuple[str, object]] = []

    def ex(self, s, params=()):
        self.log.append((s, tuple(params)))
        return super().ex(s, params)

    def many(self, s, rows):
        self.log.append((s, list(rows)))
        super().many(s, rows)


class _NoBroker:
    host, port = "127.0.0.1", 1


def _engine(tmp_path, now):
    cfg = load_config(write_config(tmp_path, _NoBroker))
    store = RecordingStore(cfg.storage.path)
    store.migrate()
    return Engine(cfg, store, Catalogue.load(cfg.catalogue, cfg.receipts.currency), clock=lambda: now), store


def _shared_writes(log):
    """[(table, sql, params)] of the statements that write or lock a shared row, in order."""
    out = []
    for sql, params in log:
        m = _TABLE.search(sql)
        table = m and (m.group(1) or m.group(2))
        if table in RANK and (not sql.lstrip().startswith("SELECT") or "FOR UPDATE" in sql):
            out.append((table, sql, params))
    return out


def _violations(writes):
    problems = []
    for (t1, _s1, _), (t2, s2, _) in pairwise(writes):
        if RANK[t2] < RANK[t1]:
            problems.append(f"{t2} written after {t1}: {s2.split('WHERE')[0].strip()}")
    return problems


def _burst(now):
    evs = [item_event("unit-a", 1, "1", "pick", "A", 1, now - 20),
           item_event("unit-b", 1, "1", "pick", "B", 1, now - 19)]
    return [(f"{BASE}/unit-b/health", json.dumps(health(now - 1, 0)).encode()),
            (f"{BASE}/unit-a/health", json.dumps(health(now - 1, 0)).encode()),
            (f"{BASE}/unit-a/status", json.dumps({"state": "online"}).encode()),
            *[(f"{BASE}/_store/tracking", json.dumps(tracking(t, [("S2", "unit-b", "1", 0.9),
                                                                 ("S1", "unit-a", "1", 0.9)])).encode())
              for t in (now - 19.5, now - 2)],
            *[(f"{BASE}/{e['unit_id']}/events", json.dumps(e).encode()) for e in evs]]


def _run(tmp_path, now):
    engine, store = _engine(tmp_path, now)
    engine.handle_batch([(f"{BASE}/_store/gates/entry", json.dumps(entry(s, now - 60)).encode()) for s in ("S2", "S1")]
                        + [(f"{BASE}/_store/tracking", json.dumps(tracking(now - 30, [])).encode())])
    store.log.clear()
    engine.handle_batch(_burst(now))
    lines = store.q("SELECT session_id, sku FROM lines ORDER BY session_id")
    store.close()
    return store.log, lines


def test_shared_rows_are_written_in_one_order_each_sorted(tmp_path):
    now = time.time()
    log, lines = _run(tmp_path, now)
    assert lines == [("S1", "A"), ("S2", "B")]  # the burst really made lines (sessions were locked)
    writes = _shared_writes(log)
    assert [t for t, _, _ in writes if t] and _violations(writes) == []
    assert {t for t, _, _ in writes} == set(RANK)  # every kind of shared row was written
    # ... each sorted: units by unit id (health came for unit-b first), tracking rows by key
    first_seen: list[str] = []
    for t, s, p in writes:
        if t != "units":
            continue
        ids = [v for v in p if isinstance(v, str) and v.startswith("unit-")] if isinstance(p, tuple) \
            else [r[0] if "INSERT" in s else r[1] for r in p]
        if isinstance(p, list):
            assert ids == sorted(ids), s
        first_seen += [u for u in ids if u not in first_seen]
    assert first_seen == ["unit-a", "unit-b"]
    (rows,) = [p for t, s, p in writes if t == "tracking"]
    assert len(rows) == 4 and rows == sorted(rows) and {r[0] for r in rows} == {"unit-a", "unit-b"}


def test_a_reordered_flush_is_caught(tmp_path, monkeypatch):
    """The check above is not vacuous: with the flush steps swapped it reports the violation."""
    monkeypatch.setattr(transactions, "FLUSH_ORDER", ("lines", "tracking", "unit_docs", "unit_seqs"))
    log, _ = _run(tmp_path, time.time())
    assert any(p.startswith("units written after") for p in _violations(_shared_writes(log)))


def test_staging_a_shared_row_during_the_flush_fails_loudly(tmp_path):
    """flush_shared refuses to commit when a shared row is left staged after its turn."""
    now = time.time()
    engine, store = _engine(tmp_path, now)
    orig = engine._flush_tracking

    def late_health():
        orig()
        engine._unit_status["unit-a"] = "online"  # staged after the units' turn
    engine._flush_tracking = late_health
    with pytest.raises(AssertionError, match="staged during the ordered flush"):
        engine._run_tx(lambda: None)
    store.close()
