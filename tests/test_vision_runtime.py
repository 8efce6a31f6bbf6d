"""Camera path without models: renderer, frame decoding, the runner's fault handling, ring buffer,
frame selection, ROIs and the frames file. Only the camera hardware is faked (a scripted device
behind the same small interface the real drivers implement)."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from daemon.vision import render as R
from daemon.vision.camera import CameraError, CameraRunner, V4l2Source, decode_mjpeg, decode_yuyv
from daemon.vision.framefile import FrameWriter, ReplayCameraSource
from daemon.vision.frames import Frame, FrameRing, select_frames
from daemon.vision.rois import RoiError, load_rois, save_rois

GEOM = R.ShelfGeometry([("1", 1), ("1", 2), ("2", 1), ("2", 2)], 320, 240)


def scene(count_a=4, hand=None):
    return R.SceneState([R.FacingView("049000028911", "1", (1,), count_a),
                         R.FacingView("028400090858", "1", (2,), 3),
                         R.FacingView("012000161155", "2", (1, 2), 5)], {}, hand)


# ---------------------------------------------------------------- renderer


def test_render_is_deterministic_and_per_sku_stable():
    a = R.render_frame(scene(), GEOM, np.random.default_rng(5))
    b = R.render_frame(scene(), GEOM, np.random.default_rng(5))
    c = R.render_frame(scene(), GEOM, np.random.default_rng(6))
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # noise, light and jitter come from the generator
    assert R.appearance("049000028911") == R.appearance("049000028911")
    assert R.appearance("049000028911") != R.appearance("028400090858")


def test_a_pick_changes_one_footprint_and_no_change_changes_nothing():
    rng = np.random.default_rng(1)
    roi = GEOM.plate_roi("1", 1)
    before = R.crop(R.render_frame(scene(4), GEOM, rng), roi)
    same = R.crop(R.render_frame(scene(4), GEOM, rng), roi)
    after = R.crop(R.render_frame(scene(3), GEOM, rng), roi)
    assert R.changed_box(before, same) is None          # light, noise and shake are not a change
    box = R.changed_box(before, after)
    assert box is not None
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    assert 0 < area < 0.35 * before.shape[0] * before.shape[1]   # one unit, not the plate


def test_hand_is_drawn_and_training_helpers_return_labelled_crops():
    rng = np.random.default_rng(2)
    no_hand = R.render_clean(scene(), GEOM)
    with_hand = R.render_clean(scene(hand=R.HandView("1", (1,), 0.9, "049000028911")), GEOM)
    assert np.abs(np.asarray(no_hand, int) - np.asarray(with_hand, int)).sum() > 0
    for label in R.ACTION_LABELS:
        s = R.action_sample(rng, label, width=320, height=240)
        assert s.label == label and s.before.shape == s.after.shape and s.before.ndim == 3
    crop = R.product_crop(rng, "049000028911", width=320, height=240)
    assert crop.ndim == 3 and 4 <= crop.shape[0] <= 120


# ---------------------------------------------------------------- decoding


def test_mjpeg_and_yuyv_decoding():
    img = R.render_frame(scene(), GEOM, np.random.default_rng(3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    out = decode_mjpeg(buf.getvalue())
    assert out.shape == img.shape and np.abs(out.astype(int) - img.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="not a JPEG"):
        decode_mjpeg(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="corrupt JPEG"):
        decode_mjpeg(buf.getvalue()[:200])
    # YUYV of mid-grey (Y=128, U=V=128) and pure white (Y=235): 2 pixels per 4 bytes
    grey = decode_yuyv(bytes([128, 128, 128, 128]) * 8, 4, 4)
    assert grey.shape == (4, 4, 3) and np.all(grey == 128)
    with pytest.raises(ValueError, match="short YUYV"):
        decode_yuyv(b"\x00" * 10, 4, 4)


def test_v4l2_source_is_import_safe_and_fails_clearly_without_a_device():
    src = V4l2Source("/dev/video-gondola-missing", 320, 240, 5.0)
    with pytest.raises(CameraError, match="video-gondola-missing"):
        src.start()


# ---------------------------------------------------------------- the runner's faults


class ScriptedCamera:
    """A camera device as the runner sees one: each start() opens a new session whose reads
    follow ``plan`` — "ok" (a frame), "bad" (wrong size), "gray" (wrong format), "none" (no
    frame in time), "gone" (the device vanishes: CameraError)."""

    synchronous = False

    def __init__(self, plans, width=64, height=48, fail_starts=0):
        self.plans = list(plans)
        self.width, self.height = width, height
        self.fail_starts = fail_starts
        self.starts = 0
        self.closes = 0
        self._plan: list[str] = []

    def start(self):
        self.starts += 1
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise CameraError("no such device")
        self._plan = list(self.plans.pop(0)) if self.plans else ["none"] * 10_000

    def read(self, timeout):
        step = self._plan.pop(0) if self._plan else "none"
        if step == "gone":
            raise CameraError("device disconnected")
        if step == "none":
            time.sleep(min(timeout, 0.02))
            return None
        if step == "bad":
            return time.time(), np.zeros((self.height + 1, self.width, 3), np.uint8)
        if step == "gray":
            return time.time(), np.zeros((self.height, self.width), np.uint8)
        time.sleep(0.002)
        return time.time(), np.full((self.height, self.width, 3), 100, np.uint8)

    def close(self):
        self.closes += 1


def wait_for(cond, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_runner_rejects_bad_frames_and_restarts_a_vanished_camera():
    cam = ScriptedCamera([["ok"] * 5 + ["bad", "gray"] + ["ok"] * 3 + ["gone"], ["ok"] * 20])
    ring = FrameRing(100)
    runner = CameraRunner(cam, ring, width=64, height=48, fps=5, stall_s=1.0,
                          sleep=lambda s: time.sleep(min(s, 0.05)))
    runner.start()
    try:
        assert wait_for(lambda: runner.stats.frames >= 28)
    finally:
        runner.stop()
    st = runner.stats
    assert st.rejected == 2 and st.restarts == 1 and st.errors >= 1
    assert "disconnected" in (st.last_error or "")
    assert len(ring) == 28 and all(f.image.shape == (48, 64, 3) for f in ring.snapshot(0, 1e18))
    h = runner.health()
    assert h["rejected"] == 2 and h["restarts"] == 1 and h["state"] == "stopped"


def test_runner_detects_a_stall_and_backs_off_when_the_device_stays_away():
    waits: list[float] = []
    cam = ScriptedCamera([["ok"] * 3 + ["none"] * 1000], fail_starts=0)
    ring = FrameRing(10)
    runner = CameraRunner(cam, ring, width=64, height=48, fps=5, stall_s=0.3,
                          sleep=lambda s: (waits.append(s), time.sleep(0.01)))
    runner.start()
    try:
        # first session stalls → restart; later sessions deliver nothing either (plan exhausted)
        assert wait_for(lambda: runner.stats.stalls >= 2 and len(waits) >= 2, timeout=10)
    finally:
        runner.stop()
    assert runner.stats.frames == 3 and runner.stats.restarts >= 1
    assert waits[1] > waits[0]  # exponential back-off between restarts
    # a camera that cannot even be opened is retried with growing waits as well
    waits.clear()
    cam2 = ScriptedCamera([["ok"] * 100], fail_starts=3)
    r2 = CameraRunner(cam2, FrameRing(10), width=64, height=48, fps=5,
                      sleep=lambda s: (waits.append(s), time.sleep(0.01)))
    r2.start()
    try:
        assert wait_for(lambda: r2.stats.frames > 0)
    finally:
        r2.stop()
    assert cam2.starts == 4 and waits[:3] == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------- ring and frame selection


def test_ring_is_bounded_and_selection_brackets_the_change():
    img = np.zeros((48, 64, 3), np.uint8)
    ring = FrameRing(max_frames=20, max_bytes=12 * img.nbytes)
    for k in range(50):
        ring.push(Frame(100.0 + 0.2 * k, img.copy()))
    assert len(ring) == 12 and ring.evicted == 38            # the byte bound binds first
    ring.push(Frame(50.0, img))                               # clock step back: dropped, counted
    assert ring.out_of_order == 1 and len(ring) == 12
    t0, t1 = ring.span()
    sel = select_frames(ring, t_start=t0 + 0.5, t_end=t0 + 1.2, margin_s=0.25)
    assert sel.usable and sel.before.t <= t0 + 0.25 and sel.after.t >= t0 + 1.45
    assert all(t0 + 0.5 <= f.t <= t0 + 1.2 for f in sel.during)
    late = select_frames(ring, t_start=t0 - 10, t_end=t0 + 1)   # interaction longer than the buffer
    assert late.before is None and "before_missing" in late.flags
    early = select_frames(ring, t_start=t1 - 0.5, t_end=t1 + 5)  # no frame after yet
    assert not early.usable and "after_missing" in early.flags
    assert FrameRing.for_camera(5, 8, 640, 480).max_frames == 41


# ---------------------------------------------------------------- ROIs and frames file


def test_rois_round_trip_atomically_and_reject_bad_files(tmp_path):
    assert load_rois(tmp_path) is None
    save_rois(tmp_path, GEOM.rois(), unit_id="u1", frame_size=(320, 240))
    save_rois(tmp_path, {"1/1": (0.1, 0.1, 0.5, 0.5)}, unit_id="u1")
    assert load_rois(tmp_path, "u1") == {"1/1": (0.1, 0.1, 0.5, 0.5)}
    assert json.loads((tmp_path / "camera.prev.json").read_text())["rois"]["1/2"]
    assert not list(tmp_path.glob(".camera.*"))
    with pytest.raises(RoiError, match="belongs to unit 'u1'"):
        load_rois(tmp_path, "u2")
    with pytest.raises(RoiError, match=r"0 ≤ x0 < x1 ≤ 1"):
        save_rois(tmp_path, {"1/1": (0.5, 0.1, 0.2, 0.5)})
    (tmp_path / "camera.json").write_text("{not json")
    with pytest.raises(RoiError, match="corrupt camera file"):
        load_rois(tmp_path)


def test_frames_file_round_trip_skips_corrupt_lines(tmp_path):
    path = tmp_path / "case.jsonl.frames"
    w = FrameWriter(path, unit_id="u1", width=320, height=240, fps=5, rois=GEOM.rois())
    rng = np.random.default_rng(4)
    imgs = [R.render_frame(scene(4 - k), GEOM, rng) for k in range(3)]
    for k, img in enumerate(imgs):
        w.write(Frame(1000.0 + k, img))
    w.close()
    with open(path, "a") as fh:
        fh.write("{broken\n")
    src = ReplayCameraSource(path)
    assert (src.width, src.height) == (320, 240) and src.rois["1/1"] == list(GEOM.plate_roi("1", 1))
    first = list(src.frames_until(1001.0))
    assert [f.t for f in first] == [1000.0, 1001.0]
    rest = list(src.frames_until(1e12))
    assert [f.t for f in rest] == [1002.0] and src.corrupt == 1
    assert np.abs(rest[0].image.astype(int) - imgs[2].astype(int)).mean() < 8


def test_ring_tail_keeps_a_compressed_frame_a_second_beyond_the_buffer():
    rng = np.random.default_rng(7)
    ring = FrameRing(max_frames=11, tail_s=10.0, tail_step_s=1.0)   # 2 s at 5 fps + 10 s tail
    imgs = {}
    for k in range(100):                                            # 20 s of frames
        t = 500.0 + 0.2 * k
        img = R.render_frame(scene(4 + k % 3), GEOM, rng) if k % 5 == 0 else np.zeros((240, 320, 3), np.uint8)
        imgs[t] = img
        ring.push(Frame(t, img))
    t_end = 500.0 + 0.2 * 99
    assert ring.snapshot(0, 1e9)[0].t >= t_end - 2.01               # full rate: last 2 s only
    f = ring.at_or_before(t_end - 6.0)                              # inside the tail
    assert f is not None and t_end - 7.01 <= f.t <= t_end - 6.0
    assert np.abs(f.image.astype(int) - imgs[f.t].astype(int)).mean() < 6   # JPEG round trip
    assert ring.oldest().t >= t_end - 2 - 10 - 1.01                 # tail bounded in time
    assert ring.nbytes < 11 * 240 * 320 * 3 + 12 * 60_000           # compressed, not raw
    sel = select_frames(ring, t_start=t_end - 6.0, t_end=t_end - 1.0)
    assert sel.usable and sel.before.t <= t_end - 6.25 and not sel.flags
