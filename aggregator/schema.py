"""cartd's database schema: numbered migrations, applied at start, and the recorded version.

Why: cartd's database holds receipts and outlives upgrades. Every change to the schema is a new
numbered migration appended to ``MIGRATIONS`` (never an edit of an old one), so a database of any
earlier version is brought up to date, in order, in one transaction, at start; a database written
by a *newer* cartd is refused (``SchemaTooNew``: cartd exits 78) rather than half understood.

The version is ``PRAGMA user_version`` on SQLite and the ``schema_version`` table on PostgreSQL
(one row per applied migration). A database from before versions existed (version 0) gets
migration 1, whose statements are all ``IF NOT EXISTS``: its tables and rows are kept as they are.
Several instances starting together on PostgreSQL serialise on an advisory lock.

Adding a column: append ``Migration(2, "why", "ALTER TABLE lines ADD COLUMN ...")`` (``{REAL}``,
``{INT}`` and ``{ID}`` become the dialect's types), then read or write it in aggregator/tables/.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

_PG_LOCK = 7301  # advisory lock key: one instance migrates at a time


class Migration(NamedTuple):
    number: int
    why: str
    sql: str  # statements separated by ';', with {REAL}/{INT}/{ID} placeholders


_V1 = """
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

# The staff console (issue 13): a review state per line, the unit's own review flags per event,
# staff decisions queued for cartd to apply, the audit log, local staff accounts and sign-ins.
_V2 = """
ALTER TABLE lines ADD COLUMN review_state TEXT;     -- NULL nothing to review | open | accepted | changed | removed
ALTER TABLE lines ADD COLUMN reviewed_by TEXT;
ALTER TABLE lines ADD COLUMN reviewed_at {REAL};
UPDATE lines SET review_state = 'open' WHERE needs_review = 1;
ALTER TABLE events ADD COLUMN flags TEXT;           -- the unit own doubts: low_confidence, misplaced
CREATE INDEX IF NOT EXISTS lines_review ON lines (review_state);
CREATE TABLE IF NOT EXISTS review_decisions (       -- written by the console, applied by cartd
  id {ID},
  line_id {INT} NOT NULL,
  action TEXT NOT NULL,                             -- accept | product | shopper | remove
  sku TEXT, quantity {INT}, session_id TEXT,
  actor TEXT NOT NULL, decided_at {REAL} NOT NULL,
  applied_at {REAL}, result TEXT
);
CREATE INDEX IF NOT EXISTS review_decisions_todo ON review_decisions (applied_at);
CREATE TABLE IF NOT EXISTS audit (
  id {ID}, t {REAL} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  target TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_t ON audit (t);
CREATE TABLE IF NOT EXISTS staff_users (
  username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
  created_at {REAL} NOT NULL, disabled {INT} NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS staff_sessions (         -- sign-ins, keeping only a digest of the cookie token
  token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
  created_at {REAL} NOT NULL, expires_at {REAL} NOT NULL
);
CREATE TABLE IF NOT EXISTS console_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "the schema of cartd before versioned schemas (every statement IF NOT EXISTS, so an"
                 " unversioned database of that schema is adopted as it is)", _V1),
    Migration(2, "staff console: line review states, event flags, review decisions, audit log, staff accounts",
              _V2),
]
LATEST = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer cartd: refuse it rather than misread it."""

    def __init__(self, where: str, found: int, known: int):
        self.where, self.found, self.known = where, found, known
        super().__init__(f"{where} has schema version {found}, this cartd knows versions up to {known}:"
                         " refusing to start (upgrade cartd, or use a database of its version)")


def version(store: Store) -> int:
    """The database's recorded schema version (0: none recorded)."""
    if store.pg:
        if not _has_table(store, "schema_version"):
            return 0
        row = store.q1("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0
    row = store.q1("PRAGMA user_version")
    return int(row[0]) if row else 0


def _has_table(store: Store, name: str) -> bool:
    if store.pg:
        sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return store.q1(sql, (name,)) is not None


def _record(store: Store, number: int) -> None:
    if store.pg:
        store.ex("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ"
                 " NOT NULL DEFAULT now())")
        store.ex("INSERT INTO schema_version (version) VALUES (?) ON CONFLICT DO NOTHING", (number,))
    else:
        store.ex(f"PRAGMA user_version = {int(number)}")


def _statements(m: Migration, types: dict[str, str]) -> list[str]:
    out = []
    for stmt in m.sql.format(**types).split(";"):
        body = "\n".join(l for l in stmt.splitlines() if not l.strip().startswith("--"))
        if body.strip():
            out.append(stmt)
    return out


def migrate(store: Store, migrations: list[Migration] | None = None) -> int:
    """Apply the missing migrations in one transaction; returns the version the database is now at.

    Raises SchemaTooNew (nothing changed) when the database is newer than ``migrations``."""
    migrations = MIGRATIONS if migrations is None else migrations
    latest = len(migrations)
    store.begin()
    try:
        store.before_migration(_PG_LOCK)
        found = version(store)
        if found > latest:
            raise SchemaTooNew(store.describe(), found, latest)
        if found == 0 and _has_table(store, "sessions"):
            log.info("%s has no schema version: its tables are cartd's first schema, adopted as version 1",
                     store.describe())
        for m in migrations[found:]:
            for stmt in _statements(m, store.column_types()):
                store.conn.execute(stmt)
            _record(store, m.number)
            log.info("%s: schema migration %d applied (%s)", store.describe(), m.number, m.why)
        store.commit()
    except BaseException:
        store.rollback()
        raise
    return latest
