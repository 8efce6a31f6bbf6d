"""Fusion of camera and weight, through the real pipeline, the real sim camera and a real TFLite
model (the shared MobileNet v1 embedding extractor with a gallery enrolled from rendered crops),
plus the daemon and CLI paths: `shelfd check` on a bad model, record/replay with frames, capture,
and the health camera block over a real Mosquitto."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, shelfd
from helpers import validate_event as _validate

from daemon.config import parse_config
from daemon.events.fusion import VisionEvidence, vision_block
from daemon.events.identify import ELSEWHERE, Identifier
from daemon.layout import Layout, Placement, Plate
from daemon.pipeline import run_offline
from daemon.sensing.sim import SimSource
from daemon.vision.capture import CaptureStore
from daemon.vision.engine import VisionResult, fit_temperature
from daemon.vision.setup import build_vision
from daemon.vision.sim_camera import enroll_sim_gallery


def validate_event(e: dict, _n=[0]) -> None:  # noqa: B006 - a counter across calls, on purpose
    """Pipeline events get event_id and seq from the outbox; give them what it would."""
    from ulid import ULID
    _n[0] += 1
    _validate({"event_id": str(ULID()), "seq": _n[0], **e})

SIDECAR = REPO / "models" / "coral" / "mobilenet_v1_1.0_224_quant_embedding_extractor.json"
A, B, C = "300000000001", "300000000002", "300000000003"   # A, B: same weight, one plate
H = "300000000008"                                         # same weight as A, B; other shelf


@pytest.fixture(scope="module")
def embedder(shared_dir):
    p = shared_dir / "models" / "coral" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    if not p.exists():
        pytest.skip(f"{p} missing")
    return p


def unit(tmp_path: Path, embedder: Path, script_rows=None, **over) -> dict:
    sensing = {"backend": "sim", "seed": 4, "speed": 0, "glitch_rate": 0.0, "noise_g": 0.7}
    if script_rows is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        script = tmp_path / "script.jsonl"
        script.write_text("".join(json.dumps(r) + "\n" for r in script_rows))
        sensing["script"] = str(script)
        sensing["duration_s"] = script_rows[-1]["t"] + 10
    d = {"version": 1, "unit_id": "vis-1", "store_id": "test", "state_dir": str(tmp_path / "state"),
         "sensing": sensing,
         "shelves": [{"id": "1", "plates": [{"id": 1}, {"id": 2}]}, {"id": "2", "plates": [{"id": 1}]}],
         "planogram": [
             {"sku": A, "shelf": "1", "plates": [1], "unit_weight_g": 250, "stock": 8},
             {"sku": B, "shelf": "1", "plates": [1], "unit_weight_g": 250, "stock": 8},
             {"sku": C, "shelf": "1", "plates": [2], "unit_weight_g": 410, "stock": 8},
             {"sku": H, "shelf": "2", "plates": [1], "unit_weight_g": 250, "stock": 8}],
         "camera": {"type": "sim", "width": 480, "height": 360, "fps": 5},
         "vision": {"product_model": str(embedder), "product_sidecar": str(SIDECAR)}}
    for k, v in over.items():
        d[k] = v
    return d


SCRIPT = [  # picks and put-backs of the equal-weight pair, a misplaced return, a separable pick
    {"t": 4, "type": "pick", "shelf": "1", "sku": A}, {"t": 12, "type": "pick", "shelf": "1", "sku": B},
    {"t": 20, "type": "put_back", "shelf": "1", "sku": B}, {"t": 28, "type": "pick", "shelf": "1", "sku": B},
    {"t": 36, "type": "put_back", "shelf": "2", "sku": A, "plates": [1]},
    {"t": 44, "type": "pick", "shelf": "1", "sku": C}, {"t": 52, "type": "pick", "shelf": "1", "sku": A},
]


def run_unit(d: dict, *, offline=True, enroll=4, deadline_s=None):
    cfg = parse_config(d)
    layout = Layout.from_config(cfg)
    src = SimSource(cfg, layout)
    vis = build_vision(cfg, layout, src, offline=offline)
    if enroll:
        enroll_sim_gallery(vis.engine.product_model, sorted(layout.skus), enroll, geom=vis.runner.source.geom)
        vis.engine.calibrate()
    vis.start()
    kw = vis.pipeline_kwargs()
    if deadline_s is not None:
        kw["vision_deadline_s"] = deadline_s
    events: list[dict] = []
    run_offline(cfg, src, layout, events.append, vision=kw)
    vis.stop()
    return events, src, vis


# ---------------------------------------------------------------- the fusion maths


def small_layout():
    plates = [Plate("1", 1, 0, ("c1",)), Plate("1", 2, 1, ("c2",)), Plate("2", 1, 2, ("c3",))]
    return Layout(plates, [Placement(A, "1", (1,), 250.0, 6.0), Placement(B, "1", (1,), 250.0, 6.0),
                           Placement(C, "1", (2,), 410.0, 8.0), Placement(H, "2", (1,), 250.0, 6.0)])


def result(skus=None, action=None):
    return VisionResult("ok", action=action, skus=skus, models={"product": "ab" * 32})


def test_camera_decides_between_equal_weights_but_cannot_overrule_weight():
    ident = Identifier(small_layout())
    w = ident.identify("1", [1], -251.0, 1.0)
    assert {w.best.sku, w.candidates[0].sku} == {A, B} and abs(w.confidence - 0.5) < 0.02
    ev = VisionEvidence(result({A: 0.02, B: 0.97, C: 0.005, H: 0.005}), -251.0)
    f = ident.identify("1", [1], -251.0, 1.0, [ev])
    assert f.best.sku == B and f.confidence > 0.9
    # 410 g taken: the camera's certainty that it was A (250 g) cannot beat the weight
    sure_a = VisionEvidence(result({A: 0.999999, B: 1e-7, C: 1e-7, H: 1e-7}), -410.0)
    f2 = ident.identify("1", [2], -410.0, 1.0, [sure_a])
    assert f2.best.sku == C and f2.confidence > 0.7     # less sure: the evidence conflicts
    # the camera's weight on any hypothesis is bounded by tau * ln(1/floor)
    bound = 0.9 * math.log(1e5)
    assert sure_a(A, 1) - sure_a(C, 1) <= bound + 1e-9


def test_camera_can_name_a_misplaced_return_of_the_same_weight():
    ident = Identifier(small_layout())
    w = ident.identify("2", [1], +250.0, 1.0)
    assert w.best.sku == H and not w.best.misplaced          # weight + planogram: the plate's own
    ev = VisionEvidence(result({A: 0.999, B: 1e-4, C: 1e-6, H: 1e-6}), +250.0)
    f = ident.identify("2", [1], +250.0, 1.0, [ev])
    assert f.best.sku == A and f.best.misplaced
    assert 0.9 * math.log(1e5) > -ELSEWHERE + math.log(8)    # why the defaults allow it (a swap)


def test_action_scores_weigh_against_no_change_and_unknown_skus_are_neutral():
    ev = VisionEvidence(result({A: 0.9, B: 0.1}, {"pick": 0.1, "put_back": 0.0, "no_change": 0.9, "swap": 0.0}), -250)
    assert ev(None, 0) > ev(A, 1) - ev._sku_ll[A]           # "none of these" helped by no_change
    assert ev(C, 1) == ev._move_ll + 0.9 * math.log(0.5)    # C not enrolled: the model's uniform
    # an action model sure that nothing moved cannot undo a clear 410 g change
    ident = Identifier(small_layout())
    doubt = VisionEvidence(result(None, {"pick": 0.0, "put_back": 0.0, "no_change": 1.0, "swap": 0.0}), -410.0)
    f = ident.identify("1", [2], -410.0, 1.0, [doubt])
    assert f.best.sku == C and f.confidence > 0.99
    block = vision_block(result({A: 0.9, B: 0.1}, {"pick": 0.7, "put_back": 0.1, "no_change": 0.1, "swap": 0.1}))
    assert block["action"] == "pick" and block["skus"][0] == {"sku": A, "score": 0.9}


def test_temperature_fit_follows_separability():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    def gallery(spread):
        E = np.concatenate([c + spread * rng.normal(size=(6, 16)) for c in centres])
        return E / np.linalg.norm(E, axis=1, keepdims=True), [s for s in "abc" for _ in range(6)]
    sharp = fit_temperature(*gallery(0.05))
    blurry = fit_temperature(*gallery(2.0))
    assert sharp is not None and blurry is not None and sharp < blurry
    assert fit_temperature(*gallery(0.1)[:1], ["a"] * 18) is None
    from daemon.vision.engine import Verifier
    E, labels = gallery(0.3)
    v = Verifier.fit(E, labels)
    assert v is not None and v.same[0] > v.diff[0]
    probe = centres[1] / np.linalg.norm(centres[1])
    sims = {k: float(max(probe @ E[i] for i in range(len(labels)) if labels[i] == k)) for k in "abc"}
    sc = v.scores(sims)
    assert max(sc, key=sc.get) == "b" and sc["b"] > 0.9


# ---------------------------------------------------------------- the pipeline with a real model


def test_sim_unit_with_camera_names_equal_weight_and_misplaced_items(tmp_path, embedder):
    events, src, vis = run_unit(unit(tmp_path, embedder, SCRIPT))
    truth = [r for r in src.truth if r["type"] in ("pick", "put_back")]
    items = [e for e in events if e["type"] in ("pick", "put_back")]
    assert len(items) == len(truth) == len(SCRIPT)
    right = 0
    for e, t in zip(items, truth):
        validate_event(e)
        assert e["vision"]["status"] == "ok" and not e["weight_only"]
        assert e["vision"]["models"]["product"] == vis.engine.product_model.sha256
        right += e["sku"] == t["sku"] and e["type"] == t["type"]
    assert right == len(truth), [(e["sku"], t["sku"]) for e, t in zip(items, truth)]
    assert items[4]["misplaced"] and items[4]["sku"] == A     # the misplaced return, named
    h = vis.health()
    assert h["camera"]["frames"] > 250 and h["vision"]["ok"] == len(items)
    assert h["vision"]["inference_ms_mean"] > 0


def test_slow_or_missing_camera_leaves_weight_only_events(tmp_path, embedder):
    # a deadline of 0 ms: no event waits for vision, every one goes out weight-only, flagged
    events, _, vis = run_unit(unit(tmp_path / "a", embedder, SCRIPT[:3]), offline=False, enroll=0,
                              deadline_s=0.0)
    items = [e for e in events if e["type"] in ("pick", "put_back")]
    assert len(items) == 3
    for e in items:
        validate_event(e)
        assert e["weight_only"] and e["vision"]["status"] in ("timeout", "ok")
    assert sum(e["vision"]["status"] == "timeout" for e in items) >= 2
    # a USB camera that is not there: the runner keeps retrying, events say "unavailable"
    d = unit(tmp_path / "b", embedder, SCRIPT[:2])
    d["camera"] = {"type": "v4l2", "device": str(tmp_path / "video9"), "width": 320, "height": 240}
    events, _, vis = run_unit(d, offline=False, enroll=0)
    items = [e for e in events if e["type"] in ("pick", "put_back")]
    assert len(items) == 2
    for e in items:
        validate_event(e)
        assert e["weight_only"] and e["vision"]["status"] == "unavailable"
    assert vis.health()["camera"]["errors"] >= 1
    assert any("camera" in r for r in vis.degraded_reasons())


def test_capture_saves_labelled_crops_within_limits(tmp_path, embedder):
    d = unit(tmp_path, embedder, SCRIPT[:6])
    d["vision"]["capture"] = {"enabled": True, "min_confidence": 0.99, "max_mb": 50}
    events, _, vis = run_unit(d, enroll=3)
    cap = tmp_path / "state" / "vision" / "capture"
    rows = [json.loads(line) for line in (cap / "index.jsonl").read_text().splitlines()]
    # only events weight alone was sure of: C's pick and H-plate return; not the A/B coin flips
    assert rows and all(r["weight_confidence"] >= 0.99 for r in rows)
    assert {r["sku"] for r in rows} <= {C, H, A}
    for r in rows:
        assert (cap / r["files"]["before"]).exists() and (cap / r["files"]["item"]).exists()
    # the size limit prunes oldest first
    store = CaptureStore(cap, max_mb=0.0001)
    store._prune()
    assert store.usage_bytes() <= 100 and store.pruned > 0


# ---------------------------------------------------------------- CLI and daemon


def test_check_names_a_bad_model_file(tmp_path, embedder):
    d = unit(tmp_path, embedder)
    bad = tmp_path / "action.tflite"
    bad.write_bytes(b"\x00" * 64)
    (tmp_path / "action.json").write_text(json.dumps({
        "schema": "gondola.model/1", "role": "action", "labels": ["pick", "put_back", "no_change"],
        "input": {"shape": [1, 64, 64, 6], "dtype": "uint8"}}))
    d["vision"]["action_model"] = str(bad)
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(yaml.safe_dump(d))
    r = shelfd("check", "--config", str(cfg))
    assert r.returncode == 78
    assert f"vision.action_model: {bad}: not a TFLite flatbuffer" in r.stderr
    d["vision"]["action_model"] = str(tmp_path / "missing.tflite")
    cfg.write_text(yaml.safe_dump(d))
    r = shelfd("check", "--config", str(cfg))
    assert r.returncode == 78 and "vision.action_model: file not found" in r.stderr
    del d["vision"]["action_model"]
    cfg.write_text(yaml.safe_dump(d))
    r = shelfd("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_record_then_replay_runs_the_camera_path(tmp_path, embedder):
    d = unit(tmp_path, embedder, SCRIPT[:3])
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(yaml.safe_dump(d))
    rec = tmp_path / "case.jsonl"
    r = shelfd("record", "--config", str(cfg), "--out", str(rec), "--duration", "40")
    assert r.returncode == 0, r.stderr
    assert "camera frames" in r.stderr and (tmp_path / "case.jsonl.frames").exists()
    # enrol the products into the unit's gallery (what shelfcal does with photos)
    layout = Layout.from_config(parse_config(d))
    src = SimSource(parse_config(d), layout)
    vis = build_vision(parse_config(d), layout, src, offline=True)
    enroll_sim_gallery(vis.engine.product_model, sorted(layout.skus), 3, geom=vis.runner.source.geom)
    out = tmp_path / "events.jsonl"
    r = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    evs = [json.loads(line) for line in out.read_text().splitlines()]
    items = [e for e in evs if e["type"] in ("pick", "put_back")]
    assert [e["sku"] for e in items] == [A, B, B]
    for e in items:
        validate_event(e)
        assert e["vision"]["status"] == "ok" and e["vision"]["skus"][0]["sku"] == e["sku"]


@pytest.mark.integration
def test_daemon_reports_the_camera_in_health(tmp_path, embedder, mosquitto, subscriber_factory):
    d = unit(tmp_path, embedder)
    d["sensing"].update(speed=1.0, events_per_min=30, duration_s=6)
    d["mqtt"] = {"host": "127.0.0.1", "port": mosquitto.port, "health_interval_s": 1}
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(yaml.safe_dump(d))
    sub = subscriber_factory(mosquitto, "gondola/v1/test/vis-1/#")
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                         stderr=open(tmp_path / "log", "w"), stdout=subprocess.DEVNULL)
    try:
        assert p.wait(60) == 0, (tmp_path / "log").read_text()
    finally:
        if p.poll() is None:
            p.kill()
    health = [m.json() for m in sub.wait_for(1, 5, where=lambda m: m.topic.endswith("/health"))
              if m.topic.endswith("/health")]
    cam = health[-1]["camera"]
    assert cam["frames"] >= 20 and cam["rejected"] == 0 and cam["restarts"] == 0
    assert cam["vision"]["models"]["product"] and "inference_ms_mean" in cam["vision"]
    assert json.loads((tmp_path / "state" / "camera.json").read_text())["rois"]["1/1"]
    import jsonschema
    jsonschema.validate(health[-1], json.loads((REPO / "daemon" / "schemas" / "health.schema.json").read_text()))


@pytest.mark.integration
def test_daemon_without_its_camera_keeps_publishing_weight_only(tmp_path, embedder, mosquitto,
                                                                subscriber_factory):
    d = unit(tmp_path, embedder, [{"t": 2, "type": "pick", "shelf": "1", "sku": A, "dur": 1.2},
                                  {"t": 6, "type": "pick", "shelf": "1", "sku": C, "dur": 1.2}])
    d["sensing"].update(speed=1.0, duration_s=30)
    d["camera"] = {"type": "v4l2", "device": str(tmp_path / "video7"), "width": 320, "height": 240}
    d["mqtt"] = {"host": "127.0.0.1", "port": mosquitto.port, "health_interval_s": 1}
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(yaml.safe_dump(d))
    sub = subscriber_factory(mosquitto, "gondola/v1/test/vis-1/#")
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                         stderr=open(tmp_path / "log", "w"), stdout=subprocess.DEVNULL)
    try:
        evs = sub.wait_for(2, 30, where=lambda m: m.topic.endswith("/events"))
        degraded = sub.wait_for(1, 5, where=lambda m: m.topic.endswith("/status") and m.json()["state"] == "degraded")
        health = sub.wait_for(1, 5, where=lambda m: m.topic.endswith("/health")
                              and m.json()["camera"]["errors"] >= 1)
    finally:
        p.terminate()
        p.wait(15)
    assert "camera" in degraded[-1].json()["reason"]
    for m in evs:
        e = m.json()
        if m.topic.endswith("/events"):
            _validate(e)
            assert e["weight_only"] and e["vision"]["status"] == "unavailable"
    cam = health[-1].json()["camera"]
    assert cam["state"] in ("restarting", "starting") and "video7" in cam["last_error"]
    assert p.returncode == 0


def test_shipped_action_model_joins_the_vision_block(tmp_path, embedder):
    from daemon.vision.models import DEFAULT_ACTION_MODEL
    assert DEFAULT_ACTION_MODEL.exists(), f"{DEFAULT_ACTION_MODEL}: the shipped action model is missing"
    d = unit(tmp_path, embedder, SCRIPT[:4])
    d["vision"]["action_model"] = str(DEFAULT_ACTION_MODEL)
    events, src, vis = run_unit(d, enroll=3)
    items = [e for e in events if e["type"] in ("pick", "put_back")]
    assert [e["sku"] for e in items] == [A, B, B, B]
    for e in items:
        validate_event(e)
        v = e["vision"]
        assert v["models"]["action"] == vis.engine.action_model.sha256
        assert set(v["action_scores"]) == {"pick", "put_back", "no_change", "swap"}
        assert abs(sum(v["action_scores"].values()) - 1) < 0.01
    # the model sees the direction of most changes (it is never allowed to decide it)
    agree = sum(e["vision"]["action"] in (e["type"], "swap") for e in items)
    assert agree >= 3
