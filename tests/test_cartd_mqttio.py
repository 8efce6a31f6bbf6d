"""aggregator.mqttio.FastClient against a real Mosquitto: buffered reads deliver every message whole
and in order, and ack_many's single write acknowledges them all (nothing is redelivered to the
persistent session), while messages left unacknowledged are redelivered."""
from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from conftest import Broker, _find_mosquitto, _skip_or_fail
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator.mqttio import FastClient, _BufferedSocket

pytestmark = pytest.mark.integration

N = 3000


@pytest.fixture
def broker(tmp_path_factory):
    """Mosquitto as docs/aggregator.md asks: no cap on a client's queue (the default, 1000, drops
    QoS 1 messages beyond it even for an online client)."""
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    b = Broker(binary, tmp_path_factory.mktemp("mosq"))
    b.conf.write_text(b.conf.read_text() + "max_queued_messages 0\n")
    b.start()
    yield b
    b.stop()


def _consumer(port: int, client_id: str):
    got: list[paho.MQTTMessage] = []
    cond = threading.Condition()
    c = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=True)

    def on_message(_c, _u, msg):
        with cond:
            got.append(msg)
            cond.notify_all()
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe("t/#", qos=1)[0]
    time.sleep(0.3)
    return c, got, cond


def _wait(cond, got, n, timeout=20.0):
    end = time.monotonic() + timeout
    with cond:
        while len(got) < n and time.monotonic() < end:
            cond.wait(0.2)


def test_buffered_reads_and_ack_many_against_mosquitto(broker):
    c, got, cond = _consumer(broker.port, "fast-consumer")
    assert isinstance(c.socket(), _BufferedSocket)
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    # sizes around the 1- and 2-byte remaining-length boundary; packets straddle the 64 KiB reads
    sizes = [1, 100, 127, 128, 5000, 16383, 16384]
    infos = [pub.publish(f"t/{i % 7}", (f"{i}:" + "x" * sizes[i % len(sizes)]).encode(), qos=1) for i in range(N)]
    # The broker keeps only a few messages in flight per client: acknowledge in bursts as cartd
    # does, all but the last 10.
    done, end = 0, time.monotonic() + 30
    while len(got) < N and time.monotonic() < end:
        time.sleep(0.005)
        upto = min(len(got), N - 10)
        if upto > done:
            c.ack_many([m.mid for m in got[done:upto]])
            done = upto
    for inf in infos:
        inf.wait_for_publish(20)
    assert len(got) == N
    # per topic, in publish order, each payload whole
    for i, m in enumerate(sorted(got, key=lambda m: int(m.payload.split(b":")[0]))):
        assert m.payload == (f"{i}:" + "x" * sizes[i % len(sizes)]).encode()
    unacked = got[N - 10:]
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    # Same client id, persistent session: only the 10 messages never acknowledged come again.
    c2, got2, cond2 = _consumer(broker.port, "fast-consumer")
    _wait(cond2, got2, 10, timeout=5)
    time.sleep(0.5)
    assert sorted(m.payload for m in got2) == sorted(m.payload for m in unacked)
    c2.ack_many([m.mid for m in got2])
    c2.disconnect()
    c2.loop_stop()
    pub.disconnect()
    pub.loop_stop()
