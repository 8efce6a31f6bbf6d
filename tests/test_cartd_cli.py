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
    assert f"{bad}:3: mqtt.port: must be 1..65535, got 0" in lines
    assert f"{bad}:4: bogus: unknown key" in lines
    assert any(l.startswith(f"{bad}:2: storage: unknown storage type") for l in lines), lines
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
    assert any(l.startswith(f"{cfg}:3: limits.max_payload_bytes: ") and "1024" in l for l in lines), lines
    assert any(l.startswith(f"{cfg}:3: limits.max_seq_jump: ") and "1000" in l for l in lines), lines
    assert f"{cfg}:3: limits.bogus: unknown key" in lines


def test_list_items_are_counted_from_one_on_their_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store_id: s\nstorage: {{type: sqlite, path: {tmp_path}/x.db}}\nunits:\n"
                   "  - unit_id: a\n  - unit_id: b\n    shelves: 7\n  - shelves: []\n")
    r = cartd("check", "--config", str(cfg))
    assert r.returncode == 78
    assert r.stderr.strip().splitlines() == [
        f"{cfg}:6: units[1].shelves (units item 2): input should be a valid list, got 7",
        f"{cfg}:7: units[2].unit_id (units item 3): required key is missing",
    ]


def test_an_empty_or_missing_config_is_one_line(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r = cartd("check", "--config", str(empty))
    assert r.returncode == 78 and r.stderr.strip() == f"{empty}: the file is empty; expected a mapping of config keys"
    missing = tmp_path / "nope.yaml"
    for cmd in ("check", "run", "receipts"):  # EX_NOINPUT, as for every missing input
        r = cartd(cmd, "--config", str(missing))
        assert r.returncode == 66, (cmd, r.stderr)
        assert r.stderr.strip() == f"{missing}: cannot read config: No such file or directory", (cmd, r.stderr)
    r = subprocess.run([sys.executable, "-m", "aggregator.web", "--config", str(missing)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 66 and len(r.stderr.strip().splitlines()) == 1 and str(missing) in r.stderr, r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store_id: s\nstorage: {{type: sqlite, path: {tmp_path}/x.db}}\ncatalogue: gone.csv\n")
    r = cartd("check", "--config", str(cfg))
    assert r.returncode == 66 and r.stderr.strip().endswith("gone.csv: cannot read catalogue: No such file or "
                                                             "directory"), r.stderr
