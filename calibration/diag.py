"""Verdicts a technician can act on, per channel, from a unit ``snapshot``.

The wording follows docs/sensing.md's fault table: name the symptom, then the wire or the knob.
"""
from __future__ import annotations

from typing import Any

from daemon.config import Config, Hx711Sensing, IioSensing, SimSensing

NOISY_G = 3.0          # AiFi's p90 plate noise; above it events under ~20 g get unreliable
SLOW_SHARE = 0.8       # measured below 80 % of the expected rate
GLITCH_SHARE = 0.01    # more than 1 % glitch words
OFFSET_SHARE = 0.5     # zero beyond half the ADC range


def _where(cfg: Config, ch: str) -> dict[str, str]:
    s = cfg.sensing
    if isinstance(s, Hx711Sensing):
        chip = next((c for c in s.chips if c.name == ch), None)
        if chip:
            return {"dout": f"GPIO {chip.dout}", "sck": f"GPIO {chip.sck}"}
    if isinstance(s, IioSensing):
        c = next((c for c in s.channels if c.name == ch), None)
        if c:
            return {"dout": f"the HX711 behind {c.device}/{c.channel}_raw (overlay loaded? dmesg)",
                    "sck": f"{c.device}"}
    if isinstance(s, SimSensing):
        return {"dout": "the simulated chip (sensing.dead_channels)", "sck": "the simulated chip"}
    return {"dout": "its DOUT pin", "sck": "its SCK pin"}


def judge_channel(cfg: Config, ch: str, c: dict[str, Any]) -> dict[str, str]:
    """A verdict ({"level": ok | warning | fault, "text"}) on one channel of a ``snapshot``."""
    w = _where(cfg, ch)
    faults, warns = [], []
    n = max(1, c["samples"])
    if c["good"] == 0:
        if c["timeouts"] or c["missing"] or c["samples"] == 0:
            faults.append(f"no data: check DOUT wiring on {w['dout']}, and the chip's VCC/GND")
        elif c["saturations"]:
            faults.append("every sample at the ADC rail: overload, or a broken cell/bridge wire (check the 4 wires)")
        else:
            faults.append("no usable sample (every word a glitch): check the connector and SCK on " + w["sck"])
    else:
        if c["distinct_values"] == 1 and c["good"] >= 10:
            faults.append(f"stuck at one value: wiring fault (DOUT {w['dout']} / SCK {w['sck']}) or a shorted bridge")
        if c["saturations"]:
            faults.append(
                f"{c['saturations']} saturated samples: unload the plate; if it stays, check the cell's wires"
            )
        if c["timeouts"] > 0.2 * n:
            faults.append(f"{c['timeouts']} timeouts in {n} slots: intermittent DOUT on {w['dout']} or power")
    if c["good"]:
        if c["measured_sps"] < SLOW_SHARE * c["expected_sps"] and not faults:
            warns.append(f"slow: {c['measured_sps']:.1f} samples/s of {c['expected_sps']:g}: chip RATE pin, "
                         f"or a starved CPU (try the iio backend)")
        if c["glitches"] > GLITCH_SHARE * n:
            warns.append(f"{c['glitches']} glitch words: loose connector or long unshielded wires")
        if c["timing"]:
            warns.append(f"{c['timing']} preempted reads: the Pi is busy; the iio backend avoids this")
        if c["noise_g"] is not None and c["noise_g"] > NOISY_G:
            warns.append(f"noisy: σ {c['noise_g']:.1f} g (> {NOISY_G:g} g): check the plate touches nothing, "
                         f"cell mounting screws, cable shielding and grounding")
        if c["offset_share"] is not None and c["offset_share"] > OFFSET_SHARE:
            warns.append(f"zero at {c['offset_share']:.0%} of the ADC range: preloaded or miswired cell, "
                         f"little headroom left")
        if c["scale"] is None:
            warns.append("not calibrated: run `shelfcal calibrate`")
    if faults:
        return {"level": "fault", "text": "; ".join(faults)}
    if warns:
        return {"level": "warning", "text": "; ".join(warns)}
    return {"level": "ok", "text": "ok"}


def judge(cfg: Config, snap: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {ch: judge_channel(cfg, ch, c) for ch, c in snap["channels"].items()}
