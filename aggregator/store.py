"""Storage: one small SQL dialect layer over SQLite (default) and PostgreSQL (psycopg 3).

The engine writes SQL once with ``?`` placeholders; PostgreSQL gets them as ``%s``. Times are
epoch seconds (REAL / DOUBLE PRECISION), money integer minor units. Every write happens inside a
transaction the engine opens with ``begin()`` and closes with ``commit()``; messages are
acknowledged to the broker only after the commit (see service.py).
"""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from .config import PostgresStorage, SqliteStorage

log = logging.getLogger(__name__)

_DDL = """
CREATE TABLE IF NOT EXISTS sessions (
  session_id TEXT PRIMARY KEY,
  entered_at {REAL}, entry_gate TEXT, shopper_ref TEXT,
  exited_at {REAL}, exit_gate TEXT, exit_received_at {REAL},
  state TEXT NOT NULL DEFAULT 'open',          -- open | exited | receipted
  receipt_n {INT} NOT NULL DEFAULT 0,
  correction_due {REAL},
  last_change {REAL}
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state);
CREATE TABLE IF NOT EXISTS events (
  event_id TEXT PRIMARY KEY,
  unit_id TEXT NOT NULL, seq {INT} NOT NULL, shelf TEXT NOT NULL,
  type TEXT NOT NULL, sku TEXT, quantity {INT} NOT NULL,
  t_start {REAL} NOT NULL, t_end {REAL} NOT NULL, confidence {REAL},
  historical {INT} NOT NULL DEFAULT 0,
  received_at {REAL} NOT NULL,
  state TEXT NOT NULL,                          -- pending | assigned | deadletter
  session_id TEXT,
  payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_unit_seq ON events (unit_id, seq);
CREATE INDEX IF NOT EXISTS events_state ON events (state);
CREATE INDEX IF NOT EXISTS events_shelf_t ON events (unit_id, shelf, t_end);
CREATE TABLE IF NOT EXISTS lines (
  id {ID},
  session_id TEXT NOT NULL,
  event_id TEXT NOT NULL UNIQUE,
  sku TEXT, qty {INT} NOT NULL,                 -- signed: + pick, - put_back, 0 unresolved
  needs_review {INT} NOT NULL DEFAULT 0,
  reason TEXT, evidence TEXT, candidates TEXT,
  after_receipt {INT} NOT NULL DEFAULT 0,       -- the session's receipt_n when the line was added
  created_at {REAL} NOT NULL
);
CREATE INDEX IF NOT EXISTS lines_session ON lines (session_id);
CREATE TABLE IF NOT EXISTS tracking (
  unit_id TEXT NOT NULL, shelf TEXT NOT NULL,   -- '' = shelf unknown
  t {REAL} NOT NULL, session_id TEXT NOT NULL, confidence {REAL} NOT NULL,
  PRIMARY KEY (unit_id, shelf, t, session_id)
);
CREATE TABLE IF NOT EXISTS feeds (name TEXT PRIMARY KEY, t {REAL} NOT NULL);
CREATE TABLE IF NOT EXISTS units (
  unit_id TEXT PRIMARY KEY,
  contiguous_seq {INT} NOT NULL,               -- every seq up to here received (or recorded lost)
  contig_t_end {REAL},                          -- latest t_end among those
  max_seq {INT} NOT NULL DEFAULT 0,
  health_t {REAL}, health_last_seq {INT},
  status TEXT, status_t {REAL},
  gap_since {REAL}, resend_at {REAL}, resend_attempts {INT} NOT NULL DEFAULT 0,
  last_rebirth {REAL}
);
CREATE TABLE IF NOT EXISTS lost (
  unit_id TEXT NOT NULL, from_seq {INT} NOT NULL, to_seq {INT} NOT NULL,
  recorded_at {REAL} NOT NULL, PRIMARY KEY (unit_id, from_seq)
);
CREATE TABLE IF NOT EXISTS seq_notes (        -- seqs accounted for without an event row (refused, conflicting)
  unit_id TEXT NOT NULL, seq {INT} NOT NULL, reason TEXT NOT NULL,
  recorded_at {REAL} NOT NULL, PRIMARY KEY (unit_id, seq)
);
CREATE TABLE IF NOT EXISTS receipts (
  receipt_id TEXT PRIMARY KEY,
  session_id TEXT NOT NULL, n {INT} NOT NULL, kind TEXT NOT NULL,
  issued_at {REAL} NOT NULL, total {INT} NOT NULL,
  payload TEXT NOT NULL, published {INT} NOT NULL DEFAULT 0,
  UNIQUE (session_id, n)
);
CREATE TABLE IF NOT EXISTS deadletters (
  id TEXT PRIMARY KEY, t {REAL} NOT NULL, reason TEXT NOT NULL, action TEXT NOT NULL,
  topic TEXT NOT NULL, detail TEXT NOT NULL,
  event_id TEXT, unit_id TEXT, session_id TEXT, payload TEXT,
  published {INT} NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deadletters_t ON deadletters (t);
CREATE TABLE IF NOT EXISTS pending_exits (
  session_id TEXT PRIMARY KEY, t {REAL} NOT NULL, gate TEXT, received_at {REAL} NOT NULL
);
"""


class RetryTransaction(Exception):
    """A deadlock or serialization failure between instances: roll back and run the batch again."""


class Store:
    pg = False

    def __init__(self) -> None:
        self.conn: Any = None

    # -- dialect helpers
    def sql(self, s: str) -> str:
        return s

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def for_update(self) -> str:
        return ""

    def skip_locked(self) -> str:
        return ""

    # -- execution
    def ex(self, s: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(self.sql(s), tuple(params))

    def many(self, s: str, rows: list[tuple]) -> None:
        if rows:
            self.conn.executemany(self.sql(s), rows)

    def q(self, s: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self.ex(s, params).fetchall()

    def q1(self, s: str, params: Iterable[Any] = ()) -> tuple | None:
        return self.ex(s, params).fetchone()

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def end_read(self) -> None:
        """End a read-only stretch outside begin()/commit() (PostgreSQL opened a transaction)."""
        if self.pg:
            self.conn.rollback()

    def try_leader(self, key: int) -> bool:
        """Only one instance per key per transaction (PostgreSQL advisory lock); SQLite: always."""
        return True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def migrate(self) -> None:
        ddl = _DDL.format(**self._types())
        self.begin()
        for stmt in ddl.split(";"):
            body = "\n".join(l for l in stmt.splitlines() if not l.strip().startswith("--"))
            if body.strip():
                self.conn.execute(stmt)
        self.commit()

    def _types(self) -> dict[str, str]:
        raise NotImplementedError


class SqliteStore(Store):
    def __init__(self, path: Path, readonly: bool = False):
        super().__init__()
        path = Path(path)
        if readonly:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                        check_same_thread=False, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            # WAL: readers (the staff page) never block the writer. FULL: a commit is on disk
            # before the broker gets our PUBACK, so a power cut cannot lose an acknowledged event.
            # One fsync per burst of messages, so this costs little.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=10000")

    def _types(self) -> dict[str, str]:
        return {"REAL": "REAL", "INT": "INTEGER", "ID": "INTEGER PRIMARY KEY"}

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


class PostgresStore(Store):
    pg = True

    def __init__(self, dsn: str, schema: str = "public", readonly: bool = False):
        super().__init__()
        import psycopg
        self._psycopg = psycopg
        self._cache: dict[str, str] = {}
        self.schema = schema
        self.conn = psycopg.connect(dsn, autocommit=False)
        if schema != "public":
            # The schema itself is created in migrate(), under the advisory lock: several
            # instances starting together would otherwise race on CREATE SCHEMA.
            self.conn.execute(f'SET search_path TO "{schema}"')
            self.conn.commit()
        if readonly:
            self.conn.read_only = True
            self.conn.autocommit = True

    def _types(self) -> dict[str, str]:
        return {"REAL": "DOUBLE PRECISION", "INT": "BIGINT", "ID": "BIGSERIAL PRIMARY KEY"}

    def sql(self, s: str) -> str:
        out = self._cache.get(s)
        if out is None:
            out = self._cache[s] = s.replace("?", "%s")
        return out

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def for_update(self) -> str:
        return " FOR UPDATE"

    def skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    def ex(self, s: str, params: Iterable[Any] = ()) -> Any:
        try:
            return self.conn.execute(self.sql(s), tuple(params))
        except (self._psycopg.errors.DeadlockDetected, self._psycopg.errors.SerializationFailure,
                self._psycopg.errors.UniqueViolation) as exc:
            raise RetryTransaction(str(exc).splitlines()[0]) from exc

    def many(self, s: str, rows: list[tuple]) -> None:
        if rows:
            try:
                with self.conn.cursor() as cur:
                    cur.executemany(self.sql(s), rows)
            except (self._psycopg.errors.DeadlockDetected, self._psycopg.errors.SerializationFailure,
                    self._psycopg.errors.UniqueViolation) as exc:
                raise RetryTransaction(str(exc).splitlines()[0]) from exc

    def begin(self) -> None:
        pass  # psycopg opens a transaction with the first statement

    def try_leader(self, key: int) -> bool:
        return bool(self.conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()[0])

    def migrate(self) -> None:
        # Several instances may start together: serialise the DDL.
        self.conn.execute("SELECT pg_advisory_xact_lock(7301)")
        if self.schema != "public":
            self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        super().migrate()


def open_store(storage: SqliteStorage | PostgresStorage, readonly: bool = False) -> Store:
    if isinstance(storage, SqliteStorage):
        return SqliteStore(storage.path, readonly=readonly)
    return PostgresStore(storage.dsn, storage.schema_name, readonly=readonly)
