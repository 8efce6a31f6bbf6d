"""shelfcal's other tools and its crash safety: planogram edits, unit-weight measuring, report,
camera ROIs, the guided (interactive) calibration on a terminal, and SIGKILL during the write."""
from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_shelfcal import REPO, cal_doc, make_unit, ok, place, shelfcal, truth

from daemon import calstate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# ---------------------------------------------------------------- planogram


def test_planogram_edits_keep_comments_and_refuse_invalid_configs(tmp_path):
    cfg = make_unit(tmp_path, factory=True)
    ok(shelfcal(cfg, "planogram", "set", "--sku", "B2", "--shelf", "1", "--plates", "2", "--unit-weight-g", "38",
                "--name", "Chips"))
    text = cfg.read_text()
    assert text.startswith("# a unit for shelfcal tests")
    shown = json.loads(ok(shelfcal(cfg, "planogram", "show", "--json")).stdout)
    assert {"sku": "B2", "name": "Chips", "shelf": "1", "plates": [2], "unit_weight_g": 38.0} in shown

    r = ok(
        shelfcal(cfg, "planogram", "set", "--sku", "B2", "--shelf", "1", "--plates", "9", "--unit-weight-g", "38"), 65
    )
    assert "shelf '1' has no plate 9" in r.stderr and cfg.read_text() == text
    ok(shelfcal(cfg, "planogram", "set", "--sku", "B2", "--shelf", "1", "--plates", "2", "--unit-weight-g", "0"), 64)
    ok(shelfcal(cfg, "planogram", "remove", "--sku", "NOPE"), 64)
    ok(shelfcal(cfg, "planogram", "remove", "--sku", "B2"))
    assert [p["sku"] for p in yaml.safe_load(cfg.read_text())["planogram"]] == ["A1"]


def test_measure_unit_weight_writes_it_to_the_planogram(tmp_path):
    cfg = make_unit(tmp_path, factory=True)
    ok(shelfcal(cfg, "tare", "--plate", "1/1", "--yes"))
    place(cfg, "1/1", 5 * 61.3)  # five items of 61.3 g
    out = ok(shelfcal(cfg, "planogram", "measure", "--plate", "1/1", "--count", "5", "--sku", "A1", "--yes")).stdout
    assert "unit weight" in out
    w = yaml.safe_load(cfg.read_text())["planogram"][0]["unit_weight_g"]
    assert abs(w - 61.3) < 0.5, w
    ok(shelfcal(cfg, "planogram", "measure", "--plate", "1/1", "--count", "0", "--yes"), 64)
    ok(shelfcal(cfg, "planogram", "measure", "--plate", "1/1", "--count", "2", "--sku", "ZZ", "--yes"), 64)


def test_planogram_show_reports_what_the_unit_learned_and_a_drift(tmp_path):
    from daemon.events.unit_weights import WeightBook

    cfg = make_unit(tmp_path, factory=True)
    entry = yaml.safe_load(cfg.read_text())["planogram"][0]
    state = (cfg.parent / yaml.safe_load(cfg.read_text())["state_dir"]).resolve()  # relative to the config
    state.mkdir(parents=True, exist_ok=True)
    book = WeightBook({entry["sku"]: (float(entry["unit_weight_g"]), 1.5, False)}, state / "unit_weights.json")
    for _ in range(300):   # the unit's events say it weighs 30 % more: held at the limit, flagged
        book.learn(entry["sku"], 1.3 * entry["unit_weight_g"], 1, 0.5)
    book.save()
    shown = json.loads(ok(shelfcal(cfg, "planogram", "show", "--json")).stdout)
    learned = shown[0]["learned"]
    assert learned["n"] == 300 and learned["drift"] is True
    assert abs(learned["mean_g"] - 1.12 * entry["unit_weight_g"]) < 0.01
    assert "DRIFT" in ok(shelfcal(cfg, "planogram", "show")).stdout
    # a weighed entry replaces the catalogue value: what was learned from the old one no longer shows
    ok(shelfcal(cfg, "planogram", "set", "--sku", entry["sku"], "--shelf", str(entry["shelf"]),
                "--plates", ",".join(map(str, entry["plates"])), "--unit-weight-g", "77"))
    assert "learned" not in json.loads(ok(shelfcal(cfg, "planogram", "show", "--json")).stdout)[0]


# ---------------------------------------------------------------- report and camera


def test_report_writes_plots_and_a_summary(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = make_unit(tmp_path, factory=True)
    place(cfg, "1/1", 700)
    ok(shelfcal(cfg, "verify", "--plate", "1/1", "--mass-g", "700", "--yes"))
    out = tmp_path / "report"
    ok(shelfcal(cfg, "report", "--out", str(out), "--seconds", "2"))
    summary = (out / "summary.txt").read_text()
    assert cal_doc(cfg)["calibration_id"] in summary
    assert "plate 1/1" in summary and "PASS" in summary and "plate 1/2" in summary
    # the factory calibration has 2 points (zero and one mass): its residuals are 0 by construction
    assert "points 0 g, 1000 g," in summary and "2 points: no residual to show" in summary
    assert "max |residual|" not in summary
    for key in ("1-1", "1-2", "1-3", "1-4"):
        png = out / f"plate-{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # without matplotlib (it is an optional extra) the summary is still written, with a clear hint
    bare = tmp_path / "bare"
    code = (
        "import sys; sys.modules['matplotlib'] = None; from calibration.cli import main; "
        f"sys.argv = ['shelfcal', '--config', {str(cfg)!r}, 'report', '--out', {str(bare)!r}, '--seconds', '1']; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "matplotlib is not installed" in r.stderr, r.stderr
    assert (bare / "summary.txt").exists() and not list(bare.glob("*.png"))


def test_camera_snapshot_and_rois(tmp_path):
    pytest.importorskip("daemon.vision.rois")
    cfg = make_unit(tmp_path, factory=True)
    doc = yaml.safe_load(cfg.read_text())
    doc["camera"] = {"type": "sim", "width": 320, "height": 240}
    cfg.write_text(yaml.safe_dump(doc))
    ok(shelfcal(cfg, "camera", "set", "--plate", "1/1", "--roi", "0.5,0.1,0.2,0.9"), 64)  # x1 < x0
    ok(shelfcal(cfg, "camera", "set", "--plate", "1/1", "--roi", "0.1,0.1,0.3"), 64)
    ok(shelfcal(cfg, "camera", "set", "--suggested"))
    ok(shelfcal(cfg, "camera", "set", "--plate", "1/1", "--roi", "0.05,0.1,0.25,0.9"))
    from daemon.vision.rois import load_rois
    rois = load_rois(tmp_path / "state", "cal-unit-1")
    assert set(rois) == {"1/1", "1/2", "1/3", "1/4"} and rois["1/1"] == (0.05, 0.1, 0.25, 0.9)
    assert (tmp_path / "state" / "camera.prev.json").exists()
    png = tmp_path / "snap.png"
    out = ok(shelfcal(cfg, "camera", "snapshot", "--out", str(png))).stdout
    assert "4 ROI(s)" in out
    from PIL import Image
    im = Image.open(png)
    assert im.size == (320, 240)
    # the 1/1 ROI outline is drawn in green where the ROI says
    px = im.convert("RGB").getpixel((int(0.05 * 320) + 1, 120))
    assert px[1] > 200 and px[0] < 100, px


# ---------------------------------------------------------------- the guided session on a terminal


def _expect(fd: int, pattern: str, buf: list[str], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = "".join(buf)
        m = re.search(pattern, text)
        if m:
            del buf[:]
            buf.append(text[m.end():])
            return text[:m.end()]
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in:\n{text[-2000:]}"
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            try:
                buf.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:
                pass


def test_guided_calibration_on_a_terminal(tmp_path):
    cfg = make_unit(tmp_path, factory=False)
    pid, fd = pty.fork()
    if pid == 0:  # the child: shelfcal on a terminal, as a technician runs it
        os.chdir(REPO)
        os.environ["COLUMNS"] = "100"
        os.execv(sys.executable, [sys.executable, "-m", "calibration.cli", "--config", str(cfg), "calibrate",
                                  "--plate", "1/1", "--technician", "bo"])
    buf: list[str] = []
    screen = []
    try:
        screen.append(_expect(fd, r"Empty plate 1/1.*press Enter", buf))
        os.write(fd, b"\n")
        screen.append(_expect(fd, r"Known mass in grams", buf))
        os.write(fd, b"abc\n")
        screen.append(_expect(fd, r"not a number", buf))
        screen.append(_expect(fd, r"Known mass in grams", buf))
        os.write(fd, b"500\n")
        screen.append(_expect(fd, r"Place 500 g.*press Enter", buf))
        os.write(fd, b"\n")
        screen.append(_expect(fd, r"Enter when done", buf))
        os.write(fd, b"500\n")   # same mass again
        screen.append(_expect(fd, r"same as the 500 g point", buf))
        screen.append(_expect(fd, r"Enter when done", buf))
        os.write(fd, b"1500\n")
        screen.append(_expect(fd, r"Place 1500 g.*press Enter", buf))
        os.write(fd, b"\n")
        screen.append(_expect(fd, r"Enter when done", buf))
        os.write(fd, b"\n")
        screen.append(_expect(fd, r"Write this calibration for plate 1/1\?", buf))
        os.write(fd, b"y\n")
        screen.append(_expect(fd, r"written by bo", buf))
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = "".join(screen)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "implied capacity" in text and "residual" in text
    ch = cal_doc(cfg)["channels"]["sim-1-1"]
    assert [p[0] for p in ch["points"]] == [0.0, 500.0, 1500.0]
    assert abs(ch["scale"] / truth(cfg).channels["sim-1-1"].scale - 1) < 0.003
    (tmp_path / "screens.txt").write_text(text)


# ---------------------------------------------------------------- SIGKILL during the write


WRITER = r"""
import sys
from daemon import calstate
from daemon.calstate import ChannelCal
state_dir, k = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while True:
    k += 1
    # a version is self-consistent: every channel's offset is k and its scale k + 0.5
    chans = {f"ch{i}": ChannelCal(float(k), k + 0.5, [[0.0, float(k)], [1000.0, k + 1000 * (k + 0.5)]])
             for i in range(40)}
    calstate.update(state_dir, "kill-unit", chans, technician="loop")
"""


def _check_intact(state: Path) -> int:
    cal = calstate.load(state, "kill-unit")  # raises on a corrupt or half-written file
    assert cal is not None
    ks = {c.offset for c in cal.channels.values()}
    assert len(ks) == 1 and len(cal.channels) == 40, "a mix of two versions"
    k = ks.pop()
    assert all(c.scale == k + 0.5 for c in cal.channels.values())
    prev = state / calstate.PREVIOUS
    if prev.exists():
        p = calstate.CalibrationState.from_json(json.loads(prev.read_text()), str(prev))
        assert {c.offset for c in p.channels.values()} <= {k - 1, k - 2, k}
    return int(k)


def test_sigkill_at_random_instants_never_leaves_a_broken_calibration(tmp_path):
    rng = random.Random(4)
    state = tmp_path / "state"
    state.mkdir()
    calstate.update(state, "kill-unit", {f"ch{i}": calstate.ChannelCal(0.0, 0.5) for i in range(40)}, technician="t")
    k, kills = 0, 0
    for _ in range(25):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(state), str(k)], cwd=REPO, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.12))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += p.returncode == -signal.SIGKILL
        k2 = _check_intact(state)
        assert k2 >= k
        k = k2
    assert kills == 25 and k > 25, "the writer must have written many versions while being killed"
    # the lock and the leftovers of killed writers do not stop the next writer
    calstate.update(state, "kill-unit", {"ch0": calstate.ChannelCal(1.0, 2.0)}, technician="after")
    assert not list(state.glob(".calibration.*.tmp*"))

    # and the real tool, killed while it measures, fits and writes
    cfg = make_unit(tmp_path, factory=True)
    st = tmp_path / "state"
    for f in st.iterdir():
        shutil.rmtree(f) if f.is_dir() else f.unlink()  # calibration.history/ is a folder
    ok(shelfcal(cfg, "tare", "--plate", "1/1", "--yes"))
    place(cfg, "1/1", 800)
    # each run adds a point (a different nominal mass, so none is refused as a duplicate) and writes
    for i in range(4):
        p = subprocess.Popen([sys.executable, "-m", "calibration.cli", "--config", str(cfg), "calibrate", "--plate",
                              "1/1", "--mass-g", str(800 + 100 * i), "--yes"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 2.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        cal = calstate.load(st, "cal-unit-1")
        assert cal is not None and set(cal.channels) >= {"sim-1-1", "sim-1-2", "sim-1-3", "sim-1-4"}
        s = json.loads((st / "shelfcal-session.json").read_text())  # the session file survives too
        assert s["unit_id"] == "cal-unit-1"


def test_camera_enrol_adds_photos_to_the_gallery(tmp_path, shared_dir):
    pytest.importorskip("daemon.vision.gallery")
    model = shared_dir / "models" / "coral" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    grocery = shared_dir / "data" / "grocery-store" / "dataset"
    if not model.is_file() or not (grocery / "train.txt").is_file():
        pytest.skip("shared Coral model or Grocery Store dataset missing")
    photos = [grocery / ln.split(",")[0] for ln in (grocery / "train.txt").read_text().splitlines()
              if "/Banana/" in ln][:2]
    cfg = make_unit(tmp_path, factory=True)
    doc = yaml.safe_load(cfg.read_text())
    doc["camera"] = {"type": "sim", "width": 320, "height": 240}
    doc["vision"] = {"product_model": str(model),
                     "product_sidecar": str(REPO / "models" / "coral" / (model.stem + ".json"))}
    cfg.write_text(yaml.safe_dump(doc))
    ok(shelfcal(cfg, "camera", "enrol", "--sku", "A1", str(tmp_path / "missing.jpg")), 66)
    out = ok(shelfcal(cfg, "camera", "enrol", "--sku", "A1", *map(str, photos))).stdout
    assert "2 photo(s) of A1 enrolled" in out
    from daemon.vision.gallery import Gallery
    g = Gallery.open_raw(tmp_path / "state" / "vision" / "gallery")
    assert g.skus.count("A1") == 2


def test_the_residual_axis_is_never_float_noise():
    """2 points: the fitted line passes through both, residuals ~1e-13 g: say so on a ±1 g axis."""
    from calibration.report import residual_view
    assert residual_view([1e-13, -2e-13], 2) == (1.0, "2 points: no residual to show")
    assert residual_view([0.01, -0.02, 0.005], 3) == (1.0, None)  # at least ±1 g
    lim, note = residual_view([0.4, -2.5, 1.0], 3)
    assert note is None and lim == pytest.approx(3.0)
