"""The outbox's schema version: numbered migrations, an upgraded unit's unsent events, a downgrade refused.

Units installed before the schema was versioned carry an outbox at ``user_version`` 0 with the
tables below (frozen here as they were shipped, so the test keeps describing those units even
after later migrations change the schema). Upgrading must adopt that file, not recreate it:
every unsent event in it still goes out, once, and numbering continues after it.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, validate_event, write_config
from test_publisher import item_event
from ulid import ULID

from daemon.publish.outbox import MIGRATIONS, SCHEMA_VERSION, Outbox, OutboxTooNew

PREFIX = "gondola/v1/demo-store/sim-unit-1"

# the outbox of every unit installed before the schema version was recorded (user_version 0)
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    event_id  TEXT NOT NULL UNIQUE,
    stored_at REAL NOT NULL,
    sent_at   REAL,
    body      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS events_sent_at ON events (sent_at) WHERE sent_at IS NOT NULL;
"""


def write_unversioned_outbox(path: Path, n: int, sent: int) -> list[dict]:
    """An outbox as the unversioned code left it: n events, the first ``sent`` acknowledged, a seq ceiling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(UNVERSIONED_SCHEMA)
    now = time.time()
    evs = []
    for i in range(n):
        ev = {**item_event(i, now - 60 + i), "store_id": "demo-store", "unit_id": "sim-unit-1",
              "seq": i + 1, "event_id": str(ULID.from_timestamp(now - 60 + i))}
        db.execute("INSERT INTO events (seq, event_id, stored_at, sent_at, body) VALUES (?, ?, ?, ?, ?)",
                   (ev["seq"], ev["event_id"], now - 60 + i, now - 30 if i < sent else None,
                    json.dumps(ev, separators=(",", ":"))))
        evs.append(ev)
    db.execute("INSERT INTO meta (key, value) VALUES ('last_seq', ?)", (n,))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()  # the last connection: SQLite checkpoints the WAL into the file
    Path(str(path) + ".seq").write_text(f"{n + 999}\n")  # the reservation the old code kept
    return evs


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


# ---------------------------------------------------------------- the Outbox itself


def test_a_new_outbox_is_at_the_latest_version(tmp_path):
    Outbox(tmp_path / "o.db").close()
    assert user_version(tmp_path / "o.db") == SCHEMA_VERSION == len(MIGRATIONS)


def test_an_unversioned_outbox_is_adopted_as_version_1_with_its_rows(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite3"
    evs = write_unversioned_outbox(path, 5, sent=2)
    with Outbox(path) as ob:
        assert ob.lost is None, ob.lost
        assert [e["event_id"] for e in ob.pending()] == [e["event_id"] for e in evs[2:]]
        assert ob.last_seq() == 5 and ob.depth() == 3
        assert ob.add(item_event(9))["seq"] == 6
    assert user_version(path) == SCHEMA_VERSION
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_newer_outbox_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as ob:
        ob.add(item_event(1))
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(OutboxTooNew) as err:
        Outbox(path)
    assert err.value.found == SCHEMA_VERSION + 1 and err.value.known == SCHEMA_VERSION
    assert path.read_bytes() == before and not list(tmp_path.glob("*.corrupt-*"))


def test_a_failing_migration_leaves_the_version_where_it_was(tmp_path, monkeypatch):
    from daemon.publish import outbox as mod
    path = tmp_path / "outbox.sqlite3"
    write_unversioned_outbox(path, 2, sent=0)
    monkeypatch.setattr(mod, "MIGRATIONS", (*MIGRATIONS, "ALTER TABLE events ADD COLUMN x INTEGER;\nTHIS IS NOT SQL;"))
    monkeypatch.setattr(mod, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    with pytest.raises(sqlite3.OperationalError):
        Outbox(path)
    assert user_version(path) == len(MIGRATIONS)  # migration 1 committed, the broken one rolled back
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(events)")]
    db.close()
    assert "x" not in cols


# ---------------------------------------------------------------- shelfd run


def unit_config(tmp_path, port: int):
    return write_config(tmp_path / "unit.yaml", state_dir=str(tmp_path / "state"), mqtt__port=port,
                        mqtt__health_interval_s=1,
                        sensing={"backend": "sim", "seed": 5, "speed": 0, "events_per_min": 40, "duration_s": 120})


@pytest.mark.integration
def test_an_upgraded_unit_sends_every_unsent_event_of_its_old_outbox_once(tmp_path, mosquitto, subscriber_factory):
    old = write_unversioned_outbox(tmp_path / "state" / "outbox.sqlite3", 40, sent=15)
    unsent = {e["event_id"]: e["seq"] for e in old[15:]}
    cfg = unit_config(tmp_path, mosquitto.port)
    sub = subscriber_factory(mosquitto, f"{PREFIX}/#")
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "outbox_lost" not in r.stderr
    sub.wait_for(1, 10, where=lambda m: m.topic.endswith("/status") and m.json()["state"] == "stopped")
    evs = [m.json() for m in sub.messages if m.topic.endswith("/events")]
    ids = [e["event_id"] for e in evs]
    for eid, seq in unsent.items():
        assert ids.count(eid) == 1, f"old unsent event seq {seq}: published {ids.count(eid)} times"
    assert not {e["event_id"] for e in old[:15]} & set(ids), "an acknowledged event was sent again"
    new = [e for e in evs if e["event_id"] not in unsent]
    assert new, "the simulated unit produced no new events"
    for e in new:
        validate_event(e)
    assert sorted(e["seq"] for e in new) == list(range(41, 41 + len(new)))  # numbering continues
    assert len(set(ids)) == len(ids)
    assert user_version(tmp_path / "state" / "outbox.sqlite3") == SCHEMA_VERSION


def test_shelfd_run_refuses_a_newer_outbox_with_exit_78_and_one_line(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite3"
    path.parent.mkdir()
    with Outbox(path) as ob:
        ob.add(item_event(1))
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    db.close()
    cfg = unit_config(tmp_path, 9)  # no broker is needed to refuse
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and f"version {SCHEMA_VERSION + 7}" in lines[0] \
        and f"shelfd's {SCHEMA_VERSION}" in lines[0], lines[0]
    assert user_version(path) == SCHEMA_VERSION + 7
