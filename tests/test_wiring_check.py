"""`shelfd check` catches every wiring error `run` would refuse: exit 78, one line per problem
naming the key path; `run` exits 78 the same way, never with a traceback (systemd then does not
restart-loop it: 78 is in RestartPreventExitStatus)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import shelfd


def _hx711_unit(tmp_path: Path, chips: list[dict]) -> Path:
    doc = {"version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path / "state"),
           "mqtt": {"port": 1},
           "sensing": {"backend": "hx711", "rate_hz": 80, "chips": chips},
           "shelves": [{"id": "1", "plates": [{"id": i + 1, "channels": [c["name"]]}
                                              for i, c in enumerate({c["name"]: c for c in chips}.values())]}]}
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


GOOD = [{"name": "a", "dout": 5, "sck": 6}, {"name": "b", "dout": 13, "sck": 19}]

CASES = {
    "shared dout": (
        [*GOOD, {"name": "c", "dout": 5, "sck": 21}],
        18, "sensing.chips[2].dout (chips item 3): GPIO 5 is already chips item 1's dout ('a')",
    ),
    "shared sck": (
        [*GOOD, {"name": "c", "dout": 20, "sck": 19}],
        19, "sensing.chips[2].sck (chips item 3): GPIO 19 is already chips item 2's sck ('b')",
    ),
    "dout on another chip's sck": (
        [*GOOD, {"name": "c", "dout": 6, "sck": 21}],
        18, "sensing.chips[2].dout (chips item 3): GPIO 6 is already chips item 1's sck ('a'): a DOUT wired to another "
        "chip's SCK",
    ),
    "sck on another chip's dout": (
        [*GOOD, {"name": "c", "dout": 20, "sck": 13}],
        19, "sensing.chips[2].sck (chips item 3): GPIO 13 is already chips item 2's dout ('b'): a SCK wired to another "
        "chip's DOUT",
    ),
    "dout and sck on one pin": (
        [*GOOD, {"name": "c", "dout": 20, "sck": 20}],
        19, "sensing.chips[2].sck (chips item 3): GPIO 20 is also this chip's dout",
    ),
    "duplicate chip names": (
        [*GOOD, {"name": "a", "dout": 20, "sck": 21}],
        17, "sensing.chips[2].name (chips item 3): duplicate chip name 'a' (also chips item 1)",
    ),
}


def test_good_wiring_passes_check(tmp_path):
    r = shelfd("check", "--config", str(_hx711_unit(tmp_path, GOOD)))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_wiring_errors_fail_check_and_run_with_one_line_each(tmp_path, case):
    chips, line, expected = CASES[case]
    cfg = _hx711_unit(tmp_path, chips)
    for cmd in ("check", "run"):
        r = shelfd(cmd, "--config", str(cfg), timeout=30)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 78, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
        # the file's line of the offending key; the key path as written, its list item counted from 1
        assert len(lines) == 1 and lines[0].startswith(f"{cfg}:{line}: {expected}"), lines


def test_every_problem_is_named_at_once(tmp_path):
    chips = [{"name": "a", "dout": 5, "sck": 6}, {"name": "a", "dout": 5, "sck": 7}, {"name": "c", "dout": 7, "sck": 8}]
    cfg = _hx711_unit(tmp_path, chips)
    r = shelfd("check", "--config", str(cfg))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 78 and len(lines) == 3, lines
    assert {l.split(": ")[1] for l in lines} == {
        "sensing.chips[1].name (chips item 2)",
        "sensing.chips[1].dout (chips item 2)",
        "sensing.chips[2].dout (chips item 3)",
    }


def test_iio_duplicate_channels_are_refused(tmp_path):
    doc = {"version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": str(tmp_path / "state"),
           "sensing": {"backend": "iio", "channels": [
               {"name": "a", "device": "label:hx711-a"}, {"name": "a", "device": "label:hx711-b"},
               {"name": "c", "device": "label:hx711-a"}]},
           "shelves": [{"id": "1", "plates": [{"id": 1, "channels": ["a"]}, {"id": 2, "channels": ["c"]}]}]}
    cfg = tmp_path / "iio.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = shelfd("check", "--config", str(cfg))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 78 and len(lines) == 2, lines
    assert any("sensing.channels[1].name (channels item 2): duplicate channel name 'a'" in l for l in lines)
    assert any("sensing.channels[2].channel (channels item 3): label:hx711-a in_voltage0 is already channels item 1"
               in l for l in lines)


def test_run_without_rpi_gpio_is_one_line_not_a_traceback(tmp_path):
    """The wiring is fine but this machine has no RPi.GPIO: `run` says so in one line (78)."""
    pytest.importorskip("daemon.sensing.hx711_gpio")
    try:
        import RPi.GPIO  # noqa: F401
        pytest.skip("RPi.GPIO is installed here")
    except (ImportError, RuntimeError):
        pass
    state = tmp_path / "state"
    state.mkdir()
    (state / "calibration.json").write_text(
        '{"schema": "gondola.calibration/1", "unit_id": "u1", "calibration_id": "c1", "channels": {'
        '"a": {"offset": 0, "scale": 100}, "b": {"offset": 0, "scale": 100}}}')
    r = shelfd("run", "--config", str(_hx711_unit(tmp_path, GOOD)), timeout=60)
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if " ERROR " in l]
    assert len(errors) == 1 and "RPi.GPIO" in errors[0], r.stderr
