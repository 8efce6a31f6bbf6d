"""Requests to a running unit over MQTT (req/<command> → res/<command>): resend, rebirth, bad requests."""
from __future__ import annotations

import json

import paho.mqtt.publish as mqtt_publish
import pytest
from test_publisher import FAST, item_event, make_cfg, wait_until

from daemon.control import CommandError, Commands, Request, parse_request
from daemon.publish.mqtt import Publisher
from daemon.publish.outbox import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _request(broker, topic: str, payload) -> None:
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    mqtt_publish.single(topic, body, qos=1, hostname=broker.host, port=broker.port)


@pytest.fixture
def running(tmp_path, mosquitto, subscriber_factory):
    cfg = make_cfg(tmp_path, mosquitto)
    outbox = Outbox(tmp_path / "outbox.db")
    events = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    replies = subscriber_factory(mosquitto, f"{cfg.topic_base}/res/#")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    yield cfg, outbox, pub, events, replies
    pub.stop(timeout=2)
    outbox.close()


def test_resend_republishes_a_range_with_the_same_ids_flagged_historical(running, mosquitto):
    cfg, outbox, pub, events, replies = running
    stored = [outbox.add(item_event(i)) for i in range(6)]
    pub.notify()
    first = events.wait_for(6, timeout=10)
    wait_until(lambda: outbox.depth() == 0, what="all events acknowledged")
    assert not any(m.json().get("historical") for m in first)

    _request(mosquitto, f"{cfg.topic_base}/req/resend", {"txid": "gap-1", "from_seq": 2, "to_seq": 4})
    reply = replies.wait_for(1, timeout=10)[0]
    assert reply.topic == f"{cfg.topic_base}/res/resend" and not reply.retain
    doc = reply.json()
    assert doc["txid"] == "gap-1" and doc["ok"] is True, doc
    assert doc["result"]["resent"] == 3 and doc["result"]["missing"] == []
    again = [m.json() for m in events.wait_for(9, timeout=10)[6:]]
    assert [e["seq"] for e in again] == [2, 3, 4]
    assert [e["event_id"] for e in again] == [e["event_id"] for e in stored[1:4]]
    assert all(e["historical"] is True for e in again)


def test_resend_of_pruned_range_reports_missing_and_bad_requests_get_one_line_errors(running, mosquitto):
    cfg, outbox, pub, events, replies = running
    for i in range(3):
        outbox.add(item_event(i))
    pub.notify()
    events.wait_for(3, timeout=10)
    wait_until(lambda: outbox.depth() == 0, what="acknowledged")
    outbox._db.execute("DELETE FROM events WHERE seq = 2")  # as if pruned

    base = f"{cfg.topic_base}/req"
    _request(mosquitto, f"{base}/resend", {"txid": "t1", "from_seq": 1, "to_seq": 99})
    _request(mosquitto, f"{base}/resend", {"txid": "t2", "from_seq": 5, "to_seq": 1})
    _request(mosquitto, f"{base}/resend", {"from_seq": 1, "to_seq": 2})
    _request(mosquitto, f"{base}/resend", b"not json")
    _request(mosquitto, f"{base}/selfdestruct", {"txid": "t3"})
    _request(mosquitto, f"{base}/rebirth", {"txid": "t4"})
    docs = [m.json() for m in replies.wait_for(6, timeout=10)]
    by_txid = {d["txid"]: d for d in docs}
    assert by_txid["t1"]["ok"] and by_txid["t1"]["result"]["missing"] == [[2, 2]]
    assert by_txid["t1"]["result"]["to_seq"] == 3  # capped at the last issued seq
    assert by_txid["t1"]["result"]["resent"] == 2
    assert not by_txid["t2"]["ok"] and "from_seq <= to_seq" in by_txid["t2"]["error"]
    assert not by_txid["t3"]["ok"] and "unknown command 'selfdestruct'" in by_txid["t3"]["error"]
    assert by_txid["t4"]["ok"]
    anonymous = [d for d in docs if d["txid"] is None]
    assert len(anonymous) == 2 and all("\n" not in d["error"] for d in anonymous)
    assert any("txid" in d["error"] for d in anonymous) and any("JSON" in d["error"] for d in anonymous)
    assert pub.commands.counters["errors"] >= 2


def test_pipeline_commands_wait_for_drain_and_faults_are_answered():
    cmds = Commands()
    seen = []
    cmds.register("tare", lambda req: seen.append(req.args) or {"plates": req.args["plates"]})
    cmds.register("boom", lambda req: 1 / 0)
    cmds.register("refuse", lambda req: (_ for _ in ()).throw(CommandError("plate 9 does not exist")))
    replies = []
    cmds.submit(parse_request("tare", b'{"txid": "a", "plates": [1]}', "mqtt"), replies.append)
    assert replies == [] and seen == []  # queued for the sample thread
    cmds.submit(Request("boom", "b"), replies.append)
    cmds.submit(Request("refuse", "c"), replies.append)
    assert cmds.drain() == 3
    assert replies[0] == {"txid": "a", "command": "tare", "ok": True, "result": {"plates": [1]}}
    assert replies[1]["ok"] is False and "ZeroDivisionError" in replies[1]["error"]
    assert replies[2] == {"txid": "c", "command": "refuse", "ok": False, "error": "plate 9 does not exist"}
    assert cmds.counters == {"requests": 3, "ok": 1, "errors": 2, "faults": 1,
                             "malformed": 0, "rate_limited": 0, "queue_full": 0}
    cmds.submit(Request("tare", "d", {"plates": [2]}), replies.append)
    cmds.fail_pending("stopping")
    assert replies[-1]["ok"] is False and replies[-1]["error"] == "stopping"
    with pytest.raises(CommandError):
        parse_request("tare", b"[1, 2]", "socket")
