"""cartd's versioned schema (aggregator/schema.py), on SQLite and PostgreSQL: a fresh database gets
the latest version; a database from before versions existed is adopted with its rows; a later
numbered migration is applied once; a database newer than the code makes ``cartd run`` exit 78
with one line naming the database and both versions, and is left untouched."""
from __future__ import annotations

import sqlite3
import subprocess
import uuid

import pytest
from cartd_support import REPO, pg_available, pg_dsn, write_config
from conftest import _skip_or_fail

from aggregator import schema
from aggregator.config import load_config
from aggregator.store import open_store

TABLES = {"sessions", "events", "lines", "tracking", "feeds", "units", "lost", "seq_notes", "receipts",
          "deadletters", "pending_exits"}
RECEIPT = ("INSERT INTO receipts (receipt_id, session_id, n, kind, issued_at, total, payload)"
           " VALUES ('S1/1', 'S1', 1, 'receipt', 1.0, 250, '{}')")


class _NoBroker:  # cartd run fails on the database before it connects anywhere
    host, port = "127.0.0.1", 1


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """(config path, raw connection factory, set-version, table names) for one dialect."""
    if request.param == "sqlite":
        cfg = write_config(tmp_path, _NoBroker)
        path = tmp_path / "cartd.sqlite3"

        def connect():
            return sqlite3.connect(path, isolation_level=None)

        def tables(c):
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}

        def set_version(c, v):
            c.execute(f"PRAGMA user_version = {v}")

        def unversion(c):
            c.execute("PRAGMA user_version = 0")
        yield cfg, connect, tables, set_version, unversion, str(path)
        return
    if not pg_available():
        _skip_or_fail("PostgreSQL not reachable at 127.0.0.1:5432 (database test)")
    import psycopg
    dsn, name = pg_dsn(), f"cartd_schema_{uuid.uuid4().hex[:10]}"
    cfg = write_config(tmp_path, _NoBroker, storage={"type": "postgres", "dsn": dsn, "schema": name})

    def pg_connect():
        c = psycopg.connect(dsn, autocommit=True)
        c.execute(f'SET search_path TO "{name}"')
        return c

    def pg_tables(c):
        return {
            r[0] for r in c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (name,))
        }

    def pg_set_version(c, v):
        c.execute("INSERT INTO schema_version (version) VALUES (%s)", (v,))

    def pg_unversion(c):
        c.execute("DROP TABLE schema_version")
    try:
        yield cfg, pg_connect, pg_tables, pg_set_version, pg_unversion, f"schema '{name}'"
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _migrate(cfg, migrations=None) -> int:
    store = open_store(load_config(cfg).storage)
    try:
        v = schema.migrate(store, migrations)
        assert schema.version(store) == v
        store.end_read()
        return v
    finally:
        store.close()


def test_fresh_database_gets_the_latest_version(db):
    cfg, connect, tables, *_ = db
    assert _migrate(cfg) == schema.LATEST
    with connect() as c:
        assert TABLES <= tables(c)
    assert _migrate(cfg) == schema.LATEST  # again at the next start: nothing to do


def test_unversioned_database_with_rows_is_adopted_and_keeps_them(db):
    cfg, connect, _tables, _, unversion, _ = db
    _migrate(cfg, schema.MIGRATIONS[:1])
    with connect() as c:  # what cartd before versioned schemas left behind: the tables, no version
        unversion(c)
        c.execute(RECEIPT)
    store = open_store(load_config(cfg).storage)
    try:
        assert schema.version(store) == 0
        store.end_read()
    finally:
        store.close()
    assert _migrate(cfg) == schema.LATEST
    with connect() as c:
        assert c.execute("SELECT receipt_id, total FROM receipts").fetchall() == [("S1/1", 250)]


def test_a_new_numbered_migration_is_applied_once_and_keeps_rows(db):
    cfg, connect, *_ = db
    _migrate(cfg)
    with connect() as c:
        c.execute(RECEIPT)
    nxt = schema.LATEST + 1
    two = [*schema.MIGRATIONS, schema.Migration(nxt, "a note per receipt", "ALTER TABLE receipts ADD COLUMN note TEXT")]
    assert _migrate(cfg, two) == nxt
    assert _migrate(cfg, two) == nxt  # not applied twice (ALTER TABLE ADD COLUMN would fail)
    with connect() as c:
        assert c.execute("SELECT receipt_id, note FROM receipts").fetchall() == [("S1/1", None)]
    with pytest.raises(schema.SchemaTooNew):
        _migrate(cfg)  # the code without the new migration refuses what it wrote


def test_database_newer_than_cartd_exits_78_with_one_line(db):
    cfg, connect, _, set_version, _, where = db
    _migrate(cfg)
    newer = schema.LATEST + 3
    with connect() as c:
        set_version(c, newer)
        c.execute(RECEIPT)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "cartd"), "run", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 78, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert where in lines[0] and f"schema version {newer}" in lines[0] and f"up to {schema.LATEST}" in lines[0]
    with connect() as c:  # left as it was
        assert c.execute("SELECT receipt_id FROM receipts").fetchall() == [("S1/1",)]
    store = open_store(load_config(cfg).storage)
    try:
        assert schema.version(store) == newer
        store.end_read()
    finally:
        store.close()
