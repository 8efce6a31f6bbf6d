"""`shelfd check`: valid configs pass; each kind of bad config gets one precise line and exit 78."""
from __future__ import annotations

import pytest
from helpers import shelfd, write_config


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
    assert any("shelves[0].plates[1].channels: plate has no load-cell channel" in l for l in lines)
    assert any("planogram[1].unit_weight_g: SKU 'a' weighs 120.0 g here but 100.0 g" in l for l in lines)
    assert any("planogram[2].shelf: unknown shelf '9'" in l for l in lines)
    assert len(lines) == 3


def test_unreadable_yaml_names_the_line(tmp_path):
    p = tmp_path / "unit.yaml"
    p.write_text("version: 1\nunit_id: [unclosed\n")
    r = shelfd("check", "--config", str(p))
    assert r.returncode == 78
    assert "line 3" in r.stderr or "line 2" in r.stderr
    assert "not valid YAML" in r.stderr


def test_missing_config_file(tmp_path):
    r = shelfd("check", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 78 and "cannot read config" in r.stderr


def test_usage_error_is_64():
    r = shelfd("replay")
    assert r.returncode == 64 and "Missing argument" in r.stderr


def test_help_is_readable():
    r = shelfd("--help")
    assert r.returncode == 0
    for cmd in ("run", "check", "replay", "record"):
        assert cmd in r.stdout
