"""Store-in-a-box under faults: the same seed run twice side by side, each with its own broker,
real shelfd units and a real cartd; in one of them cartd is SIGKILLed and restarted mid-run and
later the broker is SIGKILLed and restarted on the same port. Every shopper's receipt must be the
same in both runs (and right), and issued once."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pytest
from conftest import _skip_or_fail

from aggregator.sim.plan import PlanParams, make_plan
from aggregator.sim.runner import RunOptions, StoreRun, mosquitto_bin
from aggregator.sim.score import final_receipts, receipt_cart
from aggregator.sim.store import build_store

pytestmark = pytest.mark.integration


def _normal(r: dict) -> dict:
    """A receipt without what legitimately differs between two runs (clock times, event ids)."""
    return {"receipt_id": r["receipt_id"], "session_id": r["session_id"], "kind": r.get("kind"), "n": r.get("n"),
            "complete": r.get("complete"), "total": r.get("total"), "currency": r.get("currency"),
            "lines": sorted((ln["sku"], ln.get("name"), ln["quantity"], ln.get("unit_price"), ln.get("amount"),
                             bool(ln.get("needs_review"))) for ln in r.get("lines", []))}


def test_receipts_survive_cartd_and_broker_kills(tmp_path):
    if mosquitto_bin() is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    store = build_store(n_units=2)
    plan = make_plan(store, PlanParams(shoppers=4, seed=11, arrival_gap_s=3.0, visits=(1, 2), return_p=0.5))
    truth = plan.truth()
    assert sum(len(v) for v in truth.values()) >= 4
    opts = RunOptions(startup_s=5.0, receipt_grace_s=35.0)
    calm = StoreRun(store, plan, tmp_path / "calm", opts)
    rough = StoreRun(store, plan, tmp_path / "rough", opts)
    faults: list[str] = []

    def disturb() -> None:
        # cartd killed while shoppers are picking, restarted 1.5 s later (same database, same
        # persistent MQTT session); then the broker killed and restarted on its port
        t_kill = rough.t0 + 0.35 * plan.end_s
        time.sleep(max(0.0, t_kill - time.time()))
        rough.cartd.send_signal(signal.SIGKILL)
        rough.cartd.wait(5)
        faults.append(f"cartd killed at +{time.time() - rough.t0:.1f} s")
        time.sleep(1.5)
        rough.start_cartd()
        time.sleep(max(0.0, rough.t0 + 0.65 * plan.end_s - time.time()))
        rough.broker.stop(signal.SIGKILL)
        faults.append(f"broker killed at +{time.time() - rough.t0:.1f} s")
        time.sleep(1.5)
        rough.broker.start()

    errors: list[BaseException] = []

    def run(sr: StoreRun, hook=None) -> None:
        try:
            sr.start()
            if hook:
                hook()
            sr.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            sr.stop()

    threads = [threading.Thread(target=run, args=(calm,)), threading.Thread(target=run, args=(rough, disturb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert len(faults) == 2, faults
    a, b = calm.all_receipts(), rough.all_receipts()
    fa, fb = final_receipts(a), final_receipts(b)
    sessions = {s.session_id for s in plan.sessions}
    assert set(fa) == sessions, f"undisturbed run: receipts for {sorted(fa)} of {sorted(sessions)}"
    assert set(fb) == sessions, f"disturbed run ({faults}): receipts for {sorted(fb)}; see {tmp_path / 'rough'}"
    # issued once: one document per receipt_id, no corrections needed in either run
    for docs in (a, b):
        ids = [r["receipt_id"] for r in docs]
        assert len(ids) == len(set(ids))
        assert all(r.get("kind", "receipt") == "receipt" and r.get("n", 1) == 1 for r in docs), docs
    assert sorted(map(_normal, a), key=lambda r: r["receipt_id"]) == \
        sorted(map(_normal, b), key=lambda r: r["receipt_id"]), f"faults: {faults}"
    # and both are what the shoppers really took
    assert {sid: receipt_cart(r) for sid, r in fa.items()} == truth


def test_the_staff_page_waits_for_cartd_and_every_child_that_exits_is_reported(tmp_path):
    """`--web-port`: the page starts only once cartd is online with its database (it opens it
    read-only and cannot create it), and a child that exits before stop() is reported at once in
    one line naming it, its exit code and its log's last line."""
    import urllib.request

    from aggregator.sim.runner import ChildExited, free_port

    if mosquitto_bin() is None:
        _skip_or_fail("mosquitto not installed (Debian: apt-get install mosquitto)")
    store = build_store(n_units=2)
    plan = make_plan(store, PlanParams(shoppers=1, seed=3, arrival_gap_s=3.0))
    port = free_port()
    reported: list[str] = []
    run = StoreRun(store, plan, tmp_path / "run", RunOptions(startup_s=3.0, web_port=port),
                   on_child_exit=reported.append)
    try:
        run.start()
        assert run.cartd_db is not None and run.cartd_db.exists()
        deadline = time.monotonic() + 30
        answer = None
        while answer is None:  # it listens only once it has opened cartd's storage
            assert run.web is not None and run.web.poll() is None, (run.dir / "web.log").read_text()
            assert time.monotonic() < deadline, "the staff page never answered"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    answer = r.read()
            except OSError:
                time.sleep(0.2)
        assert json.loads(answer)["ok"] is True
        assert run.check_children() == [] and reported == []

        uid, unit = next(iter(run.units.items()))
        unit_log = run.dir / uid / "shelfd.log"
        unit.send_signal(signal.SIGKILL)
        unit.wait(5)
        with pytest.raises(ChildExited):
            run.wait(timeout=20)
        assert len(reported) == 1, reported
        line = reported[0]
        assert "\n" not in line and line.startswith(f"shelfd {uid} exited with -9 (SIGKILL)")
        last = [x for x in unit_log.read_text().splitlines() if x.strip()][-1].strip()[:300]
        assert line.endswith(f"last line of {unit_log}: {last}"), line

        # a page given a config it cannot read exits at once, and says why
        run.web_cmd = lambda p: [sys.executable, "-m", "aggregator.web", "--config", str(tmp_path / "nope.yaml"),
                                 "--port", str(p)]
        run.stop_web()
        run.start_web(free_port())
        deadline = time.monotonic() + 30
        while len(reported) < 2:
            assert time.monotonic() < deadline, f"the page's exit was not reported: {reported}"
            run.check_children()
            time.sleep(0.1)
        line = reported[1]
        assert line.startswith("staff page (aggregator.web) exited with ") and "nope.yaml" in line, line
        assert run.check_children() == [] and len(reported) == 2  # once each
    finally:
        run.stop()
    assert all(p.poll() is not None for _, p, _ in run.children() if p is not None)
    assert len(reported) == 2  # stop() ends the rest without reporting them
