"""The store broker as a trust boundary, black box: `cartd broker-config` writes the set-up, a real
Mosquitto runs it as is, and each identity is tried against it. A forbidden publish is shown to
have no effect by a *later* allowed one from the same client: Mosquitto handles one client's
packets in order, so once the later message has arrived (at the back-end's subscription to the
whole store, or in cartd's database), the earlier one would have been there too."""
from __future__ import annotations

import json
import os
import pwd
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from cartd_support import BASE, PREFIX, STORE, Cartd, entry, exit_, item_event, tracking, write_config
from conftest import Broker, _find_mosquitto, _free_port, _skip_or_fail
from helpers import REPO
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def cartd_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aggregator.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def broker_config(out: Path, port: int, units: str = "unit-a,unit-b", *extra: str) -> subprocess.CompletedProcess:
    args = ["broker-config", "--units", units, "--store", STORE, "--port", str(port), "--bind", "127.0.0.1",
            "--out", str(out), *extra]
    if os.geteuid() == 0:
        # As root Mosquitto drops to a user; stay as ourselves so it can reach pytest's tmp folders.
        args += ["--user", pwd.getpwuid(os.geteuid()).pw_name]
    return cartd_cli(*args)


@pytest.fixture
def acl_broker(tmp_path):
    """A Mosquitto started with `mosquitto -c DIR/mosquitto.conf` exactly as broker-config wrote it."""
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    port = _free_port()
    out = tmp_path / "broker"
    r = broker_config(out, port)
    assert r.returncode == 0, r.stderr
    (tmp_path / "run").mkdir()
    b = Broker(binary, tmp_path / "run")
    b.port, b.conf = port, out / "mosquitto.conf"  # run the generated file untouched
    b.creds = out / "credentials"  # type: ignore[attr-defined]
    b.start()
    try:
        yield b
    finally:
        b.stop()


def creds(broker, ident: str) -> dict:
    return json.loads((broker.creds / f"{ident}.json").read_text())


class Client:
    """A paho MQTT 5 client logged in as one identity; records messages, PUBACK reason codes and
    the CONNACK."""

    def __init__(self, broker, ident: str | None, subscribe: str | None = None, password: str | None = None,
                 will: tuple[str, str] | None = None):
        self.msgs: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, str] = {}
        self.connack: str | None = None
        self._cond = threading.Condition()
        self._subscribe = subscribe
        self._subscribed = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                             client_id=f"test-{ident}-{time.monotonic_ns()}")
        if ident is not None:
            d = creds(broker, ident)
            self.c.username_pw_set(d["username"], password if password is not None else d["password"])
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = lambda *_: self._subscribed.set()
        self.c.connect(broker.host, broker.port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, c, _u, _f, rc, _p) -> None:
        with self._cond:
            self.connack = str(rc)
            self._cond.notify_all()
        if not rc.is_failure and self._subscribe:
            c.subscribe(self._subscribe, qos=1)

    def _on_message(self, _c, _u, m) -> None:
        with self._cond:
            self.msgs.append((m.topic, m.payload))
            self._cond.notify_all()

    def _on_publish(self, _c, _u, mid, rc, _p) -> None:
        with self._cond:
            self.pubacks[mid] = str(rc)
            self._cond.notify_all()

    def wait_connack(self, timeout: float = 10) -> str:
        with self._cond:
            self._cond.wait_for(lambda: self.connack is not None, timeout)
        assert self.connack is not None, "no CONNACK"
        if self._subscribe and self.connack == "Success":
            assert self._subscribed.wait(timeout), "no SUBACK"
        return self.connack

    def publish(self, topic: str, payload, timeout: float = 10) -> str:
        """Publish QoS 1 and return the broker's PUBACK reason ("Success" / "Not authorized")."""
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        info = self.c.publish(topic, data, qos=1)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self.pubacks, timeout)
            return self.pubacks.get(info.mid, "no PUBACK")

    def wait_for(self, pred, timeout: float = 15, what: str = "a message") -> tuple[str, bytes]:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(pred(t, p) for t, p in self.msgs), timeout)
            assert ok, f"{what} never arrived; got {[t for t, _ in self.msgs]}"
            return next((t, p) for t, p in self.msgs if pred(t, p))

    def topics(self) -> list[str]:
        with self._cond:
            return [t for t, _ in self.msgs]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def db_rows(db: Path, sql: str, args=()) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- the command


def test_broker_config_writes_identities_and_keeps_them_on_a_rerun(tmp_path):
    out = tmp_path / "b"
    r = broker_config(out, 18830)
    assert r.returncode == 0, r.stderr
    assert "run: mosquitto -c" in r.stdout
    files = {p.name for p in out.iterdir()}
    assert {"mosquitto.conf", "passwd", "acl", "credentials"} <= files
    first = {}
    for ident in ("unit-a", "unit-b", "cartd", "backend", "console"):
        f = out / "credentials" / f"{ident}.json"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        d = json.loads(f.read_text())
        assert d["username"] == ident and len(d["password"]) >= 40  # 256 random bits, URL-safe base64
        assert (out / "credentials" / f"{ident}.password").read_text().strip() == d["password"]
        assert d["password"] not in (out / "passwd").read_text()  # only hashes in the broker's file
        first[ident] = d["password"]
    assert len(set(first.values())) == len(first)
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18830 127.0.0.1" in conf
    # adding a unit keeps everyone else's password; --rotate renews one
    r = broker_config(out, 18830, "unit-a,unit-b,unit-c", "--rotate", "backend")
    assert r.returncode == 0, r.stderr
    again = {i: json.loads((out / "credentials" / f"{i}.json").read_text())["password"] for i in first}
    assert again["unit-a"] == first["unit-a"] and again["cartd"] == first["cartd"]
    assert again["backend"] != first["backend"]
    assert "user unit-c" in (out / "acl").read_text()


@pytest.mark.parametrize("args, message", [
    (["--units", "unit-a,unit-a"], "unit id 'unit-a' is listed twice"),
    (["--units", "cartd"], "unit id 'cartd' is reserved"),
    (["--units", "unit/a"], "unit id 'unit/a': use 1..64 letters"),
    (["--units", "unit-a", "--port", "70000"], "--port 70000: must be 1..65535"),
    (["--units", "unit-a", "--prefix", "gondola/#"], "--prefix 'gondola/#'"),
    (["--units", "unit-a", "--client-certs"], "--client-certs needs --tls-ca"),
])
def test_bad_input_gets_one_line_and_exit_64(tmp_path, args, message):
    r = cartd_cli("broker-config", *args, "--out", str(tmp_path / "b"))
    assert r.returncode == 64, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b" / "mosquitto.conf").exists()


# ---------------------------------------------------------------- the running broker


def test_anonymous_and_wrong_passwords_are_refused(acl_broker):
    anon = Client(acl_broker, None)
    wrong = Client(acl_broker, "unit-a", password="guess")
    ok = Client(acl_broker, "unit-a")
    try:
        assert anon.wait_connack() == "Not authorized"
        assert wrong.wait_connack() == "Not authorized"
        assert ok.wait_connack() == "Success"
    finally:
        for c in (anon, wrong, ok):
            c.close()


def test_a_unit_cannot_publish_for_others_or_send_requests_and_cartd_never_sees_it(acl_broker, tmp_path):
    """unit-a's identity tries every topic it has no business on; the back-end (reading the whole
    store) and cartd (its database) must never see any of it, while unit-a's own event arrives."""
    b = acl_broker
    (tmp_path / "cartd").mkdir()
    (tmp_path / "cartd" / "pw").write_text(creds(b, "cartd")["password"] + "\n")
    cfg = write_config(tmp_path / "cartd", b, units=[{"unit_id": "unit-a"}, {"unit_id": "unit-b"}],
                       mqtt={"username": "cartd", "password_file": str(tmp_path / "cartd" / "pw")})
    db = tmp_path / "cartd" / "cartd.sqlite3"
    backend = Client(b, "backend", subscribe=f"{BASE}/#")
    assert backend.wait_connack() == "Success"
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    unit_a = Client(b, "unit-a", subscribe=f"{BASE}/#")  # it asks for everything: gets its own req/ only
    unit_b = Client(b, "unit-b")
    try:
        assert unit_a.wait_connack() == "Success" and unit_b.wait_connack() == "Success"
        backend.wait_for(lambda t, p: t == f"{BASE}/_store/cartd/status/cartd" and json.loads(p)["state"] == "online",
                         timeout=30, what="cartd online (logged in as cartd)")
        now = time.time()
        forged = item_event("unit-b", 1, "1", "pick", "A", 3, now - 20)
        forbidden = [
            (f"{BASE}/unit-b/events", forged),                                      # another unit's events
            (f"{BASE}/unit-b/status", {"state": "stopped"}),                        # ... its status
            (f"{BASE}/unit-b/res/tare", {"txid": "x", "ok": True}),                 # ... its replies
            (f"{BASE}/unit-a/req/tare", {"txid": "self", "plates": ["1/1"], "force": True}),  # requests, own
            (f"{BASE}/unit-b/req/maintenance", {"txid": "m", "plates": ["1/1"], "seconds": 3600}),
            (f"{BASE}/unit-b/req/resend", {"txid": "r", "from_seq": 1, "to_seq": 1000}),
            (f"{BASE}/_store/gates/entry", entry("FORGED", now - 30)),             # store-level topics
            (f"{BASE}/_store/gates/exit", exit_("FORGED", now - 1)),
            (f"{BASE}/_store/tracking", tracking(now - 20, [("FORGED", "unit-b", "1", 1.0)])),
            (f"{BASE}/_store/receipts/FORGED", {"total": 0}),
            (f"{BASE}/_store/cartd/deadletter", {"reason": "forged"}),
            (f"{PREFIX}/other-store/unit-a/events", item_event("unit-a", 1, "1", "pick", "A", 1, now - 5)),
        ]
        for topic, doc in forbidden:
            assert unit_a.publish(topic, doc) == "Not authorized", topic
        # the unit's own topics are allowed, and this event is the marker that comes after all of the above
        own = item_event("unit-a", 1, "1", "pick", "B", 1, now - 10)
        assert unit_a.publish(f"{BASE}/unit-a/events", own) == "Success"
        backend.wait_for(lambda t, p: t == f"{BASE}/unit-a/events", what="unit-a's own event at the back-end")
        seen = backend.topics()
        for topic, _ in forbidden:
            assert topic not in seen, f"{topic} reached the back-end"
        # cartd has recorded the marker; nothing forged reached its database
        wait_until(lambda: db_rows(db, "SELECT 1 FROM events WHERE event_id=?", (own["event_id"],)), 30,
                   "cartd to record unit-a's own event")
        assert db_rows(db, "SELECT event_id, unit_id FROM events") == [(own["event_id"], "unit-a")]
        assert db_rows(db, "SELECT session_id FROM sessions") == []
        assert db_rows(db, "SELECT * FROM tracking") == []
        assert db_rows(db, "SELECT * FROM pending_exits") == []
        assert not db_rows(db, "SELECT 1 FROM deadletters WHERE instr(topic, 'unit-b') OR instr(topic, '/_store/')")
        assert not db_rows(db, "SELECT 1 FROM units WHERE unit_id='unit-b' AND status='stopped'")

        # unit-a reads nothing but its own requests: the back-end asks unit-b, then unit-a
        assert backend.publish(f"{BASE}/unit-b/req/rebirth", {"txid": "for-b"}) == "Success"
        assert (
            unit_b.publish(f"{BASE}/unit-b/events", item_event("unit-b", 1, "1", "pick", "C", 1, now - 8)) == "Success"
        )
        assert backend.publish(f"{BASE}/unit-a/req/rebirth", {"txid": "for-a"}) == "Success"
        unit_a.wait_for(lambda t, p: t == f"{BASE}/unit-a/req/rebirth", what="unit-a's own request")
        assert set(unit_a.topics()) == {f"{BASE}/unit-a/req/rebirth"}, unit_a.topics()

        # cartd may ask a unit for resend/rebirth, but not send it a destructive command or a gate
        c = Client(b, "cartd")
        try:
            assert c.wait_connack() == "Success"
            assert c.publish(f"{BASE}/unit-a/req/tare", {"txid": "by-cartd", "force": True}) == "Not authorized"
            assert c.publish(f"{BASE}/_store/gates/entry", entry("BY-CARTD", now)) == "Not authorized"
            assert c.publish(f"{BASE}/unit-a/events", own) == "Not authorized"
            assert c.publish(f"{BASE}/unit-a/req/resend", {"txid": "ok-cartd", "from_seq": 1, "to_seq": 1}) == "Success"
        finally:
            c.close()
        unit_a.wait_for(lambda t, p: t.endswith("/req/resend") and b"ok-cartd" in p, what="cartd's resend request")

        # the staff console may put plates into maintenance, and nothing else
        con = Client(b, "console")
        try:
            assert con.wait_connack() == "Success"
            assert con.publish(f"{BASE}/unit-a/req/tare", {"txid": "by-console", "force": True}) == "Not authorized"
            assert con.publish(f"{BASE}/_store/receipts/X", {"total": 0}) == "Not authorized"
            assert con.publish(f"{BASE}/unit-a/events", own) == "Not authorized"
            assert con.publish(f"{BASE}/unit-a/req/maintenance",
                               {"txid": "ok-console", "plates": ["1/1"], "seconds": 0}) == "Success"
        finally:
            con.close()
        unit_a.wait_for(lambda t, p: t.endswith("/req/maintenance") and b"ok-console" in p,
                        what="the console's maintenance request")
        assert not any(b"by-cartd" in p for _, p in unit_a.msgs)
    finally:
        for cl in (backend, unit_a, unit_b):
            cl.close()
        rc = cartd.stop()
    assert rc == 0, cartd.logtext()[-3000:]


def _sim_unit(tmp: Path, broker, password_file: Path) -> Path:
    doc = {
        "version": 1, "unit_id": "unit-a", "store_id": STORE, "state_dir": str(tmp / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "username": "unit-a",
                 "password_file": str(password_file), "health_interval_s": 1},
        "sensing": {"backend": "sim", "seed": 3, "rate_hz": 60, "speed": 1.0, "shoppers": False, "stocked": False,
                    "drift_g_per_min": 0, "glitch_rate": 0, "load_file": str(tmp / "load.json")},
        "shelves": [{"id": "1", "plates": [{"id": 1}, {"id": 2}]}],
        "planogram": [{"sku": "A1", "name": "Cola", "shelf": "1", "plates": [2], "unit_weight_g": 640}],
    }
    path = tmp / "unit.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_backend_tares_a_real_unit_and_another_unit_cannot(acl_broker, tmp_path):
    """shelfd (sim) logged in as unit-a: its events reach cartd through the ACL; the back-end's
    req/tare is answered and applied; unit-b's identical request goes nowhere; SIGKILL leaves the
    unit's last will (status offline), which its ACL allows."""
    b = acl_broker
    (tmp_path / "cartd").mkdir()
    (tmp_path / "cartd" / "pw").write_text(creds(b, "cartd")["password"] + "\n")
    cfg = write_config(tmp_path / "cartd", b, units=[{"unit_id": "unit-a"}],
                       mqtt={"username": "cartd", "password_file": str(tmp_path / "cartd" / "pw")})
    db = tmp_path / "cartd" / "cartd.sqlite3"
    unit_cfg = _sim_unit(tmp_path, b, b.creds / "unit-a.password")
    backend = Client(b, "backend", subscribe=f"{BASE}/#")
    intruder = Client(b, "unit-b")
    cartd = Cartd(cfg, tmp_path / "cartd.log").start()
    log = tmp_path / "shelfd.log"
    unit = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(unit_cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    try:
        assert backend.wait_connack() == "Success" and intruder.wait_connack() == "Success"
        backend.wait_for(lambda t, p: t == f"{BASE}/unit-a/status" and json.loads(p).get("state") == "online",
                         timeout=60, what="the unit online (logged in as unit-a)")
        cal = tmp_path / "state" / "calibration.json"
        before = json.loads(cal.read_text())["calibration_id"]

        # another unit's identity sends the destructive request: refused by the broker
        forged = {"txid": "forged", "plates": ["1/1"], "load_g": 0, "force": True}
        assert intruder.publish(f"{BASE}/unit-a/req/tare", forged) == "Not authorized"
        # the back-end's request is answered (a unit just started may not have 1.5 s of rest yet: ask again)
        deadline = time.monotonic() + 40
        for attempt in range(100):
            txid = f"t-{attempt}"
            assert (
                backend.publish(f"{BASE}/unit-a/req/tare", {"txid": txid, "plates": ["1/1"], "load_g": 0}) == "Success"
            )
            _, p = backend.wait_for(lambda t, p: t == f"{BASE}/unit-a/res/tare" and json.loads(p).get("txid") == txid,  # noqa: B023 - waited on within this iteration
                                    timeout=30, what="the unit's answer to the back-end's tare")
            reply = json.loads(p)
            if reply["ok"] or "rest" not in reply.get("error", "") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert reply["ok"] is True, reply
        assert not any(t.endswith("/res/tare") and json.loads(q).get("txid") == "forged" for t, q in backend.msgs)
        after = json.loads(cal.read_text())["calibration_id"]
        assert after != before and after == reply["result"]["calibration_id"]  # one tare: the back-end's

        # a real item event (500 g put on plate 1/2) travels unit → broker → cartd
        (tmp_path / "load.json").write_text(json.dumps({"1/2": 640}))
        backend.wait_for(lambda t, p: t == f"{BASE}/unit-a/events", timeout=40, what="the unit's item event")
        wait_until(lambda: db_rows(db, "SELECT 1 FROM events WHERE unit_id='unit-a'"), 30, "cartd to record it")
        assert db_rows(db, "SELECT status FROM units WHERE unit_id='unit-a'") == [("online",)]

        # last will: allowed on the unit's own status
        unit.send_signal(signal.SIGKILL)
        unit.wait(10)
        backend.wait_for(lambda t, p: t == f"{BASE}/unit-a/status" and json.loads(p).get("state") == "offline",
                         timeout=30, what="the unit's last will")
    finally:
        if unit.poll() is None:
            unit.send_signal(signal.SIGKILL)
            unit.wait(10)
        backend.close()
        intruder.close()
        rc = cartd.stop()
    assert rc == 0, cartd.logtext()[-3000:]
    assert "Traceback" not in log.read_text()


def test_tls_client_certificates_are_the_identities(tmp_path):
    """--client-certs: a TLS listener that wants a client certificate signed by the store CA and
    takes its CN as the identity; the same ACL then applies (no password involved)."""
    import shutil
    import ssl
    if shutil.which("openssl") is None:
        _skip_or_fail("openssl missing (Debian package openssl)")
    binary = _find_mosquitto()
    if binary is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=tmp_path)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Gondola test store CA")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("unit-a", []), ("unit-b", []), ("backend", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'127.0.0.1' if name == 'server' else name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", *ext)
    port = _free_port()
    out = tmp_path / "broker"
    r = broker_config(out, port, "unit-a,unit-b", "--tls-ca", str(tmp_path / "ca.pem"), "--tls-cert",
                      str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"), "--client-certs")
    assert r.returncode == 0, r.stderr
    (tmp_path / "run").mkdir()
    b = Broker(binary, tmp_path / "run")
    b.port, b.conf = port, out / "mosquitto.conf"
    b.start()
    clients = []

    def connect(cert: str | None) -> tuple[paho.Client, list, list]:
        got, acks = [], []
        c = paho.Client(
            CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=f"tls-{cert}-{time.monotonic_ns()}"
        )
        c.tls_set(ca_certs=str(tmp_path / "ca.pem"),
                  certfile=str(tmp_path / f"{cert}.pem") if cert else None,
                  keyfile=str(tmp_path / f"{cert}.key") if cert else None)
        c.on_connect = lambda cl, _u, _f, rc, _p: (acks.append(str(rc)), cl.subscribe(f"{BASE}/#", qos=1))
        c.on_subscribe = lambda *_: acks.append("subscribed")
        c.on_disconnect = lambda *_: acks.append("disconnected")
        c.on_message = lambda _c, _u, m: got.append(m.topic)
        clients.append(c)
        try:
            c.connect(b.host, b.port, keepalive=10)
        except (OSError, ssl.SSLError):
            return c, got, ["refused"]
        c.loop_start()
        return c, got, acks

    try:
        backend, seen, a1 = connect("backend")
        unit_a, _, a2 = connect("unit-a")
        wait_until(lambda: "subscribed" in a1 and "subscribed" in a2, 15, "both TLS clients connected and subscribed")
        assert a1[0] == "Success" and a2[0] == "Success"
        forged = unit_a.publish(
            f"{BASE}/unit-b/events", json.dumps(item_event("unit-b", 1, "1", "pick", "A", 1, time.time())), qos=1
        )
        own = unit_a.publish(
            f"{BASE}/unit-a/events", json.dumps(item_event("unit-a", 1, "1", "pick", "A", 1, time.time())), qos=1
        )
        own.wait_for_publish(10)
        forged.wait_for_publish(10)
        wait_until(lambda: f"{BASE}/unit-a/events" in seen, 15, "unit-a's own event over TLS at the back-end")
        assert f"{BASE}/unit-b/events" not in seen
        # no certificate: the handshake (or, with TLS 1.3, the first read) fails; never a session
        _, _, a3 = connect(None)
        if a3 != ["refused"]:
            wait_until(lambda: a3, 10, "the certificate-less client to be turned away")
            assert a3[0] == "disconnected", a3
    finally:
        for c in clients:
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        b.stop()


def test_taking_over_another_clients_session_gains_nothing(acl_broker):
    """Mosquitto's password/ACL files do not bind client ids to users: unit-b can connect with
    unit-a's client id and resume its persistent session. The requests queued for unit-a must
    still not reach unit-b (the read ACL follows the username)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    b = acl_broker
    got_b: list = []
    session: list = []

    def make(ident: str, on_connect):
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="gondola-unit-a")
        d = creds(b, ident)
        c.username_pw_set(d["username"], d["password"])
        c.on_connect = on_connect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect(b.host, b.port, keepalive=10, clean_start=False, properties=props)
        return c

    subscribed = threading.Event()
    a = make("unit-a", lambda cl, *_: cl.subscribe(f"{BASE}/unit-a/req/#", qos=1))
    a.on_subscribe = lambda *_: subscribed.set()
    a.loop_start()
    assert subscribed.wait(10)
    a.disconnect()  # gone for now; its session (and subscription) stays for 600 s
    a.loop_stop()
    backend = Client(b, "backend")
    try:
        assert backend.wait_connack() == "Success"
        assert backend.publish(f"{BASE}/unit-a/req/maintenance", {"txid": "queued", "plates": ["1/1"]}) == "Success"
        c = make("unit-b", lambda cl, _u, flags, rc, _p: session.append((str(rc), flags.session_present)))
        c.on_message = lambda _c, _u, m: got_b.append(m.topic)
        c.loop_start()
        wait_until(lambda: session, 10, "unit-b's CONNACK")
        assert session[0] == ("Success", True)  # it did take the session over ...
        # ... but not the message queued in it. Mosquitto writes a resumed session's queue right
        # after the CONNACK, so it would be in front of the PUBACK of unit-b's own next publish.
        info = c.publish(f"{BASE}/unit-b/health", "{}", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
        assert got_b == []
        c.disconnect()
        c.loop_stop()
    finally:
        backend.close()
