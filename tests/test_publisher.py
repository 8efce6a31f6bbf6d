"""The MQTT publisher against a real Mosquitto: QoS 1 delivery, retained status/will, outages."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from daemon.config import parse_config
from daemon.publish.mqtt import Publisher, rfc3339
from daemon.publish.outbox import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = REPO_ROOT / "daemon" / "schemas"
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()),
                                           format_checker=jsonschema.FormatChecker())


def make_cfg(tmp_path: Path, broker, **mqtt):
    return parse_config({
        "version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path),
        "mqtt": {"host": broker.host, "port": broker.port, **mqtt},
        "sensing": {"backend": "sim"},
        "shelves": [{"id": "1", "plates": [{"id": 0}, {"id": 1}]}],
    })


def item_event(i: int, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {"schema": "gondola.item-event/1", "store_id": "s1", "unit_id": "u1", "shelf": "1",
            "plates": [0], "type": "pick", "sku": f"sku-{i}", "quantity": 1,
            "t_start": rfc3339(now - 1.2), "t_end": rfc3339(now - 0.2), "delta_g": -120.5,
            "confidence": 0.93, "candidates": [{"sku": f"sku-{i}", "quantity": 1, "score": 0.93}]}


def wait_until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.db")
    yield ob
    ob.close()


def test_events_delivered_qos1_not_retained_and_schema_valid(tmp_path, mosquitto, subscriber_factory, outbox):
    cfg = make_cfg(tmp_path, mosquitto)
    sub = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    try:
        stored = [outbox.add(item_event(i)) for i in range(30)]
        pub.notify()
        msgs = sub.wait_for(30, timeout=10)
        validator = _validator("item-event.schema.json")
        for m in msgs:
            assert m.qos == 1 and not m.retain
            validator.validate(m.json())
        got = [m.json() for m in msgs]
        assert [e["seq"] for e in got] == [e["seq"] for e in stored]
        assert [e["event_id"] for e in got] == [e["event_id"] for e in stored]
        assert not any(e.get("historical") for e in got)
        wait_until(lambda: outbox.depth() == 0, what="PUBACKs marking the outbox")
        st = pub.stats()
        assert st["acked"] == 30 and st["published"] == 30 and st["republished"] == 0
    finally:
        pub.stop(5)


def test_schema_rejects_bad_events():
    v = _validator("item-event.schema.json")
    good = {**item_event(1), "event_id": "01J0000000000000000000000A", "seq": 1}
    v.validate(good)
    for bad in ({**good, "quantity": 0},                      # pick needs >= 1
                {**good, "t_end": "2024-01-01T00:00:00Z"},    # milliseconds required
                {**good, "confidence": 1.5},
                {k: x for k, x in good.items() if k != "seq"}):
        with pytest.raises(jsonschema.ValidationError):
            v.validate(bad)
    v.validate({**good, "type": "unknown_change", "quantity": 0, "sku": None, "reason": "no_match"})


def test_retained_status_health_state_and_clean_stop(tmp_path, mosquitto, subscriber_factory, outbox):
    cfg = make_cfg(tmp_path, mosquitto)
    early = subscriber_factory(mosquitto, f"{cfg.topic_base}/+")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    wait_until(lambda: pub.connected, what="connection")
    outbox.add(item_event(0))  # pending at health time? either way depth is reported
    pub.publish_health({"channels": {"c0": {"rate_hz": 10.0, "noise_g": 0.7, "errors": {}}}})
    pub.publish_state({"1": {"0": {"sku-0": 5}}})
    pub.set_status("degraded", "channel c1 silent")
    try:
        # Once the early subscriber has seen all three, a late one must get them as retained.
        early.wait_for(1, where=lambda m: m.topic.endswith("/status") and m.json()["state"] == "degraded")
        early.wait_for(1, where=lambda m: m.topic.endswith("/health"))
        early.wait_for(1, where=lambda m: m.topic.endswith("/state"))
        late = subscriber_factory(mosquitto, f"{cfg.topic_base}/+")
        status = late.wait_for(1, where=lambda m: m.topic.endswith("/status") and m.retain
                               and m.json()["state"] == "degraded")[-1].json()
        _validator("status.schema.json").validate(status)
        assert status["reason"] == "channel c1 silent"
        health = late.wait_for(1, where=lambda m: m.topic.endswith("/health"))[-1]
        assert health.retain
        doc = health.json()
        _validator("health.schema.json").validate(doc)
        assert doc["channels"]["c0"]["rate_hz"] == 10.0
        assert set(doc["outbox"]) >= {"depth", "oldest_pending_age_s"}
        state = late.wait_for(1, where=lambda m: m.topic.endswith("/state"))[-1]
        assert state.retain and state.json() == {"1": {"0": {"sku-0": 5}}}
        assert not [m for m in late.messages if m.topic.endswith("/events") and m.retain]
    finally:
        pub.stop(5)
    assert outbox.depth() == 0, "stop() flushes pending events"
    after = subscriber_factory(mosquitto, f"{cfg.topic_base}/status")
    doc = after.wait_for(1)[0].json()
    time.sleep(0.3)  # a will, if wrongly sent, would arrive now
    assert [m.json()["state"] for m in after.messages] == ["stopped"]
    _validator("status.schema.json").validate(doc)


_CHILD = """
import json, sys, time
from daemon.config import parse_config
from daemon.publish.outbox import Outbox
from daemon.publish.mqtt import Publisher
cfg = parse_config(json.loads(sys.argv[1]))
pub = Publisher(cfg, Outbox(sys.argv[2]))
pub.start()
while not pub.connected:
    time.sleep(0.02)
print("connected", flush=True)
time.sleep(60)
"""


def test_last_will_sets_offline_when_killed(tmp_path, mosquitto, subscriber_factory):
    cfg = make_cfg(tmp_path, mosquitto)
    raw = {"version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path),
           "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
           "sensing": {"backend": "sim"}, "shelves": [{"id": "1", "plates": [{"id": 0}]}]}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(raw), str(tmp_path / "o.db")],
                            stdout=subprocess.PIPE, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"connected"
        sub = subscriber_factory(mosquitto, f"{cfg.topic_base}/status")
        assert sub.wait_for(1)[0].json()["state"] == "online"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    sub.wait_for(1, where=lambda m: m.json()["state"] == "offline")
    fresh = subscriber_factory(mosquitto, f"{cfg.topic_base}/status")
    will = fresh.wait_for(1)[0]
    assert will.retain and will.json()["state"] == "offline"
    _validator("status.schema.json").validate(will.json())


def test_broker_outage_delivers_everything_flagging_old_events(tmp_path, persistent_mosquitto, subscriber_factory,
                                                               outbox, caplog):
    broker = persistent_mosquitto
    cfg = make_cfg(tmp_path, broker, historical_after_s=1.0)
    sub = subscriber_factory(broker, f"{cfg.topic_base}/events", client_id="test-sub", clean_session=False)
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    try:
        for i in range(5):
            outbox.add(item_event(i))
        pub.notify()
        sub.wait_for(5)
        wait_until(lambda: outbox.depth() == 0, what="first batch acknowledged")

        with caplog.at_level(logging.WARNING, logger="daemon.publish.mqtt"):
            broker.stop()
            wait_until(lambda: not pub.connected, what="publisher noticing the outage")
            for i in range(5, 25):
                outbox.add(item_event(i))
                pub.notify()  # must not block or fail while the broker is down
            time.sleep(1.5)   # older than historical_after_s by the time they go out
            assert outbox.depth() == 20
            broker.start()
            # The persistent subscriber may also get duplicates of the first batch: count seqs.
            wait_until(lambda: {m.json()["seq"] for m in sub.messages} == set(range(1, 26)), timeout=15,
                       what="all 25 events at the subscriber")
            msgs = sub.messages
        wait_until(lambda: outbox.depth() == 0, what="backlog acknowledged")
        got = [m.json() for m in msgs]
        ids_by_seq: dict[int, set[str]] = {}
        for e in got:
            ids_by_seq.setdefault(e["seq"], set()).add(e["event_id"])
        assert sorted(ids_by_seq) == list(range(1, 26)), "every event delivered"
        assert all(len(v) == 1 for v in ids_by_seq.values()), "a resend keeps its event_id"
        historical = {e["seq"] for e in got if e.get("historical")}
        assert historical == set(range(6, 26))
        v = _validator("item-event.schema.json")
        for e in got:
            v.validate(e)
        lost = [r for r in caplog.records if "keeping events in the outbox" in r.getMessage()]
        assert lost, "the outage is logged"
        assert len(lost) <= 2, "one line per outage, not one per retry"
    finally:
        pub.stop(5)


def test_unreachable_broker_at_start_keeps_events_until_it_comes_up(tmp_path, persistent_mosquitto,
                                                                   subscriber_factory, outbox, caplog):
    broker = persistent_mosquitto
    cfg = make_cfg(tmp_path, broker)
    # Register a persistent subscription, then take the broker down before the unit starts.
    subscriber_factory(broker, f"{cfg.topic_base}/events", client_id="test-sub", clean_session=False).close()
    broker.stop()
    pub = Publisher(cfg, outbox, **FAST)
    with caplog.at_level(logging.WARNING, logger="daemon.publish.mqtt"):
        t0 = time.monotonic()
        pub.start()
        assert time.monotonic() - t0 < 0.5, "start() must not wait for the broker"
        stored = [outbox.add(item_event(i)) for i in range(10)]
        pub.notify()
        time.sleep(1.5)  # several reconnect attempts
        assert not pub.connected and outbox.depth() == 10
        assert pub.stats()["connect_failures"] >= 2
    lines = [r.getMessage() for r in caplog.records if r.name == "daemon.publish.mqtt"]
    assert lines == [f"broker 127.0.0.1:{broker.port} unreachable, keeping events in the outbox"]
    try:
        broker.start()
        sub = subscriber_factory(broker, f"{cfg.topic_base}/events", client_id="test-sub", clean_session=False)
        wait_until(lambda: len({m.json()["event_id"] for m in sub.messages}) >= 10, timeout=10,
                   what="all 10 events at the subscriber")
        assert sorted({m.json()["event_id"] for m in sub.messages}) == sorted(e["event_id"] for e in stored)
        wait_until(lambda: outbox.depth() == 0, what="events acknowledged")
        assert pub.connected
    finally:
        pub.stop(5)


def test_stop_with_broker_down_keeps_events_and_returns_promptly(tmp_path, mosquitto, outbox):
    cfg = make_cfg(tmp_path, mosquitto)
    mosquitto.stop()
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    outbox.add(item_event(0))
    pub.notify()
    t0 = time.monotonic()
    pub.stop(timeout=5)
    assert time.monotonic() - t0 < 3
    assert outbox.depth() == 1


def test_restart_resends_unacknowledged_with_same_ids(tmp_path, mosquitto, subscriber_factory):
    """Events stored by a previous run (never acknowledged) go out after the daemon restarts."""
    cfg = make_cfg(tmp_path, mosquitto)
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        stored = [ob.add(item_event(i)) for i in range(3)]
    sub = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    with Outbox(path) as ob:
        pub = Publisher(cfg, ob, **FAST)
        pub.start()
        try:
            msgs = sub.wait_for(3)
            assert [m.json()["event_id"] for m in msgs] == [e["event_id"] for e in stored]
            assert ob.add(item_event(9))["seq"] == 4
        finally:
            pub.stop(5)
        assert ob.depth() == 0


class _Proxy:
    """A TCP relay in front of the broker that can swallow the broker's replies and cut links.

    Swallowing replies withholds PUBACKs while the PUBLISHes still reach the broker: the state
    in which a connection drop must lead to a resend, not to a lost or wrongly acknowledged event.
    """

    def __init__(self, upstream: tuple[str, int]):
        import socket
        import threading

        self.upstream = upstream
        self.swallow_replies = False
        self._conns: list = []
        self._lock = threading.Lock()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(8)
        self.host, self.port = self._srv.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                down, _ = self._srv.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [down, up]
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src, dst, is_reply: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (is_reply and self.swallow_replies):
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._srv.close()
        self.cut()


def test_unacknowledged_events_are_resent_with_same_id_after_reconnect(tmp_path, mosquitto, subscriber_factory,
                                                                       outbox):
    proxy = _Proxy((mosquitto.host, mosquitto.port))
    cfg = make_cfg(tmp_path, proxy)
    sub = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    try:
        wait_until(lambda: pub.connected, what="connection through the proxy")
        proxy.swallow_replies = True
        stored = [outbox.add(item_event(i)) for i in range(5)]
        pub.notify()
        sub.wait_for(5)          # they reached the broker ...
        time.sleep(0.3)
        assert outbox.depth() == 5, "... but without PUBACK nothing may be marked sent"
        proxy.cut()
        proxy.swallow_replies = False
        msgs = sub.wait_for(10, timeout=10)
        wait_until(lambda: outbox.depth() == 0, what="resent events acknowledged")
        by_seq: dict[int, list[str]] = {}
        for m in msgs:
            e = m.json()
            by_seq.setdefault(e["seq"], []).append(e["event_id"])
        assert {s: set(ids) for s, ids in by_seq.items()} == {e["seq"]: {e["event_id"]} for e in stored}
        assert all(len(ids) == 2 for ids in by_seq.values()), "each sent once, then resent once"
        assert pub.stats()["republished"] == 5
    finally:
        pub.stop(5)
        proxy.close()


def test_stop_right_after_start_still_flushes(tmp_path, mosquitto, subscriber_factory, outbox):
    """A short run (replay at speed 0) stops before the first CONNACK: stop() must still flush."""
    cfg = make_cfg(tmp_path, mosquitto)
    sub = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    for i in range(20):
        outbox.add(item_event(i))
    pub.notify()
    pub.stop(timeout=5)
    assert outbox.depth() == 0
    assert len({m.json()["seq"] for m in sub.wait_for(20)}) == 20
