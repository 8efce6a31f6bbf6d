"""systemd/install.sh against a throw-away root directory (no real system touched).

What is real: the script itself (bash, every file it writes, its atomic swaps), systemd-sysusers
and `systemctl --root` where present (they edit only DIR), dtc, and `shelfd check` of the new
release. What is shimmed: the Python interpreter the venv is made from. Creating a venv and
pip-installing numpy and friends takes minutes and the network; the shim makes the venv
directory with a `python` that records the pip arguments and a `shelfd` that runs this
checkout's real CLI. systemctl/udevadm calls that would touch the running system are recorded
by the script itself in DIR/var/lib/gondola-install/commands under --root.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import _skip_or_fail
from helpers import EXAMPLE, REPO

INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"

SHIM_PY = """#!/usr/bin/env bash
# test interpreter: `-m venv DIR` makes a fake venv; anything else goes to the real Python
if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then
  dir="${@: -1}"
  mkdir -p "$dir/bin"
  printf '%s\\n' "$*" > "$dir/venv-args"
  cat > "$dir/bin/python" <<'EOF'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-} ${2:-}" = "-m pip" ]; then
  printf '%s\\n' "$*" >> "$here/pip-args"
  [ -n "${SHIM_PIP_SLEEP:-}" ] && sleep "$SHIM_PIP_SLEEP"
  [ -z "${SHIM_PIP_FAIL:-}" ] || exit 1
  exit 0
fi
exec REAL_PY "$@"
EOF
  cat > "$dir/bin/shelfd" <<'EOF'
#!/usr/bin/env bash
exec REAL_PY -m daemon.cli "$@"
EOF
  sed -i "s#REAL_PY#REAL#" "$dir/bin/python" "$dir/bin/shelfd"
  chmod +x "$dir/bin/python" "$dir/bin/shelfd"
  exit 0
fi
exec REAL "$@"
"""


@pytest.fixture
def shim_python(tmp_path: Path) -> Path:
    p = tmp_path / "shim-python"
    p.write_text(SHIM_PY.replace("REAL", sys.executable))
    p.chmod(0o755)
    return p


@pytest.fixture
def unit_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["state_dir"] = "/var/lib/shelfd"
    p = tmp_path / "unit.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GONDOLA_INSTALL", "SHIM_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def install(root: Path, *args: str, shim: Path, env: dict[str, str] | None = None,
            script: Path = INSTALL) -> subprocess.CompletedProcess:
    base = [str(script), "--root", str(root)]
    if script == INSTALL:
        base += ["--python", str(shim)]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=120,
                          env=env or _env(), cwd="/")


def _fresh_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("# stock Raspberry Pi OS\ndtparam=audio=on\n")
    return root


def _commands(root: Path) -> list[str]:
    p = root / "var/lib/gondola-install/commands"
    return p.read_text().splitlines() if p.exists() else []


def _current(root: Path) -> Path:
    link = root / "opt/gondola/current"
    assert link.is_symlink()
    target = (link.parent / os.readlink(link)).resolve()
    assert (target / ".complete").exists(), f"current points at an incomplete release {target}"
    return target


def test_install_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        _skip_or_fail("shellcheck not installed (Debian: apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(INSTALL), str(UNINSTALL)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fresh_install_places_everything(tmp_path, shim_python, unit_config):
    root = _fresh_root(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = yaml.safe_load(unit_config.read_text())
    # the password comes from the credential store: checked with it in place, as systemd will
    cfg["mqtt"].update(username="shelf", password_file="${CREDENTIALS_DIRECTORY}/shelfd-mqtt-password")
    unit_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = install(root, "--config", str(unit_config), shim=shim_python)
    assert r.returncode == 78 and "mqtt.password_file" in r.stderr, "refused without the password"
    r = install(root, "--config", str(unit_config), "--mqtt-password-file", str(pw), shim=shim_python)
    assert r.returncode == 0, r.stdout + r.stderr
    rel = _current(root)
    # venv for picamera2 and the Pi extras from this checkout
    assert "--system-site-packages" in (rel / "venv" / "venv-args").read_text()
    pip = (rel / "venv" / "pip-args").read_text()
    assert f"{REPO}[pi]" in pip and "install" in pip
    assert f"-c {REPO}/constraints.txt" in pip, "the fleet installs the pinned versions CI tested"
    # unit, config, credential (root-only), state dir, sysusers, udev, firmware
    unit = root / "etc/systemd/system/shelfd.service"
    assert unit.read_text() == (REPO / "systemd/shelfd.service").read_text()
    assert (root / "etc/shelfd/shelfd.yaml").read_text() == unit_config.read_text()
    cred = root / "etc/credstore/shelfd-mqtt-password"
    assert cred.read_text() == "s3cret\n" and (cred.stat().st_mode & 0o777) == 0o600
    assert (root / "etc/credstore").stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/shelfd").is_dir()
    assert (root / "etc/udev/rules.d/60-gondola.rules").exists()
    assert (root / "boot/firmware/gondola.txt").read_text() == (REPO / "firmware/gondola.txt").read_text()
    cfgtxt = (root / "boot/firmware/config.txt").read_text()
    assert cfgtxt.startswith("# stock Raspberry Pi OS\ndtparam=audio=on\n")
    assert cfgtxt.rstrip().endswith("include gondola.txt")
    backups = list((root / "boot/firmware").glob("config.txt.gondola-bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "# stock Raspberry Pi OS\ndtparam=audio=on\n"
    if shutil.which("dtc"):
        assert (root / "boot/firmware/overlays/gondola-hx711.dtbo").stat().st_size > 100
    if shutil.which("systemd-sysusers"):
        passwd = (root / "etc/passwd").read_text()
        assert passwd.startswith("shelfd:") or "\nshelfd:" in passwd
        groups = {l.split(":")[0]: l.split(":")[3] for l in (root / "etc/group").read_text().splitlines()}
        assert "shelfd" in groups["gpio"] and "shelfd" in groups["video"]
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/shelfd.service").is_symlink()
    cmds = _commands(root)
    assert "systemctl daemon-reload" in cmds and "systemctl restart shelfd.service" in cmds
    assert not (root / "var/lib/gondola-install/in-progress").exists()
    assert "boot files changed: reboot" in r.stdout


def test_rerun_upgrades_and_keeps_state(tmp_path, shim_python, unit_config):
    root = _fresh_root(tmp_path)
    assert install(root, "--config", str(unit_config), shim=shim_python).returncode == 0
    first = _current(root)
    # what the running unit accumulated: outbox and calibration, and a technician's edit
    state = root / "var/lib/shelfd"
    (state / "outbox.sqlite3").write_bytes(b"unsent events")
    (state / "calibration.json").write_text('{"calibration_id": "c1"}')
    r = install(root, shim=shim_python)  # upgrade: no --config, keeps the one in place
    assert r.returncode == 0, r.stdout + r.stderr
    second = _current(root)
    assert second != first and first.exists(), "previous release kept for rollback"
    assert (state / "outbox.sqlite3").read_bytes() == b"unsent events"
    assert (state / "calibration.json").read_text() == '{"calibration_id": "c1"}'
    assert (root / "etc/shelfd/shelfd.yaml").read_text() == unit_config.read_text()
    cfgtxt = (root / "boot/firmware/config.txt").read_text()
    assert cfgtxt.count("include gondola.txt") == 1, "config.txt edited once, not per run"
    assert len(list((root / "boot/firmware").glob("config.txt.gondola-bak-*"))) == 1
    assert "reboot" not in r.stdout, "nothing on the boot partition changed"
    # a third run prunes the oldest release, keeps current and previous
    assert install(root, shim=shim_python).returncode == 0
    releases = sorted(p.name for p in (root / "opt/gondola/releases").iterdir())
    assert len(releases) == 2 and first.name not in releases and second.name in releases


def test_upgrade_with_invalid_config_switches_nothing(tmp_path, shim_python, unit_config):
    root = _fresh_root(tmp_path)
    assert install(root, "--config", str(unit_config), shim=shim_python).returncode == 0
    good = _current(root)
    bad = tmp_path / "bad.yaml"
    bad.write_text(unit_config.read_text().replace("port: 1883", "port: 0"))
    r = install(root, "--config", str(bad), shim=shim_python)
    assert r.returncode == 78, r.stdout + r.stderr
    assert "mqtt.port: must be 1..65535, got 0" in r.stderr
    assert _current(root) == good
    assert sorted(p.name for p in (root / "opt/gondola/releases").iterdir()) == [good.name]
    backups = list((root / "etc/shelfd").glob("shelfd.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == unit_config.read_text()


@pytest.mark.parametrize("kill_at", ["release", "pip", "check", "firmware", "activate", "unit"])
def test_interrupted_install_is_repaired_by_a_rerun(tmp_path, shim_python, unit_config, kill_at):
    root = _fresh_root(tmp_path)
    r = install(root, "--config", str(unit_config), shim=shim_python,
                env=_env(GONDOLA_INSTALL_KILL_AT=kill_at))
    assert r.returncode == -9, r.stdout + r.stderr
    assert (root / "var/lib/gondola-install/in-progress").exists()
    link = root / "opt/gondola/current"
    if link.is_symlink():  # never a link to a half-built release
        _current(root)
    r = install(root, shim=shim_python)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"stopped during step '{kill_at}'" in r.stdout
    cur = _current(root)
    releases = list((root / "opt/gondola/releases").iterdir())
    assert cur in releases and all((p / ".complete").exists() for p in releases), "half-built release removed"
    if kill_at in ("release", "pip", "check"):  # killed before anything was switched
        assert releases == [cur]
    assert not list(root.rglob("*.gondola-tmp"))
    assert (root / "etc/systemd/system/shelfd.service").exists()
    assert (root / "boot/firmware/config.txt").read_text().count("include gondola.txt") == 1


def test_fresh_install_without_config_leaves_a_template_and_does_not_start(tmp_path, shim_python):
    root = _fresh_root(tmp_path)
    r = install(root, shim=shim_python)
    assert r.returncode == 0, r.stdout + r.stderr
    conf = (root / "etc/shelfd/shelfd.yaml").read_text()
    assert conf.startswith("# gondola-template")
    assert "systemctl restart shelfd.service" not in _commands(root)
    assert "not started" in r.stdout
    # the template is a valid config once its marker line is gone (what the README tells people)
    t = tmp_path / "t.yaml"
    t.write_text(conf.split("\n", 1)[1])
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "check", "--config", str(t)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_refuses_on_a_non_pi_without_force(tmp_path):
    if Path("/proc/device-tree/model").exists() and "Raspberry Pi" in Path("/proc/device-tree/model").read_text():
        pytest.skip("running on a Raspberry Pi")
    r = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode in (69, 77), r.stdout + r.stderr
    msg = r.stderr.strip().splitlines()[-1]
    assert ("not a Raspberry Pi" in msg and "--force" in msg) or "run as root" in msg
    assert not Path("/opt/gondola").exists() or os.geteuid() != 0


def test_uninstall_keeps_state_unless_purge(tmp_path, shim_python, unit_config):
    root = _fresh_root(tmp_path)
    assert install(root, "--config", str(unit_config), shim=shim_python).returncode == 0
    (root / "var/lib/shelfd/outbox.sqlite3").write_bytes(b"x")
    r = install(root, shim=shim_python, script=UNINSTALL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (root / "opt/gondola").exists()
    assert not (root / "etc/systemd/system/shelfd.service").exists()
    assert not (root / "boot/firmware/gondola.txt").exists()
    assert "include gondola.txt" not in (root / "boot/firmware/config.txt").read_text()
    assert (root / "var/lib/shelfd/outbox.sqlite3").exists() and (root / "etc/shelfd/shelfd.yaml").exists()
    assert "systemctl disable --now shelfd.service" in _commands(root)
    r = install(root, "--purge", shim=shim_python, script=UNINSTALL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (root / "var/lib/shelfd").exists() and not (root / "etc/shelfd").exists()
    assert "userdel shelfd" in _commands(root)
