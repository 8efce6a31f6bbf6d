"""Storage: one small SQL dialect layer over SQLite (default) and PostgreSQL (psycopg 3).

The engine writes SQL once with ``?`` placeholders; PostgreSQL gets them as ``%s``. Times are
epoch seconds (REAL / DOUBLE PRECISION), money integer minor units. Every write happens inside a
transaction the engine opens with ``begin()`` and closes with ``commit()``; messages are
acknowledged to the broker only after the commit (see service.py).
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .config import PostgresStorage, SqliteStorage
from .schema import migrate as migrate_schema

log = logging.getLogger(__name__)

class RetryTransaction(Exception):
    """A deadlock or serialization failure between instances: roll back and run the batch again."""


class Store:
    pg = False

    def __init__(self) -> None:
        self.conn: Any = None

    # -- dialect helpers
    def sql(self, s: str) -> str:
        return s

    def for_update(self) -> str:
        return ""

    def skip_locked(self) -> str:
        return ""

    # -- execution
    def ex(self, s: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(self.sql(s), tuple(params))

    def many(self, s: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.executemany(self.sql(s), rows)

    def q(self, s: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.ex(s, params).fetchall()  # columns as the query names them
        return rows

    def q1(self, s: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.ex(s, params).fetchone()
        return row

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
        """Bring the schema to the code's version (schema.py); SchemaTooNew when the database is newer."""
        migrate_schema(self)

    def before_migration(self, lock_key: int) -> None:
        """Inside the migration's transaction, before the version is read (PostgreSQL: serialise
        instances starting together, create the schema)."""

    def describe(self) -> str:
        """The database as a person would name it in a message."""
        raise NotImplementedError

    def column_types(self) -> dict[str, str]:
        raise NotImplementedError


class SqliteStore(Store):
    def __init__(self, path: Path, readonly: bool = False, threads: bool = False):
        """``threads``: the connection is used from several threads, each time under the caller's
        lock (the staff console)."""
        super().__init__()
        path = self.path = Path(path)
        if readonly:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                        check_same_thread=False, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=not threads)
            # WAL: readers (the staff page) never block the writer. FULL: a commit is on disk
            # before the broker gets our PUBACK, so a power cut cannot lose an acknowledged event.
            # One fsync per burst of messages, so this costs little.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=10000")

    def column_types(self) -> dict[str, str]:
        return {"REAL": "REAL", "INT": "INTEGER", "ID": "INTEGER PRIMARY KEY"}

    def describe(self) -> str:
        return f"sqlite database {self.path}"

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
            # The schema itself is created by migrate(), under the advisory lock: several
            # instances starting together would otherwise race on CREATE SCHEMA.
            self.conn.execute(f'SET search_path TO "{schema}"')
            self.conn.commit()
        if readonly:
            self.conn.read_only = True
            self.conn.autocommit = True

    def column_types(self) -> dict[str, str]:
        return {"REAL": "DOUBLE PRECISION", "INT": "BIGINT", "ID": "BIGSERIAL PRIMARY KEY"}

    def sql(self, s: str) -> str:
        out = self._cache.get(s)
        if out is None:
            out = self._cache[s] = s.replace("?", "%s")
        return out

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

    def many(self, s: str, rows: Sequence[tuple[Any, ...]]) -> None:
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

    def before_migration(self, lock_key: int) -> None:
        # Several instances may start together: serialise the DDL (and CREATE SCHEMA, which races).
        self.ex("SELECT pg_advisory_xact_lock(?)", (lock_key,))
        if self.schema != "public":
            self.ex(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def describe(self) -> str:
        info = self.conn.info
        return f"postgres database {info.dbname!r} on {info.host}:{info.port}, schema {self.schema!r}"


def open_store(storage: SqliteStorage | PostgresStorage, readonly: bool = False, threads: bool = False) -> Store:
    if isinstance(storage, SqliteStorage):
        return SqliteStore(storage.path, readonly=readonly, threads=threads)
    return PostgresStore(storage.dsn, storage.schema_name, readonly=readonly)
