"""The outbox: seq and event_id assignment, durability across reopen and SIGKILL, corruption."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon.publish.outbox import Outbox, OutboxError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _event(i: int = 0) -> dict:
    return {"schema": "gondola.item-event/1", "store_id": "s1", "unit_id": "u1", "shelf": "1",
            "plates": [0], "type": "pick", "sku": f"sku-{i}", "quantity": 1,
            "t_start": "2024-01-01T00:00:00.000Z", "t_end": "2024-01-01T00:00:01.000Z",
            "delta_g": -100.0, "confidence": 0.9, "candidates": []}


def test_add_assigns_increasing_seq_and_sortable_ids(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        evs = [ob.add(_event(i)) for i in range(50)]
    assert [e["seq"] for e in evs] == list(range(1, 51))
    ids = [e["event_id"] for e in evs]
    assert len(set(ids)) == 50
    assert ids == sorted(ids), "event_id must sort like seq even within one millisecond"
    assert evs[3]["sku"] == "sku-3"


def test_add_keeps_given_event_id_and_is_idempotent(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        a = ob.add({**_event(), "event_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"})
        b = ob.add({**_event(), "event_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"})
        assert a == b and ob.depth() == 1
        with pytest.raises(OutboxError):
            ob.add({**_event(), "seq": a["seq"]})
        assert ob.add(_event())["seq"] == a["seq"] + 1


def test_seq_persists_across_reopen_and_pruning(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, keep_rows=2) as ob:
        for i in range(5):
            ob.add(_event(i))
        ob.mark_sent_many(e["event_id"] for e in ob.pending(10))
        assert ob.prune() == 3
        assert [e["seq"] for e in ob.since(0)] == [4, 5]
    with Outbox(path) as ob:
        assert ob.add(_event())["seq"] == 6, "seq must not restart or reuse pruned numbers"


def test_pending_mark_sent_depth_age_since(tmp_path):
    now = [1000.0]
    with Outbox(tmp_path / "o.db", clock=lambda: now[0]) as ob:
        assert ob.depth() == 0 and ob.oldest_pending_age() is None
        evs = [ob.add(_event(i)) for i in range(5)]
        now[0] += 7.5
        assert ob.depth() == 5 and ob.oldest_pending_age() == pytest.approx(7.5)
        assert ob.mark_sent(evs[1]["event_id"]) is True
        assert ob.mark_sent(evs[1]["event_id"]) is False  # already acknowledged
        assert [e["seq"] for e in ob.pending(10)] == [1, 3, 4, 5]
        assert [e["seq"] for e in ob.pending(2, after_seq=1)] == [3, 4]
        assert [e["seq"] for e in ob.since(2)] == [3, 4, 5]
        assert ob.depth() == 4


def test_prune_by_age_never_drops_pending(tmp_path):
    now = [0.0]
    with Outbox(tmp_path / "o.db", clock=lambda: now[0], keep_days=1) as ob:
        evs = [ob.add(_event(i)) for i in range(4)]
        ob.mark_sent(evs[0]["event_id"])
        now[0] += 2 * 86400
        ob.mark_sent(evs[1]["event_id"])  # acknowledged just now: kept
        assert ob.prune() == 1
        assert [e["seq"] for e in ob.since(0)] == [2, 3, 4]
        assert ob.depth() == 2


def test_threads_adding_and_marking_concurrently(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        def adder():
            for i in range(100):
                ob.add(_event(i))

        threads = [threading.Thread(target=adder) for _ in range(3)]
        for t in threads:
            t.start()
        acked = 0
        while any(t.is_alive() for t in threads) or ob.depth():
            acked += ob.mark_sent_many(e["event_id"] for e in ob.pending(50))
        for t in threads:
            t.join()
        assert acked == 300
        assert [e["seq"] for e in ob.since(0)] == list(range(1, 301))


_WRITER = """
import sys
from daemon.publish.outbox import Outbox
ob = Outbox(sys.argv[1])
i = 0
while True:
    ev = ob.add({"sku": "x", "i": i})
    print(ev["seq"], flush=True)
    i += 1
"""


def test_sigkill_while_writing_loses_nothing_committed(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path) as ob:  # an existing history the child continues
        for i in range(3):
            ob.add(_event(i))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    reported: list[int] = []
    try:
        assert proc.stdout is not None
        while len(reported) < 150:
            line = proc.stdout.readline()
            assert line, "writer died early"
            reported.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    assert reported[0] == 4
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Outbox(path) as ob:
        seqs = [e["seq"] for e in ob.since(0, limit=100000)]
        assert seqs == list(range(1, len(seqs) + 1)), "no gaps, no duplicates"
        assert set(reported) <= set(seqs), "every add() that returned is durable"
        assert ob.add(_event())["seq"] == seqs[-1] + 1
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_garbage_file_is_moved_aside_and_seq_continues(tmp_path, caplog):
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        for i in range(42):
            ob.add(_event(i))
    path.write_bytes(os.urandom(16384))  # header gone: nothing recoverable from the file itself
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR, logger="daemon.publish.outbox"):
        ob = Outbox(path)
    try:
        aside = list(tmp_path.glob("o.db.corrupt-*"))
        assert len(aside) == 1
        records = [r for r in caplog.records if r.name == "daemon.publish.outbox"]
        assert len(records) == 1 and "corrupt" in records[0].getMessage()
        assert ob.depth() == 0
        # The seq reservation survives the broken file: numbering continues above 42.
        assert ob.add(_event())["seq"] > 42
    finally:
        ob.close()


def test_damaged_pages_are_detected_and_highest_seq_salvaged(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, seq_block=1) as ob:
        for i in range(300):
            ob.add({**_event(i), "pad": "x" * 500})
    Path(str(path) + ".seq").unlink()  # force recovery from the file alone
    size = path.stat().st_size
    with open(path, "r+b") as f:  # keep the header, smash pages in the middle
        f.seek(size // 2)
        f.write(b"\xff" * 8192)
    with Outbox(path) as ob:
        assert list(tmp_path.glob("o.db.corrupt-*"))
        assert ob.add(_event())["seq"] > 300


def test_locked_database_is_not_treated_as_corrupt(tmp_path):
    path = tmp_path / "o.db"
    Outbox(path).close()
    Path(str(path) + "-wal").unlink(missing_ok=True)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            Outbox(path, busy_timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert time.monotonic() - t0 < 5
    assert not list(tmp_path.glob("o.db.corrupt-*"))
