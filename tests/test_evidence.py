"""Evidence for a person judging an event: the weight trace in every item event, the calibration
(and each plate's last verify) in ``health``, the misplaced items the unit believes in ``state``."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from helpers import event_schema
from test_detection import FS, Shelf
from test_identification import chips_shelf

from daemon import calstate
from daemon.calstate import CalibrationState, ChannelCal
from daemon.events.identify import Identifier
from daemon.pipeline import Pipeline
from daemon.sensing.base import SampleBlock
from daemon.timefmt import parse_rfc3339

ROOT = Path(__file__).resolve().parents[1]


def _feed(shelf: Shelf, cuts=None) -> tuple[Pipeline, list[dict]]:
    """Run ``shelf``'s samples through a pipeline cut at ``cuts`` (default blocks of 12)."""
    pipe = Pipeline("s", "u", shelf.lay, shelf.lay.channels, "g", FS, None)
    cuts = list(range(12, shelf.n, 12)) if cuts is None else list(cuts)
    v = np.where(shelf.flags == 0, shelf.x, np.nan)
    out, a = [], 0
    for c in cuts + [shelf.n]:
        out += pipe.process(SampleBlock(shelf.t[a:c], v[a:c], shelf.flags[a:c]))
        a = c
    return pipe, out + pipe.finish()


def _valid(ev: dict) -> None:
    jsonschema.validate({**ev, "event_id": "01J00000000000000000000000", "seq": 1}, event_schema())


def _level(vals: list) -> float:
    return float(np.median([v for v in vals if v is not None]))


# ---------------------------------------------------------------- trace


def test_the_trace_shows_the_step_of_the_event():
    s = Shelf(16)
    s.touch("1", 1, 3.0, 1.5, 300)
    s.step("1", 1, 3.8, -622.0)                   # a pick of water
    s.touch("2", 1, 9.0, 1.0, 200)
    s.step("2", 1, 9.5, +368.0)                   # a put-back of soda (held 1 s for a press)
    _, events = _feed(s)
    assert [(e["type"], e["sku"]) for e in events] == [("pick", "water"), ("put_back", "soda")]
    for e in events:
        _valid(e)
        tr = e["trace"]
        assert list(tr["plates"]) == [str(p) for p in e["plates"]] and tr["dt_s"] == 0.1
        (vals,) = tr["plates"].values()
        assert all(round(v, 1) == v for v in vals)
        t0, t_start, t_end = (parse_rfc3339(x) for x in (tr["t0"], e["t_start"], e["t_end"]))
        # from 1 s before the activity ...
        assert t_start - 1.0 <= t0 < t_start - 0.85
        t_last = t0 + (len(vals) - 1) * tr["dt_s"]
        # ... to 1 s after it (a pick: at least its settle window, when it was decided)
        assert t_end + 0.45 <= t_last <= t_end + 1.0 + 1e-6
        before, after = _level(vals[:5]), _level(vals[-5:])
        assert abs(before - 2000.0) < 2.0                     # the level before
        assert abs(after - before - e["delta_g"]) < 2.0       # the step is the event's Δ, within noise
        assert len(json.dumps(e, separators=(",", ":"))) < 8192
    put_back = events[1]
    t_last = parse_rfc3339(put_back["trace"]["t0"]) + (len(put_back["trace"]["plates"]["1"]) - 1) * 0.1
    assert t_last > parse_rfc3339(put_back["t_end"]) + 0.9   # held past t_end + 1 s: the whole second


def _busy_shelf(seconds: float = 100.0) -> Shelf:
    """Picks, a held put-back, a two-plate item, a misplaced return, a change nothing explains,
    a change split in two and a plate that never rests (unknown_change no_rest, then a late net
    change)."""
    s = Shelf(seconds, seed=3)
    s.touch("1", 1, 2.0, 1.5, 300)
    s.step("1", 1, 2.8, -622.0)
    s.touch("1", 3, 6.0, 1.2, 150)
    s.step("1", 3, 6.6, -40.0)
    s.step("1", 4, 6.6, -22.0)
    s.touch("2", 1, 6.2, 1.0, 200)
    s.step("2", 1, 6.7, +368.0)
    s.touch("2", 3, 11.0, 1.0, 200)
    s.step("2", 3, 11.5, +622.0)                   # water on the nuts plate
    s.touch("1", 1, 15.0, 1.0, 100)
    s.step("1", 1, 15.5, -140.0)                   # fits no product
    s.touch("1", 2, 30.0, 1.2, 200)
    s.touch("1", 3, 30.0, 1.2, 80)
    s.step("1", 2, 30.6, -3 * 38.0)                # a pick beside a put-back: one change, split in two
    s.step("1", 3, 30.6, +62.0)
    c = s.col("2", 4)
    i0, i1 = int(20 * FS), int(78 * FS)
    s.x[i0:i1, c] += 300 + 60 * np.sin(np.arange(i1 - i0) / 9.0)   # swinging for 58 s
    s.x[i1:, c] += 170.0                           # ... then resting 170 g heavier
    return s


def test_the_same_samples_give_the_same_traces_however_they_are_cut():
    s = _busy_shelf()
    pipe, ref = _feed(s)
    assert {e["type"] for e in ref} == {"pick", "put_back", "unknown_change"} and pipe.stats.by_type["split_changes"]
    assert {e.get("reason") for e in ref} >= {"no_rest", "no_product_fits"} and all("trace" in e for e in ref)
    ref_s = [json.dumps(e, sort_keys=True) for e in ref]
    rng = random.Random(5)
    sizes = [rng.choice([1, 2, 5, 13, 40, 97, 600]) for _ in range(s.n)]
    cuts = {"1": range(1, s.n), "7": range(7, s.n, 7), "60": range(60, s.n, 60), "one block": [],
            "random": [int(c) for c in np.cumsum(sizes) if c < s.n]}
    for name, cut in cuts.items():
        _, got = _feed(s, cut)
        assert [json.dumps(e, sort_keys=True) for e in got] == ref_s, f"blocks of {name} differ"


def test_long_events_are_decimated_and_every_event_stays_small():
    s = _busy_shelf()
    _, events = _feed(s)
    for e in events:
        _valid(e)
        n = {len(v) for v in e["trace"]["plates"].values()}
        assert len(n) == 1 and n.pop() <= 300
        assert len(json.dumps(e, separators=(",", ":"))) < 8192
    late = [e for e in events if e["plates"] == [4] and e["shelf"] == "2" and e.get("reason") != "no_rest"]
    assert late, [(e["type"], e["shelf"], e["plates"], e.get("reason")) for e in events]
    tr = late[-1]["trace"]
    t_start, t_end = parse_rfc3339(late[-1]["t_start"]), parse_rfc3339(late[-1]["t_end"])
    assert t_end - t_start > 55 and tr["dt_s"] > 0.1 and round(tr["dt_s"] / 0.1, 6).is_integer()
    # coarser, and reaching 50 s back from its end (the put-back's hold: 1 s after t_end)
    covered = len(tr["plates"]["4"]) * tr["dt_s"]
    assert 49.5 <= covered <= 50.5 and parse_rfc3339(tr["t0"]) + covered >= t_end + 0.9


# ---------------------------------------------------------------- misplaced items in state


def test_a_misplaced_return_is_listed_in_state_until_it_is_taken_back():
    s = Shelf(22)
    s.touch("2", 3, 3.0, 1.0, 200)
    s.step("2", 3, 3.5, +622.0)                   # water put back on the nuts plate ...
    s.touch("2", 3, 15.0, 1.0, 200)
    s.step("2", 3, 15.5, -622.0)                  # ... and taken back off it (a shopper, the staff)
    half = int(12 * FS)
    pipe = Pipeline("s", "u", s.lay, s.lay.channels, "g", FS, None)
    v = np.where(s.flags == 0, s.x, np.nan)
    events = []
    for a in range(0, half, 12):
        events += pipe.process(SampleBlock(s.t[a:a + 12], v[a:a + 12], s.flags[a:a + 12]))
    assert [(e["type"], e["sku"], e["misplaced"]) for e in events] == [("put_back", "water", True)]
    assert pipe.state_changed
    doc = pipe.inventory()
    assert doc["misplaced"] == [{"sku": "water", "shelf": "2", "plates": [3], "units": 1}]
    json.dumps(doc)
    pipe.state_changed = False
    for a in range(half, s.n, 12):
        events += pipe.process(SampleBlock(s.t[a:a + 12], v[a:a + 12], s.flags[a:a + 12]))
    events += pipe.finish()
    assert [(e["type"], e["sku"], e.get("arrangement")) for e in events][1:] == [("pick", "water", "stray")]
    assert pipe.state_changed and pipe.inventory()["misplaced"] == []


def test_known_strays_are_read_only_grouped_by_plates_and_forgotten_after_the_window():
    ident = Identifier(chips_shelf())
    assert ident.known_strays() == []
    ident.observe({"type": "put_back", "sku": "popcorn", "quantity": 1, "shelf": "1", "plates": [3, 4],
                   "misplaced": True}, now=5.0)
    ident.observe({"type": "put_back", "sku": "popcorn", "quantity": 2, "shelf": "1", "plates": [6],
                   "misplaced": True}, now=6.0)
    got = ident.known_strays()
    assert [(k.sku, k.shelf, k.plates, k.units) for k in got] == [("popcorn", "1", (3, 4), 1),
                                                                  ("popcorn", "1", (6,), 2)]
    got.clear()                                    # a copy: the identifier's memory is untouched
    assert len(ident.known_strays()) == 2
    r = ident.identify("1", [6], -110.0, 0.8, plate_deltas={6: -110.0}, now=10.0)
    assert (r.best.sku, r.best.arrangement) == ("popcorn", "stray")   # reading changed nothing
    assert len(ident.known_strays()) == 2
    ident.observe({"type": "pick", "sku": "popcorn", "quantity": 1, "shelf": "1", "plates": [6]}, now=10.0)
    assert [(k.plates, k.units) for k in ident.known_strays()] == [((3, 4), 1), ((6,), 1)]
    assert [k.plates for k in ident.known_strays(now=5.5 + 4 * 3600)] == [(6,)]   # (3, 4) too old
    assert ident.known_strays(now=6.5 + 4 * 3600) == []                         # beyond the stray window


# ---------------------------------------------------------------- calibration in health


def _cal() -> CalibrationState:
    return CalibrationState("u1", {"c11": ChannelCal(100.0, 2.0)}, calibration_id="01JCAL", technician="ana",
                            created="2026-01-04T08:00:05+00:00", source="shelfcal")


def test_health_carries_the_calibration_and_each_plates_last_verify(tmp_path):
    from calibration.guided import LOG
    assert calstate.VERIFY_LOG == LOG             # the daemon reads shelfcal's log without importing it
    assert calstate.health_block(tmp_path, None) == {"calibration_id": None, "created": None,
                                                     "technician": None, "source": None, "last_verify": {}}
    log = tmp_path / LOG
    lines = [
        {"time": "2026-01-04T08:01:00+00:00", "kind": "tare", "plate": "1/1"},
        {"time": "2026-01-04T08:02:00+00:00", "kind": "verify", "plate": "1/1", "mass_g": 500, "read_g": 507.1,
         "error_g": 7.1, "tolerance_g": 2.0, "pass": False, "calibration_id": "01JOLD", "technician": "ana"},
        {"time": "2026-01-04T08:03:00+00:00", "kind": "verify", "plate": "1/1", "mass_g": 500, "read_g": 500.4,
         "error_g": 0.4, "tolerance_g": 2.0, "pass": True, "calibration_id": "01JCAL", "technician": "ana"},
        {"time": "2026-01-04T08:04:00+00:00", "kind": "verify", "plate": "1/2", "pass": "yes"},  # corrupt
    ]
    log.write_bytes(("\n".join(json.dumps(x) for x in lines) + "\n{not json\n[1, 2]\n\xff\xfe\n").encode("latin-1"))
    block = calstate.health_block(tmp_path, _cal())
    assert block == {
        "calibration_id": "01JCAL", "created": "2026-01-04T08:00:05.000Z", "technician": "ana",
        "source": "shelfcal",
        "last_verify": {"1/1": {"time": "2026-01-04T08:03:00.000Z", "pass": True, "mass_g": 500,
                                "read_g": 500.4, "calibration_id": "01JCAL"}}}
    schema = json.loads((ROOT / "daemon" / "schemas" / "health.schema.json").read_text())
    jsonschema.validate({"outbox": {"depth": 0, "oldest_pending_age_s": None}, "calibration": block}, schema)
    # a new verify is read (the file changed); an unchanged file is not parsed again
    with open(log, "a") as fh:
        fh.write(json.dumps({"time": "2026-01-04T09:00:00+00:00", "kind": "verify", "plate": "1/2",
                             "pass": False, "read_g": 480.0}) + "\n")
    st = log.stat()
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert calstate.last_verifies(tmp_path)["1/2"] == {"time": "2026-01-04T09:00:00.000Z", "pass": False,
                                                       "read_g": 480.0}
    calstate.last_verifies(tmp_path)["1/2"]["pass"] = True   # callers get copies
    assert calstate.last_verifies(tmp_path)["1/2"]["pass"] is False
    log.unlink()
    assert calstate.last_verifies(tmp_path) == {}
    log.mkdir()                                   # unreadable as a file: no verifies, no crash
    assert calstate.last_verifies(tmp_path) == {}


@pytest.mark.integration
def test_a_running_unit_publishes_traces_calibration_and_misplaced(tmp_path, mosquitto, subscriber_factory):
    import subprocess
    import sys

    from helpers import REPO, validate_event, write_config
    state = tmp_path / "state"
    state.mkdir()
    (state / calstate.VERIFY_LOG).write_text(json.dumps(
        {"time": "2026-01-04T08:03:00+00:00", "kind": "verify", "plate": "1/1", "mass_g": 500.0,
         "read_g": 500.4, "pass": True, "calibration_id": "x"}) + "\n")
    cfg = write_config(tmp_path / "unit.yaml", state_dir=str(state), mqtt__port=mosquitto.port,
                       mqtt__health_interval_s=1,
                       sensing={"backend": "sim", "seed": 5, "speed": 0, "events_per_min": 40, "duration_s": 90})
    prefix = "gondola/v1/demo-store/sim-unit-1"
    sub = subscriber_factory(mosquitto, f"{prefix}/#")
    p = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, timeout=90)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    sub.wait_for(1, 5, where=lambda m: m.topic.endswith("/status") and m.json()["state"] == "stopped")
    events = [m.json() for m in sub.messages if m.topic.endswith("/events")]
    assert len(events) >= 10
    for e in events:
        validate_event(e)
        assert set(e["trace"]["plates"]) == {str(p) for p in e["plates"]}
        assert len(json.dumps(e, separators=(",", ":"))) < 8192
    health = [m.json() for m in sub.messages if m.topic.endswith("/health")][-1]
    cal = health["calibration"]
    assert cal["source"] == "sim-factory" and cal["calibration_id"]
    assert cal["last_verify"] == {"1/1": {"time": "2026-01-04T08:03:00.000Z", "pass": True, "mass_g": 500.0,
                                          "read_g": 500.4, "calibration_id": "x"}}
    state_doc = [m.json() for m in sub.messages if m.topic.endswith("/state")][-1]
    assert isinstance(state_doc["misplaced"], list)
    for item in state_doc["misplaced"]:
        assert set(item) == {"sku", "shelf", "plates", "units"} and item["units"] >= 1
