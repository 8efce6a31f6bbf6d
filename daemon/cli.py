"""``shelfd``: the shelf-unit daemon's command line.

Exit codes follow sysexits(3): 0 ok, 64 usage, 65 bad recording data, 66 input missing,
69 service unavailable, 70 internal fault, 73 state_dir not writable, 78 configuration error.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click

from . import __version__
from .cli_entry import run_click
from .exitcodes import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_USAGE

if TYPE_CHECKING:
    from .config import Config
    from .layout import Layout
    from .sensing.base import SampleSource

log = logging.getLogger("shelfd")


def _setup_logging(level: str = "info") -> None:
    # Under systemd: one line per record with an sd-daemon <N> priority and no timestamp
    # (journald stamps it); in a shell: a time column and full tracebacks. See logsetup.py.
    from .logsetup import setup
    setup(level)


def _fail(msg: str, code: int) -> NoReturn:
    from .logsetup import error_line
    click.echo(error_line(f"shelfd: {msg}"), err=True)
    sys.exit(code)


def _load(config: Path, notify: bool = False) -> Config:
    from .config import ConfigError, load_config
    from .logsetup import error_line
    try:
        return load_config(config)
    except ConfigError as exc:
        lines = [line if line.startswith(str(config)) else f"{config}: {line}" for line in exc.problems]
        for line in lines:
            click.echo(error_line(line), err=True)
        if notify:  # `shelfd run` under systemd: `systemctl status` shows why it stays down
            from .sdnotify import Notifier
            more = f" (+{len(lines) - 1} more, see journal)" if len(lines) > 1 else ""
            Notifier().status_and_wait(f"config error, not restarting: {lines[0]}{more}")
        sys.exit(exc.exit_code)  # 78, or 66 when the file cannot be read


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shelfd")
def cli() -> None:
    """Gondola shelf-unit daemon: load cells → item events over MQTT.

    \b
    Typical use:
      shelfd check --config /etc/shelfd/shelfd.yaml      validate a config
      shelfd run   --config /etc/shelfd/shelfd.yaml      the service (systemd runs this)
      shelfd record --config ... --out case.jsonl        capture raw samples of a problem case
      shelfd replay case.jsonl --format shelfd --config ...   re-run detection on a recording
      shelfd replay AIFI_FOLDER --format aifi            replay an AiFi store recording
    """


@cli.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path),
              help="The unit's YAML config.")
def check(config: Path) -> None:
    """Validate a config. Exit 0 when valid; 78 with one line per problem otherwise."""
    cfg = _load(config)
    from .sensing.factory import layout_for
    from .sensing.replay_aifi import RecordingError
    try:
        layout = layout_for(cfg)
    except RecordingError as exc:
        click.echo(f"{config}: sensing.path: {exc}", err=True)
        sys.exit(EX_CONFIG)
    if cfg.camera is not None:
        # models are loaded and checked against their sidecars here, not first at `run`
        from .vision.setup import check_vision
        problems = check_vision(cfg)
        for line in problems:
            click.echo(f"{config}: {line}", err=True)
        if problems:
            sys.exit(EX_CONFIG)
    click.echo(f"{config}: ok — unit {cfg.store_id}/{cfg.unit_id}, {cfg.sensing.backend} backend, "
               f"{len(layout.shelves)} shelves, {len(layout.plates)} plates, "
               f"{len(layout.placements)} planogram facings, topics under {cfg.topic_base}/")


@cli.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path),
              help="The unit's YAML config.")
def run(config: Path) -> None:
    """Run the service in the foreground (logs to stderr; systemd Type=notify aware).

    SIGTERM or Ctrl-C stops it cleanly: status `stopped` is published and unsent events stay in
    the outbox for the next start."""
    cfg = _load(config, notify=True)
    _setup_logging(cfg.log_level)
    from .service import Service
    sys.exit(Service(cfg).run())


class _Sequencer:
    """Gives replayed events the ids and sequence numbers `run` would (without an outbox)."""

    def __init__(self, out: TextIO):
        from ulid import ULID
        self._ulid = ULID
        self.seq = 0
        self.out = out

    def __call__(self, ev: dict[str, Any]) -> None:
        self.seq += 1
        full = {"schema": ev["schema"], "event_id": str(self._ulid()), "seq": self.seq, **ev}
        self.out.write(json.dumps(full) + "\n")
        self.out.flush()


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["aifi", "shelfd"]), default="shelfd",
              show_default=True, help="aifi: a folder with plate_data.json, planogram.json, "
              "products.json. shelfd: a file written by `shelfd record`.")
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="Unit config (layout, planogram, detection). Optional for --format aifi.")
@click.option("--speed", type=float, default=0.0, show_default=True,
              help="0 = as fast as possible, 1 = real time.")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Events file (default stdout).")
def replay(source: Path, fmt: str, config: Path | None, speed: float, out: Path | None) -> None:
    """Run the weight pipeline over a recording; print each item event as one JSON line."""
    _setup_logging("warning")
    if speed < 0:
        _fail(f"--speed must be ≥ 0, got {speed}", EX_USAGE)
    from .calstate import CalibrationError, CalibrationState, load
    from .layout import Layout
    from .pipeline import run_offline
    from .sensing.recording import ShelfdReplaySource
    from .sensing.replay_aifi import AifiReplaySource, RecordingError, load_layout
    from .signal.condition import UncalibratedError

    cfg = _load(config) if config else None
    if not source.exists():
        _fail(f"{source}: no such file or folder", EX_NOINPUT)
    calibration = None
    try:
        if fmt == "aifi":
            if not source.is_dir():
                _fail(f"{source}: --format aifi expects a folder holding plate_data.json", EX_NOINPUT)
            layout = load_layout(source)[0]
            src: AifiReplaySource | ShelfdReplaySource = AifiReplaySource(source, layout, speed=speed)
        else:
            if cfg is None:
                _fail("--format shelfd needs --config (which plate sums which channel)", EX_USAGE)
            layout = Layout.from_config(cfg)
            src = ShelfdReplaySource(source, speed=speed)
            if src.units == "counts":
                cal = src.header.get("calibration")
                calibration = (CalibrationState.from_json(cal, f"{source}:1 calibration") if cal
                               else load(cfg.state_dir, cfg.unit_id))
    except (RecordingError, CalibrationError) as exc:
        _fail(str(exc), EX_DATAERR)
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout
    emit = _Sequencer(fh)
    t0 = time.perf_counter()
    try:
        stats = run_offline(cfg, src, layout, emit, calibration=calibration,
                            vision=_replay_vision(cfg, layout, src, source, fmt))
    except RecordingError as exc:
        _fail(f"{exc} ({emit.seq} event(s) before it were written)", EX_DATAERR)
    except UncalibratedError as exc:
        _fail(str(exc), EX_CONFIG)
    finally:
        if out:
            fh.close()
    wall = time.perf_counter() - t0
    click.echo(f"shelfd replay: {stats.samples} samples × {len(layout.plates)} plates "
               f"({stats.data_seconds:.1f} s of data) in {wall:.2f} s "
               f"({stats.data_seconds / max(wall, 1e-9):.0f}× real time), {emit.seq} event(s)", err=True)


def _replay_vision(cfg: Config | None, layout: Layout, src: SampleSource, source: Path,
                   fmt: str) -> dict[str, Any] | None:
    """The camera path for a replay: a unit with a camera whose recording has frames beside it
    (``<recording>.frames``) replays them through the same models and fusion as ``run``."""
    if cfg is None or cfg.camera is None or fmt != "shelfd":
        return None
    from .vision.framefile import frames_path
    from .vision.setup import VisionConfigError, build_vision
    frames = frames_path(source)
    if not frames.exists():
        log.warning("%s: no frames beside the recording; events are weight-only", frames)
        return None
    cam = {k: v for k, v in cfg.camera.model_dump().items() if k in ("width", "height", "fps", "buffer_s", "stall_s")}
    from .config import ReplayCamera
    cfg = cfg.model_copy(update={"camera": ReplayCamera(type="replay", path=frames, **cam)})
    try:
        vis = build_vision(cfg, layout, src, offline=True)
    except VisionConfigError as exc:
        _fail("; ".join(exc.problems), EX_CONFIG)
    assert vis is not None  # the config has a camera
    vis.start()
    return vis.pipeline_kwargs()


@cli.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Recording file to write (JSON lines, gondola.recording/1).")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to record.")
def record(config: Path, out: Path, duration: float) -> None:
    """Record raw samples of the configured backend for later `shelfd replay`.

    Use it to capture a problem case on a unit. While the service runs it owns the GPIO pins:
    stop it first (`systemctl stop shelfd`)."""
    cfg = _load(config)
    _setup_logging(cfg.log_level)
    if duration <= 0:
        _fail(f"--duration must be > 0, got {duration}", EX_USAGE)
    from . import calstate
    from .sensing.factory import layout_for, make_source
    from .sensing.recording import RecordingWriter
    layout = layout_for(cfg)
    src = make_source(cfg, layout)
    try:
        cal = calstate.load(cfg.state_dir, cfg.unit_id)
    except calstate.CalibrationError as exc:
        _fail(str(exc), EX_CONFIG)
    if cal is None and hasattr(src, "factory_calibration"):
        cal = src.factory_calibration()
    writer = RecordingWriter(out, list(src.channels), src.rate_hz, src.units, cfg.unit_id,
                             cal.to_json() if cal else None)
    frames = None
    if cfg.camera is not None:
        # camera frames go beside the samples (<out>.frames) so a replay can run the camera path
        from .vision.framefile import FrameWriter, frames_path
        from .vision.setup import VisionConfigError, open_camera
        try:
            runner, ring, rois = open_camera(cfg, layout, src)
        except VisionConfigError as exc:
            _fail("; ".join(exc.problems), EX_CONFIG)
        frames = FrameWriter(frames_path(out), unit_id=cfg.unit_id, width=runner.width,
                             height=runner.height, fps=cfg.camera.fps, rois=rois)
        runner.start()
        last_frame_t = float("-inf")
    src.start()
    t_end = time.monotonic() + duration
    data_s = 0.0
    try:
        while time.monotonic() < t_end and data_s < duration:
            block = src.read(0.5)
            if block is None:
                break
            writer.write(block)
            data_s += len(block) / src.rate_hz
            if frames is not None and len(block):
                runner.pump(float(block.t[-1]))
                for fr in ring.snapshot(last_frame_t + 1e-6, float("inf")):
                    frames.write(fr)
                    last_frame_t = fr.t
    except KeyboardInterrupt:
        pass
    finally:
        src.close()
        writer.close()
        if frames is not None:
            runner.stop()
            frames.close()
    click.echo(f"shelfd record: {writer.rows} rows × {len(src.channels)} channels → {out}", err=True)
    if frames is not None:
        click.echo(f"shelfd record: {frames.frames} camera frames → {frames.path}", err=True)


def main() -> None:
    run_click(cli, "shelfd")


if __name__ == "__main__":
    main()
