"""The kernel-IIO HX711 backend against a fake sysfs tree."""
from __future__ import annotations

import errno
import logging
import time

import numpy as np
import pytest

from daemon.config import IioChannel, IioSensing
from daemon.sensing.base import Flag, SampleSource
from daemon.sensing.iio import IioSource
from tests.fakes.fake_sysfs import FakeIioTree, encode_counts


def cfg_for(root, *channels, rate=50.0):
    return IioSensing(backend="iio", rate_hz=rate, sysfs_root=root,
                      channels=[IioChannel(name=n, device=d, channel=c) for n, d, c in channels])


@pytest.fixture
def tree(tmp_path):
    t = FakeIioTree(tmp_path / "iio")
    t.add_device(0, counts=(1000, 0))
    t.add_device(1, counts=(-2000, 0))
    return t


# ---------------------------------------------------------------- single reads


@pytest.mark.parametrize("value", [0, 1, -1000, 123456, -123456, 0x7FFFFE, -0x7FFFFF])
def test_decodes_the_drivers_offset_binary(tree, value):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")))
    tree.set_counts(0, value)
    r = src.read_channel(0)
    assert r.flag == Flag.OK and r.value == value


def test_raw_text_as_the_driver_prints_it(tree):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")))
    assert encode_counts(0) == 8388608
    for text, expect in (("8388608\n", 0), ("8388609\n", 1), ("8388607\n", None)):
        tree.write_raw(0, text)
        r = src.read_channel(0)
        if expect is None:  # 0x7FFFFF in sysfs is the all-ones word (-1): glitch without a neighbour
            assert r.flag == Flag.OK and r.value == -1  # ...but right after 1 it is a real -1
        else:
            assert r.flag == Flag.OK and r.value == expect
    tree.set_counts(0, 500000)
    src.read_channel(0)
    tree.write_raw(0, "8388607\n")
    assert src.read_channel(0).flag == Flag.GLITCH


@pytest.mark.parametrize("text,flag", [("0\n", Flag.SATURATED), ("16777215\n", Flag.SATURATED),
                                       ("abc\n", Flag.GLITCH), ("\n", Flag.GLITCH),
                                       ("99999999\n", Flag.GLITCH), ("-5\n", Flag.GLITCH)])
def test_rails_and_garbage(tree, text, flag):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")))
    tree.write_raw(0, text)
    r = src.read_channel(0)
    assert r.flag == flag and r.value is None


def test_vanished_file_is_missing(tree):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")))
    tree.remove(0)
    assert src.read_channel(0).flag == Flag.MISSING
    tree.set_counts(0, 7)
    assert src.read_channel(0).value == 7


@pytest.mark.parametrize("code,flag", [(errno.EIO, Flag.TIMEOUT), (errno.ETIMEDOUT, Flag.TIMEOUT),
                                       (errno.ENODEV, Flag.MISSING), (errno.EACCES, Flag.MISSING)])
def test_read_errors(tree, code, flag):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")), read_file=tree.read_file)
    tree.fail(0, code=code, times=1)
    assert src.read_channel(0).flag == flag
    assert src.read_channel(0).value == 1000


def test_probe_reads_name_and_scale_and_accepts_absolute_paths(tree, caplog):
    tree.add_device(2, name="ads1015", counts=(5, 6), scale=None)
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0"),
                            ("b", str(tree.root / "iio:device1"), "in_voltage1"),
                            ("c", "iio:device2", "in_voltage0"), ("d", "iio:device9", "in_voltage0")))
    assert src.read_channel(1).value == 0
    info = [src.probe(ch) for ch in src.cfg.channels]
    assert info[0]["name"] == "hx711" and info[0]["scale"] == "0.000152590" and info[0]["present"]
    assert info[1]["path"].endswith("iio:device1/in_voltage1_raw")
    assert info[2]["name"] == "ads1015" and info[2]["scale"] is None
    assert info[3]["present"] is False
    with caplog.at_level(logging.WARNING, logger="daemon.sensing.iio"):
        src.start()
        src.close()
    assert "expected 'hx711'" in caplog.text and "iio:device9" in caplog.text
    assert src.diagnostics()["a"].extra["name"] == "hx711"


# ---------------------------------------------------------------- the threaded source


def collect(src, seconds):
    blocks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        blk = src.read(0.05)
        if len(blk):
            blocks.append(blk)
    return (np.concatenate([b.t for b in blocks]), np.vstack([b.values for b in blocks]),
            np.vstack([b.flags for b in blocks]))


def test_rows_follow_values_while_a_failing_and_a_missing_channel_are_flagged(tree):
    tree.add_device(2, counts=(0, 0))
    tree.fail(2, code=errno.EIO)           # a chip that never becomes ready
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0"),
                            ("b", "iio:device1", "in_voltage0"), ("dead", "iio:device2", "in_voltage0"),
                            ("gone", "iio:device7", "in_voltage0")),
                    read_file=tree.read_file)
    assert isinstance(src, SampleSource)
    src.start()
    try:
        t1, v1, f1 = collect(src, 0.3)
        tree.set_counts(0, 1500)
        t2, v2, f2 = collect(src, 0.3)
    finally:
        src.close()
    assert (f1[:, 2] == Flag.TIMEOUT).all() and (f1[:, 3] == Flag.MISSING).all()
    assert np.isnan(v1[:, 2:]).all()
    # a loaded machine may stall a reader past its slot (TIMEOUT); nothing else is allowed
    assert set(np.unique(f1[:, :2])) <= {0, int(Flag.TIMEOUT)} and (f1[:, :2] == 0).mean() > 0.8
    ok = f1[:, :2] == 0
    assert (v1[ok[:, 0], 0] == 1000).all() and (v1[ok[:, 1], 1] == -2000).all()
    assert v2[f2[:, 0] == 0, 0][-1] == 1500 and v2[f2[:, 1] == 0, 1][-1] == -2000
    t = np.concatenate([t1, t2])
    rate = (len(t) - 1) / (t[-1] - t[0])
    assert 35 < rate < 65, rate
    cnt, diag = src.counters(), src.diagnostics()
    assert cnt["dead"].timeouts == diag["dead"].timeouts >= 20
    assert cnt["gone"].missing == diag["gone"].missing >= 20
    assert cnt["a"].samples == diag["a"].good >= 0.8 * len(t)
    assert 40 < diag["a"].measured_sps < 60 and diag["a"].distinct_values == 2
    assert diag["dead"].measured_sps == 0 and diag["dead"].timeouts > 0


def test_glitches_are_counted(tree):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0")))
    src.start()
    try:
        collect(src, 0.1)
        tree.write_raw(0, "garbage\n")
        collect(src, 0.1)
        tree.set_counts(0, 1000)
        t, v, f = collect(src, 0.1)
    finally:
        src.close()
    assert src.counters()["a"].glitches >= 2
    assert v[f[:, 0] == 0, 0][-1] == 1000


def test_close_stops_threads(tree):
    src = IioSource(cfg_for(tree.root, ("a", "iio:device0", "in_voltage0"),
                            ("b", "iio:device1", "in_voltage0")))
    src.start()
    src.read(0.2)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert src.threads and not any(th.is_alive() for th in src.threads)
    assert len(src.read(0.3)) == 0


def test_devices_found_by_their_overlay_label_whatever_their_number(tree, caplog):
    # probe order put shelf 2's chip first this boot
    tree.add_device(3, counts=(777, 0), label="shelf1-a")
    tree.add_device(4, counts=(-555, 0), label="shelf2-a")
    src = IioSource(cfg_for(tree.root, ("s1", "label:shelf1-a", "in_voltage0"),
                            ("s2", "label:shelf2-a", "in_voltage0"), ("s3", "label:shelf3-a", "in_voltage0")))
    assert src.read_channel(0).value == 777 and src.read_channel(1).value == -555
    assert src.read_channel(2).flag == Flag.MISSING
    with caplog.at_level(logging.WARNING, logger="daemon.sensing.iio"):
        IioSource(cfg_for(tree.root, ("s3", "label:shelf3-a", "in_voltage0")))
    assert "'shelf3-a'" in caplog.text and "shelf1-a, shelf2-a" in caplog.text
