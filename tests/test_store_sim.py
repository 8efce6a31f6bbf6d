"""The store simulator's parts, fast: plan rules, tracking modes, the simulator's scripted mode
(run through the real pipeline offline), script validation by `shelfd check`, scoring."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from aggregator.sim.plan import SHELF_GAP_S, PlanParams, make_plan
from aggregator.sim.score import score
from aggregator.sim.store import build_store
from aggregator.sim.tracking import batches

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store():
    return build_store(n_units=3)


@pytest.fixture(scope="module")
def plan(store):
    return make_plan(store, PlanParams(shoppers=40, seed=5, arrival_gap_s=2.5, return_p=0.5))


def test_plan_is_deterministic_and_physical(store, plan):
    again = make_plan(store, PlanParams(shoppers=40, seed=5, arrival_gap_s=2.5, return_p=0.5))
    assert [vars(i) for i in again.interactions] == [vars(i) for i in plan.interactions]
    other = make_plan(store, PlanParams(shoppers=40, seed=6, arrival_gap_s=2.5, return_p=0.5))
    assert [vars(i) for i in other.interactions] != [vars(i) for i in plan.interactions]
    # one shopper per shelf at a time, with a gap
    by_shelf = defaultdict(list)
    for s in plan.stands:
        by_shelf[(s.unit_id, s.shelf)].append((s.t_arrive, s.t_leave))
    for iv in by_shelf.values():
        iv.sort()
        for (_, b), (c, _) in zip(iv, iv[1:]):
            assert c >= b + SHELF_GAP_S - 1e-6
    # every touch happens while its shopper stands there, and inside their visit
    stands = defaultdict(list)
    for s in plan.stands:
        stands[(s.session_id, s.unit_id, s.shelf)].append(s)
    sessions = {s.session_id: s for s in plan.sessions}
    for i in plan.interactions:
        assert any(s.t_arrive <= i.t and i.t + i.dur <= s.t_leave for s in stands[(i.session_id, i.unit_id, i.shelf)])
        assert sessions[i.session_id].t_entry < i.t < sessions[i.session_id].t_exit
    # returns only of what the shopper held; some go to the wrong place
    held = Counter()
    for i in sorted(plan.interactions, key=lambda i: i.t):
        if i.type == "pick":
            held[(i.session_id, i.sku)] += i.quantity
        elif i.type == "put_back":
            assert held[(i.session_id, i.sku)] >= i.quantity
            held[(i.session_id, i.sku)] -= i.quantity
    kinds = Counter((i.type, i.wrong_place) for i in plan.interactions)
    assert kinds[("put_back", True)] >= 1 and kinds[("put_back", False)] >= 1
    assert plan.truth() == {sid: {k: v for k, v in sorted(c.items()) if v > 0} for sid, c in
                            _carts(held, plan).items()}


def _carts(held, plan):
    out = {s.session_id: Counter() for s in plan.sessions}
    for (sid, sku), q in held.items():
        out[sid][sku] += q
    return out


def test_clean_tracking_sees_exactly_who_stands_where(store, plan):
    for t, obs in batches(plan, store, "clean", seed=5):
        want = {(s.session_id, s.unit_id, s.shelf) for s in plan.stands if s.t_arrive <= t <= s.t_leave}
        assert {(o["session_id"], o["unit_id"], o["shelf"]) for o in obs} == want
        assert all(0.9 <= o["confidence"] <= 1.0 for o in obs)


def test_noisy_tracking_drops_moves_and_swaps(store, plan):
    clean = batches(plan, store, "clean", seed=5)
    noisy = batches(plan, store, "noisy", seed=5)
    assert noisy == batches(plan, store, "noisy", seed=5)  # deterministic too
    n_clean = sum(len(o) for _, o in clean)
    wrong = missing = 0
    truth = {t: {(o["session_id"], o["unit_id"], o["shelf"]) for o in obs} for t, obs in clean}
    for t, obs in noisy:
        got = {(o["session_id"], o["unit_id"], o["shelf"]) for o in obs}
        wrong += len(got - truth.get(t, set()))
        missing += len(truth.get(t, set()) - got)
    assert 0.15 * n_clean < missing < 0.6 * n_clean
    assert wrong > 0.05 * n_clean
    assert len(noisy) < len(clean)  # outages: whole batches lost


def test_scripted_sim_performs_exactly_the_script(tmp_path, store, plan):
    from daemon.config import load_config
    from daemon.layout import Layout
    from daemon.pipeline import run_offline
    from daemon.sensing.sim import SimSource

    unit = store.units[0]
    lines = plan.scripts(store)[unit.unit_id][:14]
    assert any(x["type"] == "put_back" for x in lines)
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg_d = store.unit_config(unit, port=1883, state_dir=tmp_path / "state", script=script, t0=1.8e9, seed=3)
    cfg_d["sensing"].update(speed=0, duration_s=lines[-1]["t"] + 8)
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(cfg_d))
    cfg = load_config(tmp_path / "u.yaml")
    layout = Layout.from_config(cfg)
    src = SimSource(cfg, layout)
    events: list[dict] = []
    run_offline(cfg, src, layout, events.append)
    truth = [t for t in src.truth if t["type"] in ("pick", "put_back")]
    # the simulator did what the script says, nothing more, at the script's times on the store clock
    assert [(t["type"], t["sku"], t["quantity"], t["shelf"], t["script_id"]) for t in truth] == \
        [(x["type"], x["sku"], x["quantity"], x["shelf"], x["id"]) for x in lines]
    for t, x in zip(truth, lines):
        assert t["t_start"] == pytest.approx(1.8e9 + x["t"], abs=0.02)
    # and the daemon's pipeline saw each one (a real detector, so allow a rare miss, never a phantom)
    real = [e for e in events if e["type"] in ("pick", "put_back", "unknown_change")]
    assert len(real) <= len(lines)
    right = sum(
        1
        for x in lines
        if any(
            e["type"] == x["type"]
            and e["sku"] == x["sku"]
            and e["quantity"] == x["quantity"]
            and e["shelf"] == x["shelf"]
            for e in real
        )
    )
    assert right >= len(lines) - 1


def test_shelfd_check_names_a_bad_script_line(tmp_path, store):
    unit = store.units[0]
    script = tmp_path / "s.jsonl"
    script.write_text(f'{{"t": 1, "type": "pick", "shelf": "1", "sku": "{unit.facings[0].sku}"}}\n'
                      '{"t": 2, "type": "grab", "shelf": "1"}\n')
    cfg = store.unit_config(unit, port=1883, state_dir=tmp_path / "st", script=script, t0=1.8e9, seed=1)
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-c", "import sys; from daemon.cli import cli; sys.exit(cli())",
                        "check", "--config", str(tmp_path / "u.yaml")], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 78, r.stderr
    assert f"sensing.script: {script}:2: type:" in r.stderr and "Traceback" not in r.stderr
    script.write_text('{"t": 1, "type": "pick", "shelf": "9", "sku": "x"}\n')
    r = subprocess.run([sys.executable, "-c", "import sys; from daemon.cli import cli; sys.exit(cli())",
                        "check", "--config", str(tmp_path / "u.yaml")], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 78 and "unknown shelf '9'" in r.stderr, r.stderr


def test_line_item_score():
    truth = {"a": {"X": 2, "Y": 1}, "b": {"Z": 1}, "c": {}}
    receipts = [
        {
            "receipt_id": "a/1",
            "session_id": "a",
            "n": 1,
            "lines": [{"sku": "X", "quantity": 1}, {"sku": "Y", "quantity": 1}],
        },
        {
            "receipt_id": "a/2",
            "session_id": "a",
            "n": 2,
            "kind": "correction",
            "lines": [{"sku": "X", "quantity": 2}, {"sku": "Y", "quantity": 1}],
        },
        {"receipt_id": "c/1", "session_id": "c", "n": 1, "lines": [{"sku": "Q", "quantity": 1}]},
    ]
    s = score(truth, receipts)
    # a: the correction is scored (2 right); b: no receipt (1 missed); c: a line nobody took (1 wrong)
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.corrections == 1 and s.receipts == 2


def test_a_rerun_into_the_same_folder_starts_from_a_clean_store(tmp_path, store, plan):
    from aggregator.sim.runner import StoreRun

    work = tmp_path / "run"
    (work / "broker").mkdir(parents=True)
    (work / "plan.json").write_text("{}")                  # a previous run was here
    (work / "cartd.sqlite3").write_text("old receipts")
    (work / "broker" / "mosquitto.db").write_text("old sessions")
    StoreRun(store, plan, work)
    assert not (work / "cartd.sqlite3").exists() and not (work / "broker" / "mosquitto.db").exists()
    keep = tmp_path / "notes"                              # a folder that never held a run is left alone
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    StoreRun(store, plan, keep)
    assert (keep / "mine.txt").exists()


def test_a_score_over_nothing_says_nothing_to_score(capsys):
    """Ctrl-C before any receipt: no line item to find, none on a receipt. That is not F1 1.000."""
    from aggregator.demo import score_line
    from aggregator.sim.score import prf_text, ratio_text

    s = score({}, [])
    assert s.empty and s.text() == "nothing to score"
    assert score_line(s, 0) == "nothing to score (no receipt yet)"
    took_nothing = score({"a": {}}, [{"receipt_id": "a/1", "session_id": "a", "n": 1, "lines": []}])
    assert score_line(took_nothing, 1) == "nothing to score (1/1 receipts, no line items)"
    some = score({"a": {"X": 1}}, [])
    assert not some.empty and score_line(some, 1).startswith("precision —  recall 0.000  F1 0.000  (0 right")
    assert prf_text(2, 1, 1) == "precision 0.667  recall 0.667  F1 0.667"
    assert ratio_text(0, 0) == "—" and ratio_text(1, 4) == "0.250"

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import reliability
    finally:
        sys.path.remove(str(REPO / "bench"))
    reliability.print_table(reliability.table([]), "no events")
    reliability.print_table(reliability.table([(0.5, True), (0.6, False)]), "unsure")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  reliability (no events): nothing to score (no event)"
    assert out[1].endswith("confidence ≥ 0.9: no event, nothing to score")
