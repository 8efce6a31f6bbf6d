"""The publisher against brokers that need a password or TLS, as a store's broker will."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import Broker, _find_mosquitto, _free_port, _skip_or_fail
from paho.mqtt.enums import CallbackAPIVersion
from test_publisher import FAST, item_event, make_cfg, wait_until

from daemon.publish.mqtt import Publisher
from daemon.publish.outbox import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _broker(tmp: Path, extra: list[str], tls_port: bool = False) -> Broker:
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    b = Broker(binary, tmp)
    lines = [ln for ln in b.conf.read_text().splitlines() if not ln.startswith(("listener", "allow_anonymous"))]
    b.port = _free_port()
    b.conf.write_text("\n".join([f"listener {b.port} {b.host}", *extra, *lines]) + "\n")
    return b


def _collect(broker: Broker, topic: str, **conn) -> tuple[paho.Client, list]:
    got: list = []
    c = paho.Client(CallbackAPIVersion.VERSION2)
    if "username" in conn:
        c.username_pw_set(conn["username"], conn["password"])
    if "ca" in conn:
        c.tls_set(ca_certs=str(conn["ca"]))
    c.on_connect = lambda cl, _u, _f, rc, _p: cl.subscribe(topic, qos=1)
    c.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c, got


def test_password_from_a_file_and_a_wrong_one_keeps_events(tmp_path):
    if shutil.which("mosquitto_passwd") is None:
        _skip_or_fail("mosquitto_passwd missing (Debian package mosquitto)")
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "shelf", "s3cret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "backend", "b4ck"], check=True)
    pw.chmod(0o644)
    broker = _broker(tmp_path, ["allow_anonymous false", f"password_file {pw}"])
    broker.start()
    try:
        (tmp_path / "good").write_text("s3cret\n")  # editors end files with a newline
        (tmp_path / "bad").write_text("guess\n")
        cfg = make_cfg(tmp_path, broker, username="shelf", password_file=str(tmp_path / "good"))
        sub, got = _collect(broker, f"{cfg.topic_base}/events", username="backend", password="b4ck")
        with Outbox(tmp_path / "ok.db") as ob:
            pub = Publisher(cfg, ob, **FAST)
            pub.start()
            ob.add(item_event(1))
            pub.notify()
            wait_until(lambda: len(got) == 1, timeout=10, what="event through an authenticated broker")
            pub.stop(timeout=2)
        bad = make_cfg(tmp_path, broker, username="shelf", password_file=str(tmp_path / "bad"))
        with Outbox(tmp_path / "refused.db") as ob:
            pub = Publisher(bad, ob, **FAST)
            pub.start()
            ob.add(item_event(2))
            pub.notify()
            time.sleep(1.5)
            assert not pub.connected and ob.depth() == 1  # refused: kept, not lost
            pub.stop(timeout=1)
        assert len(got) == 1
        sub.disconnect()
        sub.loop_stop()
    finally:
        broker.stop()


def test_tls_with_the_store_ca(tmp_path):
    if shutil.which("openssl") is None:
        _skip_or_fail("openssl missing (Debian package openssl)")
    ca_key, ca, key, csr, crt = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=Gondola test store CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    key.chmod(0o644)
    broker = _broker(tmp_path, ["allow_anonymous true", f"cafile {ca}", f"certfile {crt}", f"keyfile {key}"])
    broker.start()
    try:
        cfg = make_cfg(tmp_path, broker, tls={"ca_file": str(ca)})
        sub, got = _collect(broker, f"{cfg.topic_base}/events", ca=ca)
        with Outbox(tmp_path / "tls.db") as ob:
            pub = Publisher(cfg, ob, **FAST)
            pub.start()
            ob.add(item_event(1))
            pub.notify()
            wait_until(lambda: len(got) == 1, timeout=10, what="event over TLS")
            pub.stop(timeout=2)
        # a plain-text client never gets a session on the TLS listener
        plain = paho.Client(CallbackAPIVersion.VERSION2)
        try:
            plain.connect(broker.host, broker.port, keepalive=5)
            plain.loop_start()
            time.sleep(1.0)
            assert not plain.is_connected()
        except (OSError, ssl.SSLError):
            pass
        finally:
            plain.loop_stop()
        sub.disconnect()
        sub.loop_stop()
    finally:
        broker.stop()
