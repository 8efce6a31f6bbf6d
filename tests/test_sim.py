"""The simulator's physics and bookkeeping: what detection is tuned against must be right."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config, parse_config
from daemon.layout import Layout
from daemon.sensing.base import Flag, SampleSource
from daemon.sensing.sim import SimSource

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(tmp_path: Path, **sensing) -> Config:
    s = {"backend": "sim", "seed": 7, "speed": 0, "duration_s": 120, "events_per_min": 30}
    s.update(sensing)
    return parse_config({
        "version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path / "state"),
        "sensing": s,
        "shelves": [{"id": sh, "plates": [{"id": i} for i in range(1, 5)]} for sh in ("A", "B")],
        "planogram": [
            {"sku": "heavy", "shelf": "A", "plates": [1], "unit_weight_g": 780.0},
            {"sku": "towel", "shelf": "A", "plates": [2, 3], "unit_weight_g": 264.0},
            {"sku": "candy", "shelf": "A", "plates": [4], "unit_weight_g": 45.5},
            {"sku": "dish", "shelf": "B", "plates": [1], "unit_weight_g": 326.7},
            {"sku": "mm", "shelf": "B", "plates": [2], "unit_weight_g": 53.5},
            {"sku": "gloves", "shelf": "B", "plates": [3, 4], "unit_weight_g": 565.5},
        ],
    })


def quiet(tmp_path: Path, **kw) -> SimSource:
    """No noise, drift or glitches: every gram on a plate is a gram of product or of force."""
    cfg = make_cfg(tmp_path, noise_g=0.0, glitch_rate=0.0, **kw)
    return SimSource(cfg, Layout.from_config(cfg), drift_g_per_min=0.0)


def drain(src: SimSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts, vs, fs = [], [], []
    src.start()
    while (b := src.read(0.0)) is not None:
        ts.append(b.t), vs.append(b.values), fs.append(b.flags)
    src.close()
    return np.concatenate(ts), np.concatenate(vs), np.concatenate(fs)


def plate_grams(src: SimSource, values: np.ndarray) -> dict[str, np.ndarray]:
    cal = src.factory_calibration()
    return {p.key: sum(cal.channels[c].to_grams(values[:, src.channels.index(c)]) for c in p.channels)
            for p in src.layout.plates}


def rest(t: np.ndarray, g: np.ndarray, a: float, b: float) -> float:
    sel = (t >= a) & (t < b)
    assert sel.sum() >= 10, "rest window too short"
    return float(np.mean(g[sel]))


def test_is_a_sample_source_in_counts(tmp_path):
    src = quiet(tmp_path)
    assert isinstance(src, SampleSource)
    assert src.units == "counts" and src.rate_hz == 60.0
    assert src.channels == ["sim-A-1", "sim-A-2", "sim-A-3", "sim-A-4", "sim-B-1", "sim-B-2", "sim-B-3", "sim-B-4"]
    cal = src.factory_calibration()
    assert cal.source == "sim-factory" and set(cal.channels) == set(src.channels)
    for c in cal.channels.values():
        assert 100 <= abs(c.scale) <= 450 and abs(c.offset) <= 200_000


def test_deterministic_for_a_seed(tmp_path):
    src_a = SimSource(make_cfg(tmp_path), Layout.from_config(make_cfg(tmp_path)))
    a_t, a_v, a_f = drain(src_a)
    src_b = SimSource(make_cfg(tmp_path), Layout.from_config(make_cfg(tmp_path)))
    b_t, b_v, b_f = drain(src_b)
    np.testing.assert_array_equal(a_t, b_t)
    np.testing.assert_array_equal(a_v, b_v)  # NaNs in the same places compare equal
    np.testing.assert_array_equal(a_f, b_f)
    other = SimSource(make_cfg(tmp_path, seed=8), Layout.from_config(make_cfg(tmp_path, seed=8)))
    o_t, o_v, _ = drain(other)
    assert not np.array_equal(np.nan_to_num(a_v), np.nan_to_num(o_v))
    assert a_t[0] != o_t[0]
    assert src_a.truth == src_b.truth and len(src_a.truth) > 10


def test_same_seed_same_shoppers_at_any_noise(tmp_path):
    # the shopper stream is independent of the noise stream: changing noise keeps the scenario
    s1 = SimSource(make_cfg(tmp_path), Layout.from_config(make_cfg(tmp_path)))
    s2 = SimSource(make_cfg(tmp_path, noise_g=3.0), Layout.from_config(make_cfg(tmp_path)))
    drain(s1), drain(s2)
    real = lambda s: [(g.type, g.sku, g.time) for g in s.ground_truth if g.type in ("pick", "put_back")]  # noqa: E731
    assert real(s1) == real(s2) and len(real(s1)) > 20


def test_factory_calibration_reproduces_plate_loads(tmp_path):
    src = quiet(tmp_path)
    loads = src.plate_loads_g()
    block = src.read()
    grams = plate_grams(src, block.values)
    for key, g in grams.items():
        np.testing.assert_allclose(g, loads[key], atol=0.02)  # integer counts: ≤ 1/(2·100) g
    assert min(loads.values()) > 300  # facings are stocked


def test_scale_error_shows_in_grams(tmp_path):
    cfg = make_cfg(tmp_path, noise_g=0.0, glitch_rate=0.0)
    src = SimSource(cfg, Layout.from_config(cfg), drift_g_per_min=0.0, scale_error={"sim-A-1": 0.02})
    loads = src.plate_loads_g()
    g = plate_grams(src, src.read().values)
    np.testing.assert_allclose(g["A/1"], loads["A/1"] * 1.02, rtol=1e-4)
    np.testing.assert_allclose(g["A/4"], loads["A/4"], atol=0.02)


def test_pick_changes_rest_level_by_the_units_true_weights(tmp_path):
    src = quiet(tmp_path, duration_s=300)
    t, v, _ = drain(src)
    grams = plate_grams(src, v)
    checked = 0
    for g in src.truth:
        if g["type"] not in ("pick", "put_back"):
            continue
        for pid, d in g["plate_delta_g"].items():
            key = f"{g['shelf']}/{pid}"
            change = rest(t, grams[key], g["t_quiet"], g["t_quiet"] + 0.5) - rest(
                t, grams[key], g["t_start"] - 0.5, g["t_start"]
            )
            assert change == pytest.approx(d, abs=0.02), (g, key)
        moved = sum(g["plate_delta_g"].values())
        sign = -1 if g["type"] == "pick" else 1
        # the units' own weights, not the nominal unit weight
        assert moved == pytest.approx(sign * sum(g["unit_weights_g"]), abs=0.01)
        checked += 1
    kinds = {g["kind"] for g in src.truth}
    assert checked > 50 and {"two_plate", "multi", "put_back"} <= kinds


def test_units_vary_like_real_products(tmp_path):
    src = quiet(tmp_path, duration_s=600)
    drain(src)
    w = [x for g in src.truth if g.get("sku") == "heavy" and g["kind"] != "misplaced" for x in g["unit_weights_g"]]
    assert len(w) >= 5
    assert np.std(w) > 1.0 and all(abs(x - 780) < 100 for x in w)


def test_leans_and_presses_return_to_level(tmp_path):
    src = quiet(tmp_path, duration_s=900)
    t, v, _ = drain(src)
    grams = plate_grams(src, v)
    seen = set()
    for g in src.truth:
        if g["type"] not in ("lean", "press"):
            continue
        peak = 0.0
        for p in src.layout.shelf_plates(g["shelf"]):
            series = grams[p.key]
            before = rest(t, series, g["t_start"] - 0.5, g["t_start"])
            after = rest(t, series, g["t_quiet"], g["t_quiet"] + 0.5)
            assert after == pytest.approx(before, abs=0.02)
            sel = (t >= g["t_start"]) & (t <= g["t_quiet"])
            peak = max(peak, float(np.max(np.abs(series[sel] - before))))
        assert peak > 50, g  # it really loaded the shelf
        seen.add(g["type"])
    assert seen == {"lean", "press"}


def test_neighbours_swing_without_net_change(tmp_path):
    src = quiet(tmp_path, duration_s=300)
    t, v, _ = drain(src)
    grams = plate_grams(src, v)
    swings = []
    for g in src.truth:
        if g["type"] != "pick" or g["kind"] != "single":
            continue
        for p in src.layout.shelf_plates(g["shelf"]):
            if str(p.id) in g["plate_delta_g"]:
                continue
            before = rest(t, grams[p.key], g["t_start"] - 0.5, g["t_start"])
            after = rest(t, grams[p.key], g["t_quiet"], g["t_quiet"] + 0.5)
            assert after == pytest.approx(before, abs=0.02)
            sel = (t >= g["t_start"]) & (t <= g["t_quiet"])
            swings.append(float(np.max(np.abs(grams[p.key][sel] - before))))
    assert max(swings) > 50  # AiFi: neighbours swing 50–230 g


def test_dead_channel_flagged(tmp_path):
    cfg = make_cfg(tmp_path, dead_channels=["sim-B-2"], duration_s=10)
    src = SimSource(cfg, Layout.from_config(cfg))
    _, v, f = drain(src)
    col = src.channels.index("sim-B-2")
    assert np.all(f[:, col] == Flag.TIMEOUT) and np.all(np.isnan(v[:, col]))
    others = np.delete(f, col, axis=1)
    assert np.mean(others == 0) > 0.99
    c = src.counters()
    assert c["sim-B-2"].timeouts == len(v) and c["sim-B-2"].samples == 0
    assert c["sim-A-1"].samples > 0.99 * len(v)


def test_glitches_flagged_and_bitflips_not(tmp_path):
    cfg = make_cfg(tmp_path, glitch_rate=0.01, duration_s=60)
    src = SimSource(cfg, Layout.from_config(cfg))
    _, v, f = drain(src)
    glitched = (f & Flag.GLITCH) != 0
    assert 0.005 < glitched.mean() < 0.02
    assert np.all(np.isnan(v[glitched])) and not np.any(np.isnan(v[f == 0]))
    flips = [g for g in src.truth if g["type"] == "glitch"]
    assert flips and all(g["kind"] == "bitflip" for g in flips)
    assert sum(c.glitches for c in src.counters().values()) == int(glitched.sum())


def test_ground_truth_file_in_scorer_format(tmp_path):
    gt = tmp_path / "gt.json"
    src = SimSource(make_cfg(tmp_path, ground_truth=str(gt)), Layout.from_config(make_cfg(tmp_path)))
    t, _, _ = drain(src)
    doc = json.loads(gt.read_text())
    assert doc["time_tolerance_s"] == 3.0
    assert doc["events"] and all(e["type"] in ("pick", "put_back") for e in doc["events"])
    assert all(e["type"] in ("lean", "press", "glitch") for e in doc["non_events"])
    for e in doc["events"]:
        assert {"type", "sku", "quantity", "time", "shelf", "plates", "kind"} <= set(e)
        assert t[0] < e["t_start"] < e["time"] < e["t_end"] < t[-1] and e["quantity"] >= 1
    # an oracle that reports exactly the truth must score perfectly with the shared scorer
    score = Path(os.environ.get("GONDOLA_SHARED", ROOT.parent / "shared")) / "checks" / "score.py"
    if not score.exists():
        pytest.skip(f"shared scorer not found at {score}")
    events = tmp_path / "oracle.jsonl"
    iso = lambda x: __import__("datetime").datetime.fromtimestamp(x, __import__("datetime").timezone.utc).isoformat()  # noqa: E731
    events.write_text("".join(json.dumps({"type": e["type"], "sku": e["sku"], "quantity": e["quantity"],
                                          "t_start": iso(e["t_start"]), "t_end": iso(e["t_end"])}) + "\n"
                              for e in doc["events"]))
    out = subprocess.run([sys.executable, str(score), str(events), str(gt)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["events"]["f1"] == 1.0


def test_all_kinds_occur_and_speed_zero_runs_long_spans(tmp_path):
    src = SimSource(make_cfg(tmp_path, duration_s=1800), Layout.from_config(make_cfg(tmp_path)))
    t, _, _ = drain(src)
    assert len(t) == 1800 * 60
    kinds = {g.kind for g in src.ground_truth}
    assert {"single", "light", "multi", "two_plate", "simultaneous", "put_back", "misplaced", "lean", "press"} <= kinds
    sim = [g for g in src.truth if g["kind"] == "simultaneous"]
    # simultaneous shoppers really overlap in time on different shelves
    assert any(a["shelf"] != b["shelf"] and a["t_start"] < b["t_end"] and b["t_start"] < a["t_end"]
               for a, b in zip(sim, sim[1:]))


def test_speed_one_paces_blocks(tmp_path):
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    cfg = make_cfg(tmp_path, speed=1.0, duration_s=2)
    src = SimSource(cfg, Layout.from_config(cfg), clock=lambda: now[0], sleep=sleep)
    n = 0
    while (b := src.read(1.0)) is not None:
        n += len(b)
    assert n == 120
    assert sum(slept) == pytest.approx(2.0, abs=0.02)
    # endless sources never end
    endless = make_cfg(tmp_path, duration_s=None)
    e = SimSource(endless, Layout.from_config(endless))
    assert all(e.read(0.0) is not None for _ in range(50))
