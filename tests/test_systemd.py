"""systemd integration of `shelfd run`: the unit file and the notify protocol.

The notify tests bind a real AF_UNIX datagram socket, hand it to the real `shelfd run`
subprocess as NOTIFY_SOCKET (with WATCHDOG_USEC), and read what systemd would read. No broker
runs in them: the MQTT port is closed, which is the point (the watchdog must not care).
"""
from __future__ import annotations

import array
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import _free_port, _skip_or_fail
from helpers import REPO, write_config

UNIT = REPO / "systemd" / "shelfd.service"
pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ the unit file


def _unit() -> dict[str, dict[str, list[str]]]:
    """Parse the unit (keys repeat, so values are lists)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        section.setdefault(k, []).append(v)
    return out


def _analyze() -> str:
    exe = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(exe, os.X_OK):
        _skip_or_fail("systemd-analyze not installed (Debian: apt-get install systemd)")
    return exe


def _verifiable_copy(tmp_path: Path) -> Path:
    # verify wants ExecStart's binary to exist: point it at a real file, change nothing else
    exe = tmp_path / "shelfd"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    d = tmp_path / "units"
    d.mkdir()
    text = UNIT.read_text()
    assert text.count("/opt/gondola/current/venv/bin/shelfd") == 1
    (d / "shelfd.service").write_text(text.replace("/opt/gondola/current/venv/bin/shelfd", str(exe)))
    return d / "shelfd.service"


def test_unit_verifies_without_warnings(tmp_path):
    r = subprocess.run([_analyze(), "verify", str(_verifiable_copy(tmp_path))], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_unit_security_exposure_at_most_3(tmp_path):
    r = subprocess.run([_analyze(), "security", "--offline=yes", str(_verifiable_copy(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for shelfd\.service: (\d+\.\d)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"systemd-analyze security exposure: {m.group(1)}")
    assert float(m.group(1)) <= 3.0


def test_unit_settings_that_matter():
    u = _unit()
    s = u["Service"]
    assert s["Type"] == ["notify"] and s["Restart"] == ["always"]
    prevent = " ".join(s["RestartPreventExitStatus"]).split()
    assert "78" in prevent and "66" in prevent, "a config error (or no config file) must not restart-loop"
    assert int(s["WatchdogSec"][0]) >= 10
    assert int(u["Unit"]["StartLimitBurst"][0]) >= 1 and int(u["Unit"]["StartLimitIntervalSec"][0]) > 0
    assert s["DevicePolicy"] == ["closed"] and "PrivateDevices" not in s
    assert {d.split()[0] for d in s["DeviceAllow"]} == {"char-gpiochip", "char-video4linux", "char-media",
                                                         "char-dma_heap"}
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert s["User"] == ["shelfd"] and set(s["SupplementaryGroups"][0].split()) == {"gpio", "video"}
    assert s["StateDirectory"] == ["shelfd"] and s["ConfigurationDirectory"] == ["shelfd"]
    # the names the example config and the installer use for the credentials
    creds = set(s["LoadCredential"])
    assert creds == {"shelfd-mqtt-password", "shelfd-mqtt-key"}
    example = (REPO / "systemd" / "shelfd.example.yaml").read_text()
    install = (REPO / "systemd" / "install.sh").read_text()
    for c in creds:
        assert f"${{CREDENTIALS_DIRECTORY}}/{c}" in example and f"$CREDSTORE/{c}" in install
    # ExecStart is what install.sh creates; state_dir of the example is the StateDirectory
    assert s["ExecStart"][0].startswith("/opt/gondola/current/venv/bin/shelfd run --config /etc/shelfd/shelfd.yaml")
    assert yaml.safe_load(example)["state_dir"] == "/var/lib/shelfd"
    sysusers = (REPO / "systemd" / "sysusers-gondola.conf").read_text()
    assert re.search(r"^u shelfd ", sysusers, re.M) and re.search(r"^m shelfd gpio$", sysusers, re.M)


# ------------------------------------------------------------------ the notify protocol


class NotifySocket:
    """What systemd's notify socket sees: (monotonic time, set of KEY=VALUE lines) per datagram."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            for level, kind, payload in anc:  # BARRIER=1 carries an fd; closing it answers
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        os.close(fd)
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, line: str) -> list[float]:
        return [t for t, lines in self.messages if line in lines]

    def lines(self, prefix: str) -> list[str]:
        return [l for _, lines in self.messages for l in lines if l.startswith(prefix)]

    def wait_for(self, line: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.times(line)
            if ts:
                return ts[0]
            time.sleep(0.02)
        raise AssertionError(f"no {line} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def _start(cfg: Path, notify: NotifySocket, stderr, watchdog_usec: int = 1_000_000,
           journal: bool = False) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(watchdog_usec),
               PYTHONPATH=str(REPO))
    env.pop("JOURNAL_STREAM", None)
    if journal:  # as systemd does: the stream's device and inode
        st = os.fstat(stderr.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _sim_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "unit.yaml", state_dir=str(tmp_path / "state"),
                        mqtt__port=_free_port(), sensing__speed=1.0)


def test_ready_status_watchdog_while_broker_is_down_and_stopping_on_sigterm(tmp_path, notify):
    log = open(tmp_path / "stderr.log", "w+")
    proc = _start(_sim_config(tmp_path), notify, log, watchdog_usec=400_000, journal=True)
    try:
        t_ready = notify.wait_for("READY=1", 30)
        assert any(l.startswith("STATUS=running") for l in notify.lines("STATUS="))
        time.sleep(2.0)  # samples flow, the broker port is closed the whole time
        pings = [t for t in notify.times("WATCHDOG=1") if t > t_ready]
        assert len(pings) >= 8, f"{len(pings)} WATCHDOG=1 in 2 s with WatchdogSec=0.4"
        assert max(np.diff(pings)) < 0.4, "a gap longer than the watchdog period"
        assert np.min(np.diff(pings)) >= 0.09, "pings are thinned to a quarter of the period"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    t_stop = notify.wait_for("STOPPING=1", 1)
    assert not [t for t in notify.times("WATCHDOG=1") if t > t_stop]
    # journald format: <N> priority prefix, no timestamp, one line per record
    log.seek(0)
    lines = [l for l in log.read().splitlines() if l]
    assert lines and all(re.match(r"<[2-7]>\S+: ", l) for l in lines), lines[:5]
    assert any(l.startswith("<6>daemon.service: unit ") for l in lines)
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d", l) for l in lines)


def _gap_recording(path: Path, rate: float = 20.0) -> float:
    """1.5 s of samples, a 3 s hole, 1.5 s more: a source that stalls, then recovers, then ends."""
    from daemon.sensing.base import SampleBlock
    from daemon.sensing.recording import RecordingWriter

    w = RecordingWriter(path, ["c1"], rate, "g", "u1")
    t0 = 1_700_000_000.0
    for start in (0.0, 4.5):
        for k in range(int(1.5 * rate / 5)):
            t = t0 + start + (k * 5 + np.arange(5)) / rate
            w.write(SampleBlock(t=t, values=np.full((5, 1), 100.0), flags=np.zeros((5, 1), np.uint8)))
    w.close()
    return 3.0


def test_watchdog_only_while_samples_flow(tmp_path, notify):
    rec = tmp_path / "gap.jsonl"
    hole = _gap_recording(rec)
    cfg = {"version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path / "state"),
           "mqtt": {"port": _free_port()},
           "sensing": {"backend": "replay", "format": "shelfd", "path": str(rec), "speed": 1.0},
           "shelves": [{"id": "1", "plates": [{"id": 1, "channels": ["c1"]}]}]}
    p = tmp_path / "replay.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = _start(p, notify, subprocess.DEVNULL, watchdog_usec=400_000)
    try:
        assert proc.wait(30) == 0, "the replay ends and the service exits 0"
    finally:
        if proc.poll() is None:
            proc.kill()
    t_ready = notify.wait_for("READY=1", 1)
    t_stop = notify.wait_for("STOPPING=1", 1)
    pings = [t for t in notify.times("WATCHDOG=1") if t_ready <= t]
    gaps = np.diff(pings)
    assert len(pings) >= 6
    # exactly one long silence, as long as the hole in the samples; none after the end
    assert (gaps > 1.0).sum() == 1 and hole - 0.6 < gaps.max() < hole + 1.0, gaps
    assert pings[-1] < t_stop
    assert not [t for t in notify.times("WATCHDOG=1") if t > t_stop]


def test_config_error_exits_78_fast_with_one_line_per_problem_and_a_status(tmp_path, notify):
    bad = write_config(tmp_path / "bad.yaml", state_dir=str(tmp_path / "state"), mqtt__port=0,
                       unit_id="a/b")
    log = open(tmp_path / "stderr.log", "w+")
    t0 = time.monotonic()
    proc = _start(bad, notify, log, journal=True)
    rc = proc.wait(20)
    took = time.monotonic() - t0
    assert rc == 78
    assert took < 10, f"{took:.1f} s to refuse a bad config"
    log.seek(0)
    lines = log.read().splitlines()
    assert len(lines) == 2 and all(l.startswith("<3>") for l in lines), lines
    assert any("mqtt.port: must be 1..65535, got 0" in l for l in lines)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if t.startswith("unit_id:"))
    assert any(l.startswith(f"<3>{bad}:{line}: unit_id:") for l in lines), lines
    status = notify.lines("STATUS=")
    assert status and status[-1].startswith("STATUS=config error, not restarting: ") and "+1 more" in status[-1]
    assert "BARRIER=1" in [l for _, ls in notify.messages for l in ls]
    assert not notify.times("READY=1") and not notify.times("WATCHDOG=1")


# ------------------------------------------------------------------ pieces, in process


def test_notifier_is_silent_without_socket_and_honours_watchdog_pid(tmp_path, notify):
    from daemon.sdnotify import Notifier

    n = Notifier(env={})
    assert not n.enabled and n.watchdog_s is None
    n.ready("x"), n.watchdog(), n.stopping()  # no-ops, no error
    other = Notifier(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
                          "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.enabled and other.watchdog_s is None, "the watchdog is meant for another process"
    clock = [0.0]
    mine = Notifier(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
                         "WATCHDOG_PID": str(os.getpid())}, clock=lambda: clock[0])
    for k in range(20):  # 2 s of calls every 0.1 s → one ping per 0.25 s
        clock[0] = k * 0.1
        mine.watchdog()
    mine.status("multi\nline  status")
    assert mine.barrier(2.0)
    time.sleep(0.2)
    assert len(notify.times("WATCHDOG=1")) == 7
    assert "STATUS=multi line status" in notify.lines("STATUS=")


def test_journal_formatter_folds_exceptions_into_one_line():
    import logging

    from daemon.logsetup import JournalFormatter, stderr_is_journal

    def boom():
        raise ValueError("bad\nthing")

    try:
        boom()
    except ValueError:
        rec = logging.LogRecord("daemon.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = JournalFormatter().format(rec)
    assert "\n" not in line and line.startswith("<3>daemon.x: failed here — ValueError: bad ⏎ thing (at ")
    assert "test_systemd.py" in line and "in boom" in line
    warn = logging.LogRecord("n", logging.WARNING, __file__, 1, "w", (), None)
    assert JournalFormatter().format(warn) == "<4>n: w"
    assert not stderr_is_journal(env={"JOURNAL_STREAM": "1:2"})
    assert not stderr_is_journal(env={})
