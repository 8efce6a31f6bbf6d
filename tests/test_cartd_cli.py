"""cartd's command line: config validation (exit 78, one line per problem naming the key)."""
from __future__ import annotations

import subprocess
import sys

from cartd_support import REPO


def cartd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aggregator.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_check_accepts_the_example():
    r = cartd("check", "--config", "examples/cartd.yaml")
    assert r.returncode == 0, r.stderr
    assert "2 catalogue items" in r.stdout


def test_check_names_each_problem_and_exits_78(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store_id: s\nstorage: {type: mysql}\nmqtt: {port: 0}\nbogus: 1\n")
    r = cartd("check", "--config", str(bad))
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert f"{bad}: mqtt.port: must be 1..65535, got 0" in lines
    assert f"{bad}: bogus: unknown key" in lines
    assert any("storage: unknown storage type" in l for l in lines)
    assert "Traceback" not in r.stderr


def test_bad_catalogue_price_is_a_config_error(tmp_path):
    (tmp_path / "cat.csv").write_text("sku,name,price\nA,Apple,1.50\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store_id: s\nstorage: {{type: sqlite, path: {tmp_path}/x.db}}\ncatalogue: cat.csv\n")
    r = cartd("check", "--config", str(cfg))
    assert r.returncode == 78
    assert "cat.csv:2: price must be a non-negative integer in minor units" in r.stderr


def test_unreachable_postgres_exits_69(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("store_id: s\nstorage: {type: postgres, dsn: 'host=127.0.0.1 port=1 dbname=x connect_timeout=2'}\n")
    r = cartd("run", "--config", str(cfg))
    assert r.returncode == 69, r.stderr
    assert "cannot open storage postgres" in r.stderr


def test_limits_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store_id: s\nstorage: {{type: sqlite, path: {tmp_path}/x.db}}\n"
                   "limits: {max_payload_bytes: 10, max_seq_jump: 5, bogus: 1}\n")
    r = cartd("check", "--config", str(cfg))
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert any(l.startswith(f"{cfg}: limits.max_payload_bytes: ") and "1024" in l for l in lines), lines
    assert any(l.startswith(f"{cfg}: limits.max_seq_jump: ") and "1000" in l for l in lines), lines
    assert f"{cfg}: limits.bogus: unknown key" in lines
