"""Durable outbox: every item event is committed to SQLite *before* anyone tries to send it.

The outbox is the source of truth for delivery. The MQTT publisher reads ``pending()`` in ``seq``
order and calls ``mark_sent()`` only when the broker has acknowledged (PUBACK), so a broker
outage, a crash or a power cut never loses a committed event; at worst one is sent twice with the
same ``event_id`` and the consumer dedupes.

Durability choices:

* WAL journal + ``synchronous=FULL``: a commit is on stable storage when ``add()`` returns.
* ``seq`` is kept in a ``meta`` row, not derived from ``max(seq)``, because pruning deletes rows.
* A small sidecar file ``<db>.seq`` holds a *reservation*: a ceiling no issued ``seq`` exceeds,
  advanced in blocks (hi/lo allocation) and written only when an event is added, so its presence
  says events were issued. If the database is ever unreadable, numbering restarts above that
  ceiling, so a consumer sees a gap (the honest signal) rather than reused numbers.

An outbox that knows it lost something: when the database is missing, empty (0 bytes, or no
tables) or corrupt while the ceiling says events were issued, the unsent events in it are gone.
That is one ERROR line, :attr:`Outbox.lost` says what happened (the service turns it into status
``degraded``, reason ``outbox_lost: ...``), numbering continues above the ceiling, and a corrupt
file (or a WAL left without its database) is moved aside as ``*.corrupt-<stamp>`` / ``*.orphan-<stamp>``
for forensics, never deleted.

The schema is versioned (``PRAGMA user_version``, numbered :data:`MIGRATIONS` applied at open);
``install.sh`` keeps the outbox across upgrades, so a unit's unsent events survive a schema
change. A file written by newer code is refused with :class:`OutboxTooNew` (``shelfd run``: exit
78, one line) and left as it is.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulid import ULID

from daemon.atomicfile import atomic_write
from daemon.timefmt import file_stamp

log = logging.getLogger(__name__)

# Numbered schema migrations; the database's ``PRAGMA user_version`` says how many are applied.
# Append, never edit: migration N brings a version N-1 database to version N, and every unit runs
# the ones it has not seen at start, each in its own transaction with the version bump. Units
# installed before the schema was versioned carry migration 1's tables at user_version 0: the
# statements are idempotent (IF NOT EXISTS, OR IGNORE), so running migration 1 on such a file
# adopts it as version 1 without touching its rows. A database newer than the code is refused
# (:class:`OutboxTooNew`): an older shelfd must not guess at columns it does not know.
MIGRATIONS: tuple[str, ...] = (
    # 1: events with seq and event_id, the seq counter in meta
    """
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
    INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def check_version(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutboxTooNew` when the outbox at ``path`` was written by newer code.

    A cheap look before a service starts anything; a missing, empty or unreadable file passes (the
    full open in :class:`Outbox` deals with those, and checks the version again).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return
        db = sqlite3.connect(path, timeout=10.0)
    except (OSError, sqlite3.Error):
        return
    try:
        found = schema_version(db)
    except sqlite3.Error:
        return
    finally:
        db.close()
    if found > SCHEMA_VERSION:
        raise OutboxTooNew(path, found)


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Apply the migrations ``db`` has not seen; return the version it started at.

    ``db`` must be in autocommit mode (``isolation_level=None``). Raises :class:`OutboxTooNew`
    for a database written by newer code, before changing anything.
    """
    found = schema_version(db)
    if found > SCHEMA_VERSION:
        raise OutboxTooNew(path, found)
    for n in range(found + 1, SCHEMA_VERSION + 1):
        try:
            db.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[n - 1]}\nPRAGMA user_version = {n};\nCOMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if n > 1 or found > 0:
            log.info("outbox %s: schema migrated to version %d", path, n)
    return found


class OutboxError(Exception):
    """The outbox cannot store an event (disk full, duplicate seq, ...)."""


class OutboxTooNew(OutboxError):
    """The outbox's schema version is newer than this code knows (a downgrade): refused, untouched."""

    def __init__(self, path: Path, found: int) -> None:
        super().__init__(f"outbox {path} has schema version {found}, newer than this shelfd's {SCHEMA_VERSION}: "
                         f"install the newer shelfd again (the file is left untouched)")
        self.path, self.found, self.known = path, found, SCHEMA_VERSION


@dataclass(frozen=True)
class OutboxRecord:
    """One stored event with its bookkeeping (the publisher needs ``stored_at``)."""

    seq: int
    event_id: str
    stored_at: float
    sent_at: float | None
    event: dict[str, Any]


class Outbox:
    """SQLite-backed, thread-safe event outbox for one unit.

    One connection guarded by a lock: the pipeline thread (``add``) and the publisher thread
    (``pending``/``mark_sent``) are the only users and every statement is short, so a lock is
    simpler than per-thread connections and keeps ``seq`` allocation trivially serial.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        keep_days: float = 7.0,
        keep_rows: int = 100_000,
        seq_block: int = 1000,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._keep_s = keep_days * 86400.0
        self._keep_rows = keep_rows
        self._seq_block = max(1, seq_block)
        self._busy_timeout_s = busy_timeout_s
        self._seq_file = self.path.with_name(self.path.name + ".seq")
        self._lock = threading.RLock()
        self._last_ulid: ULID | None = None
        #: None, or what was lost at open: {"reason", "detail", "ceiling", "aside"} (see module doc)
        self.lost: dict[str, Any] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ceiling = self._read_ceiling()
        state = self._file_state()
        self._fresh = False
        self._db = self._open_checked()
        self._ceiling = self._read_ceiling()
        if self.lost is None and self._fresh and ceiling > 0:
            self._declare_lost(state, ceiling)
        self.prune()

    # ------------------------------------------------------------ a lost outbox

    @property
    def lost_reason(self) -> str | None:
        """The one-line ``degraded`` reason for a lost outbox, else None."""
        if self.lost is None:
            return None
        return f"outbox_lost: {self.lost['detail']}"

    def _file_state(self) -> str:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return "missing"
        return "empty (0 bytes)" if size == 0 else "present"

    def _declare_lost(self, state: str, ceiling: int) -> None:
        """A new database where events had been issued: continue above the ceiling, say so."""
        if state == "present":
            state = "without its tables"
        with self._lock:
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND value < ?", (ceiling, ceiling))
        detail = (f"{self.path.name} was {state} although seq up to {ceiling} may have been issued; "
                  f"unsent events in it are lost, numbering continues at {self.last_seq() + 1}")
        self.lost = {"reason": "outbox_lost", "detail": detail, "ceiling": ceiling, "aside": None}
        log.error("outbox %s: %s", self.path, detail)

    # ------------------------------------------------------------ opening and recovery

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is exactly
        # what we say it is.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=self._busy_timeout_s)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _open_checked(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        if not self.path.exists() or self.path.stat().st_size == 0:
            # A WAL without its database would be replayed into the new file: keep it aside.
            for suffix in ("-wal", "-shm"):
                orphan = Path(str(self.path) + suffix)
                if orphan.exists():
                    os.replace(orphan, orphan.with_name(f"{orphan.name}.orphan-{file_stamp()}"))
        try:
            db = self._connect()
            row = db.execute("PRAGMA quick_check").fetchone()
            if not row or row[0] != "ok":
                raise _Corrupt(f"quick_check: {row[0] if row else 'no answer'}")
            self._fresh = (
                db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None
            )
            migrate(db, self.path)
            return db
        except OutboxTooNew:
            if db is not None:
                db.close()
            raise
        except sqlite3.DatabaseError as exc:
            # "locked", "unable to open", "disk I/O error" are not corruption: moving a healthy
            # file aside would lose events, so those propagate.
            if not _is_corruption(exc):
                if db is not None:
                    db.close()
                raise
            recovered = _salvage_last_seq(db)
            if db is not None:
                db.close()
            aside = self._move_aside()
            db = self._connect()
            migrate(db, self.path)
            # Continue above anything the broken file or the reservation says was issued.
            start = max(recovered, self._read_ceiling())
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (start,))
            detail = (f"{self.path.name} was corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}), "
                      f"moved to {aside.name}; unsent events in it are lost, numbering continues at {start + 1}")
            self.lost = {"reason": "outbox_lost", "detail": detail, "ceiling": start, "aside": aside.name}
            log.error("outbox %s: %s", self.path, detail)
            return db

    def _move_aside(self) -> Path:
        stamp = file_stamp()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        return aside

    # ------------------------------------------------------------ seq reservation (sidecar)

    def _read_ceiling(self) -> int:
        try:
            return int(self._seq_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _reserve(self, seq: int) -> None:
        """Persist a ceiling >= seq before seq is committed (one fsync per ``seq_block``)."""
        if seq <= self._ceiling:
            return
        ceiling = seq + self._seq_block - 1
        atomic_write(self._seq_file, f"{ceiling}\n")
        self._ceiling = ceiling

    # ------------------------------------------------------------ writing

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        """Store one event; assign ``seq`` and ``event_id`` unless present; return the stored event.

        Idempotent on ``event_id``: adding an event whose id is already stored returns the stored
        copy instead of creating a second row (a retried ``add`` after a crash is harmless).
        """
        ev = dict(event)
        with self._lock:
            now = self._clock()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if ev.get("event_id"):
                    row = db.execute("SELECT body FROM events WHERE event_id = ?",
                                     (ev["event_id"],)).fetchone()
                    if row:
                        db.execute("ROLLBACK")
                        stored: dict[str, Any] = json.loads(row[0])
                        return stored
                last = self._last_seq()
                if ev.get("seq") is None:
                    seq = last + 1
                else:
                    seq = int(ev["seq"])
                    if db.execute("SELECT 1 FROM events WHERE seq = ?", (seq,)).fetchone():
                        raise OutboxError(f"seq {seq} is already stored")
                self._reserve(seq)
                ev["seq"] = seq
                if not ev.get("event_id"):
                    ev["event_id"] = self._new_event_id(now)
                db.execute(
                    "INSERT INTO events (seq, event_id, stored_at, sent_at, body) VALUES (?, ?, ?, NULL, ?)",
                    (seq, ev["event_id"], now, json.dumps(ev, separators=(",", ":"))),
                )
                if seq > last:
                    db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return ev

    def _new_event_id(self, now: float) -> str:
        # Monotonic ULID: within one millisecond plain ULIDs sort randomly; incrementing keeps
        # event_id order equal to seq order, which is what "time-sortable" promises consumers.
        u = ULID.from_timestamp(now)
        if self._last_ulid is not None and int(u) <= int(self._last_ulid):
            u = ULID.from_int(int(self._last_ulid) + 1)
        self._last_ulid = u
        return str(u)

    def mark_sent(self, event_id: str) -> bool:
        """Record that the broker acknowledged ``event_id``; False when it was unknown or done."""
        return self.mark_sent_many([event_id]) == 1

    def mark_sent_many(self, event_ids: Iterable[str]) -> int:
        """Acknowledge several events in one transaction (one fsync); returns rows changed."""
        ids = list(event_ids)
        if not ids:
            return 0
        with self._lock:
            now = self._clock()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = 0
                for eid in ids:
                    n += db.execute("UPDATE events SET sent_at = ? WHERE event_id = ? AND sent_at IS NULL",
                                    (now, eid)).rowcount
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return n

    def prune(self) -> int:
        """Drop acknowledged rows older than ``keep_days`` or beyond the newest ``keep_rows``.

        Unacknowledged rows are never pruned. Returns the number of rows removed.
        """
        with self._lock:
            db = self._db
            cutoff = self._clock() - self._keep_s
            n = db.execute("DELETE FROM events WHERE sent_at IS NOT NULL AND sent_at < ?", (cutoff,)).rowcount
            row = db.execute(
                "SELECT seq FROM events WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (self._keep_rows,),
            ).fetchone()
            if row:
                n += db.execute("DELETE FROM events WHERE sent_at IS NOT NULL AND seq <= ?", (row[0],)).rowcount
        if n:
            log.debug("outbox pruned %d acknowledged events", n)
        return n

    # ------------------------------------------------------------ reading

    def pending_records(self, limit: int = 100, after_seq: int = 0) -> list[OutboxRecord]:
        """Unacknowledged events with ``seq > after_seq``, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, stored_at, sent_at, body FROM events "
                "WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[dict[str, Any]]:
        """Unacknowledged events (dicts), in seq order."""
        return [r.event for r in self.pending_records(limit, after_seq)]

    def since(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored events (sent or not, not yet pruned) with ``seq > seq``: for consumer resends."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def records_between(self, from_seq: int, to_seq: int, limit: int = 1000) -> list[OutboxRecord]:
        """Stored events (sent or not, not yet pruned) with ``from_seq <= seq <= to_seq``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, stored_at, sent_at, body FROM events "
                "WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (from_seq, to_seq, limit),
            ).fetchall()
        return [OutboxRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def seqs_between(self, from_seq: int, to_seq: int) -> list[tuple[int, bool]]:
        """(seq, acknowledged) of the stored events with ``from_seq <= seq <= to_seq``; no bodies."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, sent_at IS NOT NULL FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (from_seq, to_seq),
            ).fetchall()
        return [(int(r[0]), bool(r[1])) for r in rows]

    def depth(self) -> int:
        """Number of unacknowledged events."""
        with self._lock:
            n: int = self._db.execute("SELECT count(*) FROM events WHERE sent_at IS NULL").fetchone()[0]
            return n

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest unacknowledged event was stored; None when nothing is pending."""
        with self._lock:
            row = self._db.execute("SELECT min(stored_at) FROM events WHERE sent_at IS NULL").fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, self._clock() - float(row[0]))

    def last_seq(self) -> int:
        """The highest seq issued so far (0 for a new unit)."""
        with self._lock:
            return self._last_seq()

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # closing twice or after a failed open: nothing to protect
                pass

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Corrupt(sqlite3.DatabaseError):
    """quick_check found damage."""


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, _Corrupt):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in str(exc) \
        or "malformed" in str(exc)


def _salvage_last_seq(db: sqlite3.Connection | None) -> int:
    """Best effort: the highest seq a broken database still admits to, else 0."""
    if db is None:
        return 0
    best = 0
    for sql in ("SELECT value FROM meta WHERE key = 'last_seq'", "SELECT max(seq) FROM events"):
        try:
            row = db.execute(sql).fetchone()
            if row and row[0] is not None:
                best = max(best, int(row[0]))
        except (sqlite3.Error, ValueError, TypeError):
            continue
    return best
