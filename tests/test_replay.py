"""`shelfd replay` and `shelfd record`: real AiFi data, corrupt recordings, our own format."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import shelfd, validate_event, write_config


@pytest.fixture
def aifi(shared_dir):
    return shared_dir / "data" / "aifi-benchmark-1"


def test_aifi_benchmark_finds_the_one_pick(aifi, tmp_path):
    out = tmp_path / "events.jsonl"
    r = shelfd("replay", str(aifi), "--format", "aifi", "--speed", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    events = [json.loads(l) for l in out.read_text().splitlines()]
    for e in events:
        validate_event(e)
    gt = json.loads((aifi / "ground_truth.json").read_text())
    score = subprocess.run([sys.executable, str(aifi.parent.parent / "checks" / "score.py"), str(out),
                            str(aifi / "ground_truth.json")], capture_output=True, text=True, check=True)
    res = json.loads(score.stdout)
    assert res["events"]["f1"] == 1.0 and res["other_events"] == 0, (res, events)
    (e,) = events
    assert e["shelf"] == "1-5" and 11 in e["plates"] and e["quantity"] == 1
    assert e["sku"] == gt["events"][0]["sku"]
    assert abs(e["delta_g"] + 622) < 15


def test_truncated_aifi_recording_names_file_and_line(aifi, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("planogram.json", "products.json"):
        (folder / name).write_text((aifi / name).read_text())
    lines = (aifi / "plate_data.json").read_text().splitlines()
    bad_at = len(lines) - 5
    # everything up to the pick, then one line cut in the middle (a full disk, a killed copy)
    (folder / "plate_data.json").write_text("\n".join(lines[:bad_at - 1] + [lines[bad_at - 1][:500]]) + "\n")
    out = tmp_path / "events.jsonl"
    r = shelfd("replay", str(folder), "--format", "aifi", "--out", str(out))
    assert r.returncode == 65, r.stderr
    assert f"plate_data.json:{bad_at}:" in r.stderr
    assert "Traceback" not in r.stderr
    # the events found before the damage are kept
    events = [json.loads(l) for l in out.read_text().splitlines()]
    assert [e["sku"] for e in events] == ["071142008582"]


def test_missing_recording(tmp_path):
    r = shelfd("replay", str(tmp_path / "nothing"), "--format", "aifi")
    assert r.returncode == 66 and "no such file" in r.stderr


def test_record_then_replay_own_format(tmp_path):
    cfg = write_config(tmp_path / "unit.yaml", state_dir=str(tmp_path / "state"),
                       sensing={"backend": "sim", "seed": 3, "speed": 0, "events_per_min": 30,
                                "duration_s": 60})
    rec = tmp_path / "case.jsonl"
    r = shelfd("record", "--config", str(cfg), "--out", str(rec), "--duration", "60")
    assert r.returncode == 0, r.stderr
    header = json.loads(rec.read_text().splitlines()[0])
    assert header["format"] == "gondola.recording/1" and header["units"] == "counts"
    assert header["calibration"]["source"] == "sim-factory"
    out = tmp_path / "events.jsonl"
    r = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    events = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(events) >= 5
    for e in events:
        validate_event(e)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # a damaged block is reported by line, with the events before it
    lines = rec.read_text().splitlines()
    lines[len(lines) // 2] = lines[len(lines) // 2][:40]
    rec.write_text("\n".join(lines) + "\n")
    r = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 65
    assert f"case.jsonl:{len(lines) // 2 + 1}: corrupt or truncated block" in r.stderr


def test_recording_of_a_sim_unit_replays_through_its_config_switched_to_replay(tmp_path):
    """The technician's path: record a unit, then point the same config's backend at the file."""
    cfg = write_config(tmp_path / "unit.yaml", state_dir=str(tmp_path / "state"),
                       sensing={"backend": "sim", "seed": 5, "speed": 0, "events_per_min": 30,
                                "duration_s": 40})
    rec = tmp_path / "case.jsonl"
    assert shelfd("record", "--config", str(cfg), "--out", str(rec), "--duration", "40").returncode == 0
    as_sim = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(cfg))
    replay_cfg = write_config(tmp_path / "replay.yaml", state_dir=str(tmp_path / "state"),
                              sensing={"backend": "replay", "format": "shelfd", "path": str(rec), "speed": 0})
    as_replay = shelfd("replay", str(rec), "--format", "shelfd", "--config", str(replay_cfg))
    assert as_sim.returncode == 0 and as_replay.returncode == 0, as_replay.stderr
    key = lambda line: {k: v for k, v in json.loads(line).items() if k != "event_id"}  # noqa: E731
    sim_events = [key(l) for l in as_sim.stdout.splitlines()]
    assert len(sim_events) >= 3
    assert [key(l) for l in as_replay.stdout.splitlines()] == sim_events
