"""Shared test fixtures: a real Mosquitto on loopback, an MQTT subscriber, the shared data folder."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# `make test` installs the project; a bare `.venv/bin/pytest` from a checkout still finds it.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_or_fail(reason: str) -> None:
    # Under CI a missing prerequisite is a broken environment, not a reason to pass quietly.
    if _in_ci():
        pytest.fail(f"{reason} (CI=true, so this is an error)")
    pytest.skip(reason)


def _find_mosquitto() -> str | None:
    for p in MOSQUITTO_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("mosquitto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A private Mosquitto; ``stop()``/``start()`` simulate an outage on the same port."""

    def __init__(self, binary: str, workdir: Path, persistence: bool = False):
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if persistence:
            # Sessions survive stop()/start(): a subscriber with clean_session=False misses
            # nothing published while it was reconnecting after an outage.
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # As root Mosquitto drops to user "mosquitto"; stay as ourselves so it can read tmp.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=logf, stderr=logf)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if _port_open(self.host, self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _broker(tmp_path_factory: pytest.TempPathFactory, persistence: bool):
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    broker = Broker(binary, tmp_path_factory.mktemp("mosquitto"), persistence=persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """A fresh Mosquitto per test (retained messages from one test never leak into the next)."""
    yield from _broker(tmp_path_factory, persistence=False)


@pytest.fixture
def persistent_mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """Like ``mosquitto`` but sessions and retained messages survive ``stop()``/``start()``."""
    yield from _broker(tmp_path_factory, persistence=True)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    t: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client collecting every message matching ``topic_filter`` into a thread-safe list."""

    def __init__(self, host: str, port: int, topic_filter: str, qos: int = 1, client_id: str = "",
                 clean_session: bool = True):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.reconnect_delay_set(0.1, 0.5)  # outage tests restart the broker

        def on_connect(c, _u, _f, rc, _p):
            if not rc.is_failure:
                c.subscribe(topic_filter, qos=qos)

        def on_subscribe(_c, _u, _mid, _rcs, _p):
            self._subscribed.set()

        def on_message(_c, _u, msg):
            with self._cond:
                self._messages.append(Received(msg.topic, msg.payload, bool(msg.retain), msg.qos))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            self.close()
            raise RuntimeError(f"could not subscribe to {topic_filter} on {host}:{port}")

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, n: int, timeout: float = 5.0,
                 where: Callable[[Received], bool] | None = None) -> list[Received]:
        """Wait until at least ``n`` (matching) messages arrived; return them (raises on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self._messages if where is None or where(m)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"got {len(got)} of {n} messages within {timeout} s")
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def subscriber_factory():
    """``subscriber_factory(broker, topic_filter, **kw)`` → a connected Subscriber, closed at teardown."""
    made: list[Subscriber] = []

    def make(broker: Broker, topic_filter: str, **kw: Any) -> Subscriber:
        s = Subscriber(broker.host, broker.port, topic_filter, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder: $GONDOLA_SHARED, else ../shared next to the repository."""
    p = Path(os.environ.get("GONDOLA_SHARED") or REPO_ROOT.parent / "shared")
    if not p.is_dir():
        _skip_or_fail(f"shared folder not found at {p} (set GONDOLA_SHARED)")
    return p
