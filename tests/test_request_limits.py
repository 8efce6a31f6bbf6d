"""Requests that cannot hurt the unit: size and depth limits before JSON, per-command rate limits,
bounded queues, coalesced and paced resends, audited destructive commands, kept calibrations.

The MQTT tests run a real Publisher against a real Mosquitto on loopback; everything that depends
on how fast a thread gets scheduled is asserted structurally (counts, order), never as a time."""
from __future__ import annotations

import json
import logging
import time

import paho.mqtt.publish as mqtt_publish
import pytest
from test_publisher import FAST, item_event, make_cfg, wait_until

from daemon import calstate
from daemon.control import (
    CommandError,
    Commands,
    Request,
    RequestRefused,
    TokenBucket,
    decode_limited,
    nesting_depth,
    parse_request,
    recover_txid,
)
from daemon.publish import mqtt as mqtt_mod
from daemon.publish.mqtt import MAX_PENDING_REQUESTS, Publisher, _merge, _span_outside, _subtract
from daemon.publish.outbox import Outbox

NESTED = b'{"txid": "deep-1", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"  # 6 KB, 3001 levels


def _send(broker, topic: str, payload) -> None:
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    mqtt_publish.single(topic, body, qos=1, hostname=broker.host, port=broker.port)


def _send_many(broker, msgs: list[tuple[str, bytes | str]]) -> None:
    mqtt_publish.multiple([{"topic": t, "payload": p, "qos": 1} for t, p in msgs],
                          hostname=broker.host, port=broker.port)


# ---------------------------------------------------------------- parsing, without a broker


def test_deep_large_and_broken_payloads_are_one_line_refusals_with_their_txid():
    assert nesting_depth(b'{"a": [1, {"b": "[[[[[["}]}') == 3  # brackets inside strings do not count
    with pytest.raises(RequestRefused) as e:
        parse_request("rebirth", NESTED, "mqtt")
    assert e.value.kind == "too_deep" and e.value.txid == "deep-1" and "3001 levels" in str(e.value)
    with pytest.raises(RequestRefused) as e:  # far deeper than Python's recursion limit
        decode_limited(b"[" * 200_000, max_bytes=10**6)
    assert e.value.kind == "too_deep"
    big = b'{"txid": "big-1", "pad": "' + b"x" * 20_000 + b'"}'
    with pytest.raises(RequestRefused) as e:
        parse_request("tare", big, "mqtt")
    assert e.value.kind == "too_large" and e.value.txid == "big-1" and "20" in str(e.value)
    with pytest.raises(RequestRefused) as e:
        parse_request("tare", b'{"txid": "t-9", "plates": [1,}', "mqtt")
    assert e.value.txid == "t-9" and str(e.value).startswith("payload is not JSON")
    with pytest.raises(RequestRefused) as e:
        parse_request("tare", b'{"txid": "t-8", "identity": "rm -rf /"}', "mqtt")
    assert e.value.txid == "t-8" and "identity" in str(e.value)
    for err in ("payload", "identity"):
        assert "\n" not in err
    assert recover_txid(b"garbage") is None
    req = parse_request("tare", b'{"txid": "a", "identity": "backend", "plates": ["1/2"]}', "mqtt")
    assert req.identity == "backend" and "identity" not in req.args
    assert parse_request("tare", b'{"txid": "a"}', "mqtt").identity == "mqtt"


def test_rate_limits_are_per_command_and_unknown_names_share_one_bucket():
    now = [0.0]
    cmds = Commands(rates={"tare": (1.0, 3)}, default_rate=(2.0, 2), clock=lambda: now[0])
    cmds.register("tare", lambda r: {})
    cmds.register("info", lambda r: {})
    assert [cmds.admit("tare") for _ in range(4)][:3] == [None] * 3
    assert "rate limit" in cmds.admit("tare") and cmds.admit("info") is None  # its own bucket
    now[0] += 1.0
    assert cmds.admit("tare") is None and cmds.admit("tare") is not None  # 1 a second back
    refused = sum(cmds.admit(f"made-up-{i}") is not None for i in range(100))
    assert refused == 95  # one shared bucket (burst 5) for names the unit does not know
    assert cmds.stats()["rate_limited"] == 3 + 95
    b = TokenBucket(10, 5, clock=lambda: now[0])
    assert b.take_up_to(100) == 5 and b.take_up_to(1) == 0


def test_pipeline_queue_is_bounded_and_full_is_a_counted_refusal():
    cmds = Commands(max_queued=4)
    cmds.register("tare", lambda r: {"ok": 1})
    replies: list[dict] = []
    for i in range(10):
        cmds.submit(Request("tare", f"t{i}"), replies.append)
    assert len(replies) == 6 and all(not r["ok"] and r["error"].startswith("busy:") for r in replies)
    assert cmds.counters["queue_full"] == 6 and cmds.stats()["queued"] == 4
    assert cmds.drain() == 4 and all(r["ok"] for r in replies[6:])


def test_destructive_commands_are_logged_with_identity_and_outcome(caplog):
    cmds = Commands()
    cmds.register("tare", lambda r: {"calibration_id": "01CAL"})
    cmds.register("maintenance", lambda r: (_ for _ in ()).throw(CommandError("plate 9 does not exist")))
    cmds.register("info", lambda r: {})
    with caplog.at_level(logging.WARNING, logger="daemon.control"):
        cmds.submit(parse_request("tare", b'{"txid": "x1", "identity": "backend", "plates": ["1/2"], "force": true}',
                                  "mqtt"), lambda d: None)
        cmds.submit(parse_request("maintenance", b'{"txid": "x2", "plates": [9]}', "mqtt"), lambda d: None)
        cmds.submit(parse_request("info", b'{"txid": "x3"}', "mqtt"), lambda d: None)
        cmds.drain()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines  # info is not destructive
    assert "tare with force" in lines[0] and "'backend' via mqtt" in lines[0] and "01CAL" in lines[0]
    assert "maintenance" in lines[1] and "'mqtt' via mqtt" in lines[1] and "refused: plate 9" in lines[1]


def test_calibration_writes_keep_the_previous_versions(tmp_path):
    ids = []
    for k in range(8):
        ids.append(
            calstate.update(tmp_path, "u", {"c": calstate.ChannelCal(float(k), 2.0)}, technician="t").calibration_id
        )
    kept = [json.loads(p.read_text())["calibration_id"] for p in calstate.history(tmp_path)]
    # the in-force one, .prev, and the five versions before it: two forced tares in a row lose nothing
    assert kept == ids[2:7] and len(kept) == calstate.KEEP_VERSIONS
    assert calstate.load(tmp_path, "u").calibration_id == ids[7]


def test_resend_ranges_coalesce_and_the_backlog_is_bounded(tmp_path, mosquitto):
    ranges: list[list[int]] = []
    for lo, hi in ((10, 20), (30, 40), (15, 35), (1, 2), (3, 5), (100, 100)):
        _merge(ranges, lo, hi)
    assert ranges == [[1, 5], [10, 40], [100, 100]] and _span_outside(ranges, 1, 12) == 4
    assert _subtract([[3, 5], [8, 9]], 1, 10) == [[1, 2], [6, 7], [10, 10]] and _subtract([[1, 9]], 2, 3) == []
    # the handler alone (the publisher is not draining): 1000 overlapping requests, one backlog
    cfg = make_cfg(tmp_path, mosquitto)
    ob = Outbox(tmp_path / "ob.db")
    for i in range(300):
        ob.add(item_event(i))
    ob.mark_sent_many([r.event_id for r in ob.records_between(1, 300)])
    pub = Publisher(cfg, ob)
    pub._client, pub._connected = object(), True  # as if connected; nothing is published here
    res = [pub._cmd_resend(Request("resend", f"r{i}", {"from_seq": 1 + i % 50, "to_seq": 250 + i % 50}))
           for i in range(1000)]
    assert res[0]["resent"] == 250 and res[0]["coalesced"] == 0
    assert all(r["coalesced"] == r["resent"] for r in res[50:])  # nothing queued twice
    assert pub._resend_ranges == [[1, 299]] and res[-1]["queued"] == 299
    stats = pub.request_stats()
    assert stats["resend_backlog"] == 299
    mqtt_mod.MAX_RESEND_BACKLOG, old = 299, mqtt_mod.MAX_RESEND_BACKLOG
    try:
        ob.add(item_event(999))
        ob.mark_sent_many([r.event_id for r in ob.records_between(301, 301)])
        with pytest.raises(CommandError, match="backlog full"):
            pub._cmd_resend(Request("resend", "over", {"from_seq": 1, "to_seq": 301}))
    finally:
        mqtt_mod.MAX_RESEND_BACKLOG = old
    ob.close()


def test_request_intake_is_bounded_before_any_parsing(tmp_path, mosquitto):
    cfg = make_cfg(tmp_path, mosquitto)
    ob = Outbox(tmp_path / "ob.db")
    pub = Publisher(cfg, ob)  # not started: nothing takes requests off the queue
    for _ in range(MAX_PENDING_REQUESTS + 44):
        pub._intake(0, "x/req/info", b'{"txid": "a"}')
    pub._intake(0, "x/req/info", b"x" * 100_000)
    s = pub.request_stats()
    assert s["pending"] == MAX_PENDING_REQUESTS and s["dropped_backlog"] == 45 and s["oversize"] == 1
    ob.close()


# ---------------------------------------------------------------- a running publisher on a real broker


@pytest.fixture
def running(tmp_path, mosquitto, subscriber_factory):
    cfg = make_cfg(tmp_path, mosquitto)
    outbox = Outbox(tmp_path / "outbox.db")
    events = subscriber_factory(mosquitto, f"{cfg.topic_base}/events")
    replies = subscriber_factory(mosquitto, f"{cfg.topic_base}/res/#")
    pub = Publisher(cfg, outbox, **FAST)
    pub.start()
    wait_until(lambda: pub.connected, what="connected")
    yield cfg, outbox, pub, events, replies
    pub.stop(timeout=2)
    outbox.close()


def test_nested_json_flood_is_refused_in_one_line_and_events_keep_flowing(running, mosquitto, caplog):
    cfg, outbox, pub, events, replies = running
    base = f"{cfg.topic_base}/req"
    with caplog.at_level(logging.INFO):
        for i in range(3):
            _send(mosquitto, f"{base}/rebirth", NESTED.replace(b"deep-1", f"deep-{i}".encode()))
        outbox.add(item_event(1))
        pub.notify()
        got = events.wait_for(1, timeout=10)
        docs = [m.json() for m in replies.wait_for(3, timeout=10)]
    assert got[0].json()["seq"] == 1
    assert sorted(d["txid"] for d in docs) == ["deep-0", "deep-1", "deep-2"]
    assert all(not d["ok"] and "levels deep" in d["error"] and "\n" not in d["error"] for d in docs)
    assert not [r for r in caplog.records if "RecursionError" in r.getMessage() or r.exc_info]
    s = pub.request_stats()
    assert s["malformed"] == 3 and s["intake_faults"] == 0
    # the same payload as 20 KB: refused unparsed, txid from its head
    _send(mosquitto, f"{base}/tare", b'{"txid": "big", "pad": "' + b"x" * 20_000 + b'"}')
    big = replies.wait_for(4, timeout=10)[-1].json()
    assert big["txid"] == "big" and "20" in big["error"] and "at most 16384" in big["error"]


def test_a_request_flood_is_rate_limited_and_answered_at_a_bounded_rate(running, mosquitto):
    cfg, outbox, pub, events, replies = running
    base = f"{cfg.topic_base}/req"
    _send_many(mosquitto, [(f"{base}/rebirth", json.dumps({"txid": f"f{i}"})) for i in range(200)])
    wait_until(lambda: pub.request_stats()["requests"] + pub.request_stats()["dropped_backlog"] >= 200,
               timeout=20, what="all 200 looked at")
    s = pub.request_stats()
    # rebirth: burst 3, 1 a second; the flood took well under the 20 s deadline, so at most 3 + 20
    assert 3 <= s["ok"] <= 23 and s["rate_limited"] >= 200 - 23 - s["dropped_backlog"]
    # refusals are answered at most 20 a second after a burst of 40: never one reply per request
    wait_until(lambda: len(replies.messages) >= s["ok"] + 1, timeout=10, what="replies")
    time.sleep(0.5)
    answered_refusals = [m.json() for m in replies.messages if not m.json()["ok"]]
    assert all("rate limit" in d["error"] and d["txid"].startswith("f") for d in answered_refusals)
    assert s["error_replies_suppressed"] + len(answered_refusals) >= s["rate_limited"] - 1
    assert s["error_replies_suppressed"] > 0


def test_resend_is_paced_after_live_events(running, mosquitto):
    cfg, outbox, pub, events, replies = running
    n = 600
    for i in range(n):
        outbox.add(item_event(i))
    outbox.mark_sent_many([r.event_id for r in outbox.records_between(1, n)])  # as if delivered before
    base = f"{cfg.topic_base}/req"
    _send_many(mosquitto, [(f"{base}/resend", json.dumps({"txid": f"r{i}", "from_seq": 1, "to_seq": n}))
                           for i in range(5)])
    first = replies.wait_for(1, timeout=10)[0].json()
    assert first["ok"] and first["result"]["resent"] == n
    live = outbox.add(item_event(n + 1))
    pub.notify()
    got = events.wait_for(n + 1, timeout=30)
    seqs = [m.json()["seq"] for m in got]
    # at 200 a second, 600 republished events take ≥ 2.9 s: the live one was not queued behind them
    assert seqs.index(live["seq"]) < n
    hist = [m.json() for m in got if m.json().get("historical")]
    assert [e["seq"] for e in hist[:n]] == list(range(1, n + 1))
    docs = [m.json() for m in replies.wait_for(5, timeout=10)]
    assert all(d["ok"] for d in docs)
    # later identical requests joined the backlog or were just served: nothing went out twice
    assert len(hist) == n and all(d["result"]["coalesced"] == n for d in docs[1:])
    assert pub.request_stats()["resend_republished"] == n


def test_the_local_socket_refuses_a_deep_line_in_one_line(tmp_path):
    from daemon.control_socket import ControlSocket
    sock = ControlSocket(tmp_path / "c.sock", Commands())
    doc = sock._answer(b'{"txid": "s1", "command": "info", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert doc["ok"] is False and doc["txid"] == "s1" and "levels deep" in doc["error"] and "\n" not in doc["error"]
