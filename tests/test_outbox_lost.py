"""An outbox that knows it lost something, and a state_dir the unit cannot write.

A missing, empty or corrupt ``outbox.sqlite3`` while the seq ceiling says events were issued: one
ERROR line, status ``degraded`` with reason ``outbox_lost: ...``, numbering above the ceiling
(never seq 1 again), a corrupt file kept aside. An unwritable ``state_dir``: exit 73 with one line
naming the path, and a retained ``stopped`` status saying why.

How the tests make a directory unwritable although they run as root (root ignores mode bits):
``chattr +i`` (immutable; even root cannot create files in it) where the file system supports it,
else ``/proc/1/fdinfo`` (an existing directory no process may create files in), and separately a
path under a regular file (``file/state``: ENOTDIR, cannot even be created).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, write_config
from test_publisher import item_event

from daemon.publish.outbox import Outbox

PREFIX = "gondola/v1/demo-store/sim-unit-1"


# ---------------------------------------------------------------- the Outbox itself


def _issued(path: Path, n: int, sent: int = 0) -> list[dict]:
    ob = Outbox(path)
    evs = [ob.add(item_event(i)) for i in range(n)]
    ob.mark_sent_many([e["event_id"] for e in evs[:sent]])
    ob.close()
    return evs


def _break(path: Path, how: str) -> None:
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    elif how == "truncated":
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.write_bytes(b"")
    elif how == "corrupt":
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        data = bytearray(path.read_bytes())
        data[:100] = os.urandom(100)  # the header: "file is not a database"
        path.write_bytes(bytes(data))
    elif how == "wal-orphan":
        path.unlink()  # database gone, its WAL left behind


def test_a_new_unit_and_a_healthy_reopen_lose_nothing(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    assert ob.lost is None and not (tmp_path / "o.db.seq").exists()  # no ceiling until an event
    ob.close()
    _issued(tmp_path / "o.db", 3)
    ob = Outbox(tmp_path / "o.db")
    assert ob.lost is None and ob.last_seq() == 3 and ob.depth() == 3
    ob.close()


@pytest.mark.parametrize("how", ["deleted", "truncated", "corrupt", "wal-orphan"])
def test_a_lost_outbox_is_an_error_and_seq_continues_above_the_ceiling(tmp_path, how, caplog):
    path = tmp_path / "outbox.sqlite3"
    _issued(path, 6, sent=2)
    ceiling = int((tmp_path / "outbox.sqlite3.seq").read_text())
    assert ceiling >= 6
    if how == "wal-orphan":  # leave a WAL: close without checkpointing by copying it first
        ob = Outbox(path)
        ob.add(item_event(99))
        wal = Path(str(path) + "-wal").read_bytes()
        ob.close()
        Path(str(path) + "-wal").write_bytes(wal)
    _break(path, how)
    caplog.set_level("ERROR", logger="daemon.publish.outbox")
    ob = Outbox(path)
    try:
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0].getMessage()
        assert ob.lost is not None and ob.lost_reason.startswith("outbox_lost: ")
        assert ob.last_seq() >= ceiling
        ev = ob.add(item_event(7))
        assert ev["seq"] == ob.lost["ceiling"] + 1 > 6  # never seq 1 again
        if how == "corrupt":
            kept = list(tmp_path.glob("outbox.sqlite3.corrupt-*"))
            assert kept and ob.lost["aside"] == kept[0].name
        if how == "wal-orphan":
            assert list(tmp_path.glob("outbox.sqlite3-wal.orphan-*"))
    finally:
        ob.close()
    # the next start is a healthy one: the loss was reported, the new outbox is sound
    again = Outbox(path)
    assert again.lost is None and again.last_seq() == ev["seq"]
    again.close()


# ---------------------------------------------------------------- shelfd run


def _config(tmp_path: Path, broker_port: int, state_dir: Path, duration: float = 40) -> Path:
    return write_config(tmp_path / "unit.yaml", state_dir=str(state_dir), mqtt__port=broker_port,
                        mqtt__health_interval_s=1,
                        sensing={"backend": "sim", "seed": 5, "speed": 0, "events_per_min": 40,
                                 "duration_s": duration})


def _run(cfg: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["deleted", "truncated", "corrupt"])
def test_shelfd_reports_a_lost_outbox_degraded_and_never_reuses_a_seq(tmp_path, mosquitto, subscriber_factory, how):
    state = tmp_path / "state"
    # first run: broker unreachable (port 1), so events stay unsent in the outbox
    first = _run(_config(tmp_path, 1, state))
    assert first.returncode == 0, first.stderr[-2000:]
    db = state / "outbox.sqlite3"
    con = sqlite3.connect(db)
    issued, unsent = con.execute("SELECT max(seq), sum(sent_at IS NULL) FROM events").fetchone()
    con.close()
    assert issued >= 5 and unsent == issued
    ceiling = int((state / "outbox.sqlite3.seq").read_text())
    _break(db, how)

    sub = subscriber_factory(mosquitto, f"{PREFIX}/#")
    second = _run(_config(tmp_path, mosquitto.port, state))
    assert second.returncode == 0, second.stderr[-2000:]
    errors = [l for l in second.stderr.splitlines() if "outbox_lost" in l or "outbox" in l and "ERROR" in l]
    assert len([l for l in second.stderr.splitlines() if " ERROR " in l or l.startswith("<3>")]) == 1, second.stderr
    assert errors and "lost" in errors[0]
    statuses = [m.json() for m in sub.messages if m.topic.endswith("/status")]
    degraded = [s for s in statuses if s["state"] == "degraded"]
    assert degraded and degraded[0]["reason"].startswith("outbox_lost: "), statuses
    assert statuses[0]["state"] == "degraded"  # from the first status on
    seqs = [m.json()["seq"] for m in sub.messages if m.topic.endswith("/events")]
    assert seqs and min(seqs) == ceiling + 1 and seqs == sorted(set(seqs))
    health = [m.json() for m in sub.messages if m.topic.endswith("/health")]
    assert health and health[-1]["outbox"]["lost"]["reason"] == "outbox_lost"


def _immutable_dir(tmp_path: Path) -> tuple[Path, callable]:
    d = tmp_path / "ro-state"
    d.mkdir()
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode == 0:
        probe = d / "probe"
        try:
            probe.touch()
        except OSError:
            return d, lambda: subprocess.run([chattr, "-i", str(d)], capture_output=True)
        probe.unlink()
        subprocess.run([chattr, "-i", str(d)], capture_output=True)
    return Path("/proc/1/fdinfo"), lambda: None


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["under-a-file", "read-only-dir"])
def test_unwritable_state_dir_exits_73_with_one_line_and_a_retained_status(
    tmp_path, mosquitto, subscriber_factory, kind
):
    undo = lambda: None  # noqa: E731
    if kind == "under-a-file":
        (tmp_path / "file").write_text("not a folder")
        state = tmp_path / "file" / "state"
    else:
        state, undo = _immutable_dir(tmp_path)
    try:
        sub = subscriber_factory(mosquitto, f"{PREFIX}/status")
        r = _run(_config(tmp_path, mosquitto.port, state), timeout=60)
    finally:
        undo()
    assert r.returncode == 73, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state) in lines[0] and "not writable" in lines[0], lines
    assert "Traceback" not in r.stderr
    st = sub.wait_for(1, timeout=10, where=lambda m: m.json()["state"] == "stopped")[-1]
    assert str(state) in st.json()["reason"] and st.json()["reason"].startswith("cannot start: ")
    late = subscriber_factory(mosquitto, f"{PREFIX}/status")
    kept = late.wait_for(1, timeout=5)[0]
    assert kept.retain and kept.json()["state"] == "stopped" and str(state) in kept.json()["reason"]


@pytest.mark.integration
def test_unwritable_state_dir_without_a_broker_still_exits_73_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = _run(_config(tmp_path, 1, tmp_path / "file" / "state"), timeout=60)
    assert r.returncode == 73 and len(r.stderr.strip().splitlines()) == 1, r.stderr
