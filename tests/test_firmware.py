"""firmware/: the HX711 overlay compiles with dtc and applies to a base tree; config.txt fragment
and udev rules agree with the overlay, the unit and the daemon's iio backend."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import _skip_or_fail
from helpers import REPO

FW = REPO / "firmware"
OVERLAYS = sorted((FW / "overlays").glob("*-overlay.dts"))
DTC_FLAGS = ["-@", "-Wno-unit_address_vs_reg"]  # the flags install.sh uses (and the Pi kernel)

# A minimal base tree with what the overlay refers to (a GPIO controller labelled `gpio`)
BASE_DTS = """/dts-v1/;
/ {
    compatible = "raspberrypi,4-model-b", "brcm,bcm2711";
    #address-cells = <1>;
    #size-cells = <1>;
    gpio: gpio@7e200000 {
        compatible = "brcm,bcm2711-gpio";
        reg = <0x7e200000 0xb4>;
        gpio-controller;
        #gpio-cells = <2>;
    };
};
"""


def _dtc() -> str:
    exe = shutil.which("dtc")
    if exe is None:
        _skip_or_fail("dtc not installed (Debian: apt-get install device-tree-compiler)")
    return exe


def _compile(src: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([_dtc(), *flags, "-I", "dts", "-O", "dtb", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=30)


def _decompile(dtb: Path) -> str:
    return subprocess.run([_dtc(), "-I", "dtb", "-O", "dts", str(dtb)], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def test_there_is_an_hx711_overlay():
    assert [p.name for p in OVERLAYS] == ["gondola-hx711-overlay.dts"]


@pytest.mark.parametrize("dts", OVERLAYS, ids=lambda p: p.name)
def test_overlay_compiles_without_warnings(dts, tmp_path):
    r = _compile(dts, tmp_path / "o.dtbo", *DTC_FLAGS)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def _props(text: str, node: str) -> dict[str, str]:
    m = re.search(rf"\n\s*{re.escape(node)} {{(.*?)\n\s*}};", text, re.S)
    assert m, f"node {node} not found in\n{text}"
    return dict(re.findall(r"^\s*([\w,#-]+)(?: = (.*?))?;$", m.group(1), re.M))


def test_overlay_matches_the_kernel_binding(tmp_path):
    """avia-hx711.yaml: compatible, sck-gpios, dout-gpios, avdd-supply required;
    clock-frequency 20000..2500000. The gpio cells hold the BCM pin at cell 1 (byte 4), which
    is where the sck/dout parameters write."""
    dtbo = tmp_path / "o.dtbo"
    assert _compile(OVERLAYS[0], dtbo, *DTC_FLAGS).returncode == 0
    text = _decompile(dtbo)
    hx = _props(text, "hx711@5")
    assert hx["compatible"] == '"avia,hx711"'
    assert hx["sck-gpios"] == "<0xffffffff 0x05 0x00>" and hx["dout-gpios"] == "<0xffffffff 0x06 0x00>"
    assert 20000 <= int(hx["clock-frequency"].strip("<>"), 16) <= 2500000
    reg = _props(text, "hx711_avdd@5")
    assert reg["compatible"] == '"regulator-fixed"'
    assert int(reg["regulator-min-microvolt"].strip("<>"), 16) == 3300000
    assert hx["avdd-supply"] == f"<{reg['phandle'].strip('<>')}>", "avdd-supply must point at the regulator"
    fix = re.search(r"__fixups__ {\s*gpio = \"(.*?)\";", text, re.S).group(1)
    assert "hx711@5:sck-gpios:0" in fix and "hx711@5:dout-gpios:0" in fix
    # the parameters, decoded from __overrides__: name → [(target phandle, "prop:offset"), ...]
    src = OVERLAYS[0].read_text()
    ov = re.search(r"__overrides__ {(.*?)\n\t};", src, re.S).group(1)
    params = {name: re.findall(r'<&(\w+)>,"([^"]+)"', body) for name, body in re.findall(r"(\w+) = (.*?);", ov, re.S)}
    assert ("hx711", "sck-gpios:4") in params["sck"] and ("hx711", "reg:0") in params["sck"]
    assert params["dout"] == [("hx711", "dout-gpios:4")]
    assert params["shelf"] == [("hx711", "label")]
    assert {p for _, p in params["avdd_uv"]} == {"regulator-min-microvolt:0", "regulator-max-microvolt:0"}
    assert params["clock"] == [("hx711", "clock-frequency:0")]


def test_overlay_applies_to_a_base_tree(tmp_path):
    if shutil.which("fdtoverlay") is None:
        _skip_or_fail("fdtoverlay not installed (Debian: apt-get install device-tree-compiler)")
    (tmp_path / "base.dts").write_text(BASE_DTS)
    assert _compile(tmp_path / "base.dts", tmp_path / "base.dtb", "-@").returncode == 0
    assert _compile(OVERLAYS[0], tmp_path / "o.dtbo", *DTC_FLAGS).returncode == 0
    r = subprocess.run(["fdtoverlay", "-i", str(tmp_path / "base.dtb"), "-o", str(tmp_path / "out.dtb"),
                        str(tmp_path / "o.dtbo")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = _decompile(tmp_path / "out.dtb")
    gpio_phandle = _props(text, "gpio@7e200000")["phandle"].strip("<>")
    hx = _props(text, "hx711@5")
    assert hx["sck-gpios"] == f"<{gpio_phandle} 0x05 0x00>"   # resolved to the real controller
    assert hx["status"] == '"okay"'


def test_config_fragment_uses_only_known_overlays_and_parameters():
    text = (FW / "gondola.txt").read_text()
    src = OVERLAYS[0].read_text()
    declared = set(re.findall(r"^\t\t(\w+) = <", src, re.M))
    lines = re.findall(r"^#?dtoverlay=gondola-hx711,(.*)$", text, re.M)
    assert len(lines) >= 2
    pins: list[int] = []
    for args in lines:
        kv = dict(a.split("=", 1) for a in args.split(","))
        assert set(kv) <= declared, f"unknown parameter in {args}"
        pins += [int(kv["sck"]), int(kv["dout"])]
    assert len(pins) == len(set(pins)), "two HX711 lines share a pin"
    assert not set(pins) & {0, 1, 2, 3, 14, 15}, "ID EEPROM, I2C and UART pins stay free"
    assert "camera_auto_detect=1" in text and re.search(r"^\[all\]$", text, re.M)
    # install.sh includes it from config.txt rather than editing config.txt each time
    assert "include gondola.txt" in (REPO / "systemd" / "install.sh").read_text()


def test_udev_rules_give_the_service_groups_its_devices():
    rules = [l for l in (FW / "udev" / "60-gondola.rules").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    keys = {"SUBSYSTEM", "KERNEL", "ATTR", "GROUP", "MODE", "SYMLINK"}
    subsystems, groups = set(), set()
    for rule in rules:
        for part in re.split(r",\s*", rule):
            m = re.fullmatch(r'([A-Z]+)(\{\w+\})?(==|!=|=|\+=)"([^"]*)"', part.strip())
            assert m and m.group(1) in keys, f"cannot parse {part!r} in {rule!r}"
            if m.group(1) == "SUBSYSTEM":
                subsystems.add(m.group(4))
            if m.group(1) == "GROUP":
                groups.add(m.group(4))
    assert {"gpio", "video4linux", "media", "dma_heap", "iio"} <= subsystems
    sysusers = (REPO / "systemd" / "sysusers-gondola.conf").read_text()
    for g in groups:
        assert re.search(rf"^m shelfd {g}$", sysusers, re.M), f"shelfd is not in group {g}"


def test_iio_backend_reads_what_the_overlay_creates():
    """The kernel driver names its IIO device "hx711" and channel A is in_voltage0; the daemon's
    iio backend expects exactly that (daemon/sensing/iio.py)."""
    from daemon.config import IioChannel

    iio_src = (REPO / "daemon" / "sensing" / "iio.py").read_text()
    assert "!= \"hx711\"" in iio_src
    assert IioChannel(name="c", device="iio:device0").channel == "in_voltage0"
    assert '"avia,hx711"' in OVERLAYS[0].read_text()
