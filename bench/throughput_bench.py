#!/usr/bin/env python3
"""Throughput benchmark: `shelfd replay --speed 0` over a whole-store recording of ≈350 plates at 60 Hz.

    .venv/bin/python bench/throughput_bench.py [--plates 350] [--out bench/out]

The AiFi store recording (../shared/data/aifi-benchmark-1) has 278 real plates and 17 s of data.
To reach a 350-plate store for ``--duration`` seconds (default 10 minutes) the benchmark writes a
recording in Gondola's own format: the real plates played forwards and backwards in turn (no step
at the seams), plus copies of whole real shelves, 97 s out of step with their originals, as extra
shelves, and a matching unit config with the AiFi planogram.
It then runs the real CLI, pinned to one core (``taskset -c 0``, one BLAS thread), and reports
the speed-up over real time, samples per second and the peak resident memory of that process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon.sensing.base import SampleBlock  # noqa: E402
from daemon.sensing.recording import RecordingWriter  # noqa: E402
from daemon.sensing.replay_aifi import RATE_HZ, AifiReplaySource, load_layout  # noqa: E402

SHIFT_S = 97.0  # copies lag their originals by this much (wrapping around the recording)


def shared_dir() -> Path:
    return Path(os.environ.get("GONDOLA_SHARED", ROOT.parent / "shared"))


def build(folder: Path, n_plates: int, duration_s: float, tmp: Path) -> tuple[Path, Path, float]:
    layout = load_layout(folder)[0]
    real = layout.plates
    extra = max(0, n_plates - len(real))
    # copies come from whole shelves, so a copied facing keeps its neighbours
    shelves = list(dict.fromkeys(p.shelf for p in real))
    copies: list = []
    for sh in shelves:
        if len(copies) >= extra:
            break
        copies.extend(p for p in real if p.shelf == sh)
    copies = copies[:extra]
    src = AifiReplaySource(folder, layout, speed=0)
    src.start()
    blocks = []
    while (b := src.read()) is not None:
        blocks.append(b)
    t = np.concatenate([b.t for b in blocks])
    v = np.concatenate([b.values for b in blocks])
    f = np.concatenate([b.flags for b in blocks])
    # Make it as long as asked by playing the recording forwards, backwards, forwards…: a
    # reflection joins without a step (a jump at a seam would itself be a weight change), and a
    # pick played backwards is a put-back, so the store stays busy in the same way.
    n_out = int(duration_s * RATE_HZ)
    shift = int(SHIFT_S * RATE_HZ)
    reps = (n_out + shift) // len(t) + 1
    order = np.concatenate([np.arange(len(t)) if k % 2 == 0 else np.arange(len(t))[::-1] for k in range(reps)])
    col = {c: i for i, c in enumerate(src.channels)}
    cols = [col[p.channels[0]] for p in copies]
    v_all = np.concatenate([v[order[:n_out]], v[order[shift:shift + n_out]][:, cols]], axis=1)
    f_all = np.concatenate([f[order[:n_out]], f[order[shift:shift + n_out]][:, cols]], axis=1)
    t = t[0] + np.arange(n_out) / RATE_HZ
    chans = list(src.channels) + [f"copy-{p.channels[0]}" for p in copies]
    rec = tmp / "store.jsonl"
    w = RecordingWriter(rec, chans, RATE_HZ, "g", "store-350")
    step = int(0.2 * RATE_HZ)
    for a in range(0, len(t), step):
        w.write(SampleBlock(t[a:a + step], v_all[a:a + step], f_all[a:a + step]))
    w.close()

    def shelf_doc(plates, prefix=""):
        by: dict[str, list] = {}
        for p in plates:
            by.setdefault(prefix + p.shelf, []).append(
                {"id": p.id, "channels": [(("copy-" if prefix else "") + c) for c in p.channels]})
        return [{"id": s, "plates": ps} for s, ps in by.items()]

    copied_shelves = {p.shelf for p in copies}
    planogram = []
    for pl in layout.placements:
        entry = {"sku": pl.sku, "shelf": pl.shelf, "plates": list(pl.plates),
                 "unit_weight_g": pl.unit_weight_g, "unit_weight_sd_g": pl.unit_weight_sd_g}
        planogram.append(entry)
        on_copied = pl.shelf in copied_shelves and all(
            any(c.shelf == pl.shelf and c.id == pid for c in copies) for pid in pl.plates)
        if on_copied:
            planogram.append({**entry, "shelf": "X" + pl.shelf})
    cfg = {"version": 1, "unit_id": "store-350", "store_id": "bench", "state_dir": str(tmp / "state"),
           "sensing": {"backend": "replay", "format": "shelfd", "path": str(rec), "speed": 0},
           "shelves": shelf_doc(real) + shelf_doc(copies, "X"), "planogram": planogram}
    cfg_path = tmp / "store.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return rec, cfg_path, float(t[-1] - t[0])


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plates", type=int, default=350)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of store data to replay")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args(argv)
    folder = shared_dir() / "data" / "aifi-benchmark-1"
    if not (folder / "plate_data.json").exists():
        raise SystemExit(f"{folder}: the AiFi recording is missing (set GONDOLA_SHARED)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="throughput-") as td:
        tmp = Path(td)
        print(f"building a {args.plates}-plate recording from the AiFi store …", file=sys.stderr)
        rec, cfg, span = build(folder, args.plates, args.duration, tmp)
        size_mb = rec.stat().st_size / 1e6
        cmd = [str(ROOT / ".venv" / "bin" / "shelfd"), "replay", str(rec), "--format", "shelfd",
               "--config", str(cfg), "--speed", "0", "--out", str(tmp / "events.jsonl")]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        print(f"replaying {span:.0f} s of data ({size_mb:.0f} MB) with: {' '.join(cmd[:6])} … --speed 0",
              file=sys.stderr)
        t0 = time.perf_counter()
        err_path = tmp / "replay.stderr"
        err_fh = open(err_path, "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_fh, text=True, env=env)
        # Peak RSS of the replay itself: its own high-water mark (VmHWM), polled while it runs.
        # (getrusage(RUSAGE_CHILDREN) would also count this big parent's pages at fork time.)
        hwm_kb = 0
        while proc.poll() is None:
            hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        err_fh.close()
        proc.stderr_text = err_path.read_text()
        rss_mb = hwm_kb / 1024.0
        if proc.returncode != 0:
            raise SystemExit(f"shelfd replay failed (rc {proc.returncode}): {proc.stderr_text[-1500:]}")
        m = re.search(r"(\d+) samples × (\d+) plates .* (\d+) event", proc.stderr_text)
        n_events = sum(1 for _ in open(tmp / "events.jsonl"))
    samples, plates = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    res = {"plates": plates, "rate_hz": RATE_HZ, "data_s": round(span, 1), "wall_s": round(wall, 2),
           "speedup": round(span / wall, 1), "plate_samples_per_s": round(samples * plates / wall),
           "max_rss_mb": round(rss_mb, 1), "events": n_events, "one_core": bool(shutil.which("taskset"))}
    (args.out / "throughput_bench.json").write_text(json.dumps(res, indent=2))
    print(f"{plates} plates × {RATE_HZ} Hz, {span:.0f} s of data in {wall:.1f} s on one core: "
          f"{res['speedup']}× real time ({res['plate_samples_per_s']:,} plate-samples/s), "
          f"peak RSS {res['max_rss_mb']} MB, {n_events} events (target ≥ 20×, < 150 MB)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
