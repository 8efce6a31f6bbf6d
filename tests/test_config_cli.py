"""`shelfd check`: valid configs pass; each kind of bad config gets one precise line and exit 78."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, shelfd, write_config


def test_example_config_is_valid(tmp_path):
    cfg = write_config(tmp_path / "unit.yaml")
    r = shelfd("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "8 plates" in r.stdout


@pytest.mark.parametrize("changes, expected", [
    ({"mqtt__port": 0}, "mqtt.port: must be 1..65535, got 0"),
    ({"mqtt__hots": "x"}, "mqtt.hots: unknown key"),
    ({"sensing__backend": "gpio"}, "sensing: unknown backend 'gpio'"),
    ({"mqtt__username": "u", "mqtt__password_file": "/nonexistent/pw"},
     "mqtt.password_file: file not found or not readable: /nonexistent/pw"),
    ({"version": 2}, "version: input should be 1, got 2"),
    ({"unit_id": None}, "unit_id: required key is missing"),
])
def test_bad_config_one_line_exit_78(tmp_path, changes, expected):
    cfg = write_config(tmp_path / "unit.yaml", **changes)
    r = shelfd("check", "--config", str(cfg))
    assert r.returncode == 78, r.stdout + r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_contradictions_each_get_a_line(tmp_path):
    path = write_config(tmp_path / "unit.yaml", sensing={"backend": "hx711", "chips": [
        {"name": "hx0", "dout": 5, "sck": 6}]})
    import yaml
    cfg = yaml.safe_load(path.read_text())
    cfg["shelves"] = [{"id": "1", "plates": [{"id": 1, "channels": ["hx0"]}, {"id": 2}]}]
    cfg["planogram"] = [
        {"sku": "a", "shelf": "1", "plates": [1], "unit_weight_g": 100},
        {"sku": "a", "shelf": "1", "plates": [2], "unit_weight_g": 120},
        {"sku": "b", "shelf": "9", "plates": [1], "unit_weight_g": 50},
    ]
    path.write_text(yaml.safe_dump(cfg))
    r = shelfd("check", "--config", str(path))
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    text = path.read_text().splitlines()

    def line_of(problem: str) -> str:  # the file's line the problem names, as written
        return text[int(problem.split(":")[1]) - 1].strip()

    by_key = {l.split(": ")[1]: l for l in lines}
    assert set(by_key) == {"shelves[0].plates[1].channels (shelves item 1, plates item 2)",
                           "planogram[1].unit_weight_g (planogram item 2)", "planogram[2].shelf (planogram item 3)"}
    # a missing key: the list item that lacks it
    assert by_key["shelves[0].plates[1].channels (shelves item 1, plates item 2)"].endswith(
        ": plate has no load-cell channel")
    assert line_of(by_key["shelves[0].plates[1].channels (shelves item 1, plates item 2)"]) == "- id: 2"
    assert by_key["planogram[1].unit_weight_g (planogram item 2)"].endswith(
        ": SKU 'a' weighs 120.0 g here but 100.0 g in planogram item 1")
    assert line_of(by_key["planogram[1].unit_weight_g (planogram item 2)"]) == "unit_weight_g: 120"
    assert line_of(by_key["planogram[2].shelf (planogram item 3)"]) == "shelf: '9'"
    assert all(l.startswith(f"{path}:") for l in lines) and len(lines) == 3


def test_unreadable_yaml_names_the_line(tmp_path):
    p = tmp_path / "unit.yaml"
    p.write_text("version: 1\nunit_id: [unclosed\n")
    r = shelfd("check", "--config", str(p))
    assert r.returncode == 78
    assert "line 3" in r.stderr or "line 2" in r.stderr
    assert "not valid YAML" in r.stderr


def test_the_contract_line_names_the_file_line_and_key_path(tmp_path):
    cfg = write_config(tmp_path / "unit.yaml", mqtt__port=0)
    r = shelfd("check", "--config", str(cfg))
    line = next(i for i, t in enumerate(cfg.read_text().splitlines(), 1) if t.strip() == "port: 0")
    assert r.returncode == 78 and r.stderr.strip() == f"{cfg}:{line}: mqtt.port: must be 1..65535, got 0"


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty; expected a mapping of config keys"),
    ("# nothing here yet\n\n", "the file holds only comments; expected a mapping of config keys"),
])
def test_an_empty_config_says_so(tmp_path, text, expected):
    p = tmp_path / "unit.yaml"
    p.write_text(text)
    for cmd in ("check", "run"):
        r = shelfd(cmd, "--config", str(p))
        assert r.returncode == 78 and r.stderr.strip() == f"{p}: {expected}", r.stderr


def test_a_config_that_is_not_a_mapping_says_so(tmp_path):
    p = tmp_path / "unit.yaml"
    p.write_text("# a list by mistake\n- version: 1\n- unit_id: u1\n")
    r = shelfd("check", "--config", str(p))
    assert r.returncode == 78
    assert r.stderr.strip() == f"{p}:2: expected a mapping of config keys (key: value lines), got a list"


def test_missing_config_file_is_66_everywhere(tmp_path):
    """EX_NOINPUT, as the README says for missing input; one line naming the file."""
    missing = tmp_path / "nope.yaml"
    for args in (("check",), ("run",), ("replay", str(tmp_path), "--format", "shelfd")):
        r = shelfd(*args, "--config", str(missing))
        assert r.returncode == 66, (args, r.stderr)
        assert r.stderr.strip() == f"{missing}: cannot read config: No such file or directory", (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "calibration.cli", "--config", str(missing), "diag"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 66 and r.stderr.strip() == f"shelfcal: {missing}: cannot read config: No such file or " \
        "directory", r.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r = subprocess.run([sys.executable, "-m", "calibration.cli", "--config", str(empty), "diag"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 78 and r.stderr.strip() == f"shelfcal: {empty}: the file is empty; expected a mapping " \
        "of config keys", r.stderr


def test_usage_error_is_64():
    r = shelfd("replay")
    assert r.returncode == 64 and "Missing argument" in r.stderr


def test_help_is_readable():
    r = shelfd("--help")
    assert r.returncode == 0
    for cmd in ("run", "check", "replay", "record"):
        assert cmd in r.stdout
