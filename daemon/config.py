"""The unit's YAML config: intent (what is wired where, what sits where), validated strictly.

Calibration (offset/scale per channel) is *state*, not config: it lives in ``state_dir`` and is
written by ``shelfcal``. Every model forbids unknown keys so a typo is an error, not a default.
Errors come out one line per problem, naming the key path (``mqtt.port: must be 1..65535, got 0``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EX_CONFIG = 78  # sysexits.h


class ConfigError(Exception):
    """One or more problems, each a line ``path: message``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------- MQTT


class TlsConfig(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname check (bench brokers with self-signed certs only)


class BrokerConnection(_Strict):
    """How to reach the store's broker; shared by shelf units and the cart aggregator."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "gondola/v1"
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"must be 1..65535, got {v}")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#"):
            raise ValueError(f"must be a plain topic path without wildcards or edge slashes, got {v!r}")
        return v


class MqttConfig(BrokerConnection):
    client_id: str | None = None  # default: gondola-<unit_id>
    # Events older than this when (re)sent are flagged "historical".
    historical_after_s: float = Field(60.0, gt=0)
    health_interval_s: float = Field(10.0, gt=0)


# ---------------------------------------------------------------- sensing backends


class Hx711Chip(_Strict):
    name: str
    dout: int = Field(ge=0, le=53)  # BCM pin numbers
    sck: int = Field(ge=0, le=53)
    gain: Literal[128, 64, 32] = 128  # 128/64 = channel A, 32 = channel B


class Hx711Sensing(_Strict):
    backend: Literal["hx711"]
    rate_hz: Literal[10, 80] = 10  # the chip's RATE pin
    read_deadline_ms: int = Field(300, ge=20, le=5000)
    chips: list[Hx711Chip] = Field(min_length=1)

    def channel_names(self) -> list[str]:
        return [c.name for c in self.chips]


class IioChannel(_Strict):
    name: str
    device: str  # "label:<label>" (the overlay's label=, stable), "iio:device0", or an absolute sysfs path
    channel: str = "in_voltage0"  # attribute prefix; reads <channel>_raw


class IioSensing(_Strict):
    backend: Literal["iio"]
    rate_hz: float = Field(10.0, gt=0, le=100)
    sysfs_root: Path = Path("/sys/bus/iio/devices")
    channels: list[IioChannel] = Field(min_length=1)

    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]


class SimSensing(_Strict):
    backend: Literal["sim"]
    seed: int = 1
    rate_hz: float = Field(60.0, gt=0, le=200)
    duration_s: float | None = Field(None, gt=0)  # None: run until stopped
    speed: float = Field(1.0, ge=0)  # 1 real time, 0 as fast as possible
    events_per_min: float = Field(20.0, gt=0)
    noise_g: float = Field(0.7, ge=0)
    ground_truth: Path | None = None  # where the simulator writes what really happened
    dead_channels: list[str] = Field(default_factory=list)
    glitch_rate: float = Field(0.0005, ge=0, le=0.1)  # per sample per channel
    # Technician scenarios (shelfcal tests, the README walk-through); see docs/simulator.md.
    shoppers: bool = True           # False: nobody touches the shelves (an installation or service visit)
    stocked: bool = True            # False: every plate starts empty
    factory_calibration: bool = True  # False: the unit starts uncalibrated (shelfd refuses to run)
    scale_error: dict[str, float] = Field(default_factory=dict)  # channel → relative error of the factory scale
    plate_noise_g: dict[str, float] = Field(default_factory=dict)  # "shelf/plate" → white-noise σ
    # Sim-only hook: a JSON file {"shelf/plate": grams} of test masses "placed" on plates; the
    # simulator polls it, so a subprocess (shelfcal, a test) can load a plate of a running sim.
    load_file: Path | None = None
    drift_g_per_min: float = Field(3.0, ge=0)  # steepest temperature drift of a cell
    # Store simulation (aggregator/sim): perform exactly the interactions listed in this JSONL
    # file (daemon/sensing/sim_script.py) instead of random shoppers, and start sample 0 at epoch
    # `t0` (paced on the wall clock from there), so every unit of a simulated store shares one clock.
    script: Path | None = None
    t0: float | None = Field(None, gt=0)

    def channel_names(self) -> list[str]:  # sim channels come from the shelves' plates
        return []


class ReplaySensing(_Strict):
    backend: Literal["replay"]
    format: Literal["aifi", "shelfd"] = "shelfd"
    path: Path
    speed: float = Field(1.0, ge=0)

    def channel_names(self) -> list[str]:
        return []


SensingConfig = Annotated[
    Union[Hx711Sensing, IioSensing, SimSensing, ReplaySensing], Field(discriminator="backend")
]


# ---------------------------------------------------------------- shelves, plates, planogram


class PlateConfig(_Strict):
    id: int = Field(ge=0)
    channels: list[str] = Field(default_factory=list)  # load-cell channels this plate sums
    capacity_g: float = Field(20000.0, gt=0)


class ShelfConfig(_Strict):
    id: str
    plates: list[PlateConfig] = Field(min_length=1)


class PlacementConfig(_Strict):
    """One planogram facing: a SKU on one or more adjacent plates of a shelf."""

    sku: str
    name: str | None = None
    shelf: str
    plates: list[int] = Field(min_length=1)
    unit_weight_g: float = Field(gt=0)
    # Standard deviation of one unit's weight; default max(1.5 g, 2.5 % of the unit weight).
    unit_weight_sd_g: float | None = Field(None, gt=0)
    stock: int | None = Field(None, ge=0)  # units initially on the facing, when known


class DetectionConfig(_Strict):
    """Weight-change detection. Defaults suit 10-80 Hz HX711s and AiFi-like 60 Hz plates."""

    median_samples: int = Field(3, ge=1, le=15)  # spike filter (samples)
    settle_s: float = Field(0.6, ge=0.1, le=5.0)  # rest must hold this long before and after
    trigger_sigma: float = Field(6.0, ge=2.0)  # activity threshold in multiples of plate noise
    min_trigger_g: float = Field(4.0, gt=0)  # ... but never below this many grams
    min_event_g: float = Field(8.0, gt=0)  # net changes smaller than this are not events
    max_active_s: float = Field(20.0, ge=2.0)  # open longer than this → unknown_change
    max_quantity: int = Field(12, ge=1, le=1000)
    # events less sure than this carry "review": true (their candidates say what else it may be)
    review_below: float = Field(0.8, ge=0.0, le=1.0)
    noise_floor_g: float = Field(0.5, gt=0)  # assumed minimum plate noise σ
    degraded_after_s: float = Field(2.0, gt=0)  # channel silent this long → status degraded


# ---------------------------------------------------------------- camera and vision (optional)


class _CameraBase(_Strict):
    """Frames kept in the ring buffer: width × height × 3 bytes each, fps × buffer_s of them
    (640×480 at 5 fps for 8 s ≈ 37 MB); see docs/vision.md."""

    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=48, le=4096)
    fps: float = Field(5.0, gt=0, le=60)
    buffer_s: float = Field(8.0, ge=1.0, le=60.0)  # pre-roll: an event's "before" frame must still be here
    stall_s: float = Field(3.0, gt=0, le=60)       # no frame this long → the source is restarted


class SimCamera(_CameraBase):
    type: Literal["sim"]
    seed: int | None = None  # default: sensing.seed


class ReplayCamera(_CameraBase):
    type: Literal["replay"]
    path: Path               # frames file written by `shelfd record` (<recording>.frames)


class V4l2Camera(_CameraBase):
    type: Literal["v4l2"]
    device: str = "/dev/video0"
    pixel_format: Literal["MJPG", "YUYV"] = "MJPG"


class Picamera2Camera(_CameraBase):
    type: Literal["picamera2"]
    camera_num: int = Field(0, ge=0, le=7)


CameraConfig = Annotated[
    Union[SimCamera, ReplayCamera, V4l2Camera, Picamera2Camera], Field(discriminator="type")
]


class CaptureConfig(_Strict):
    """Opt-in: crops of high-confidence weight events saved (on the unit only) as training data."""

    enabled: bool = False
    min_confidence: float = Field(0.98, ge=0.5, le=1.0)
    max_mb: float = Field(200.0, gt=0)
    max_age_days: float = Field(14.0, gt=0)
    dir: Path | None = None  # default: <state_dir>/vision/capture


class VisionConfig(_Strict):
    """Models and fusion. Both models are optional; with neither, events stay weight-only."""

    action_model: Path | None = None
    product_model: Path | None = None
    product_sidecar: Path | None = None  # sidecar of a third-party model kept in a read-only folder
    tau: float = Field(0.9, gt=0, lt=1.0)        # temper: vision log-likelihoods × tau (docs/vision.md)
    floor: float = Field(1e-5, gt=0, lt=1.0)     # no vision probability counts as less than this
    deadline_ms: int = Field(400, ge=0, le=10000)  # an event waits at most this long for vision
    # how gallery similarities become SKU scores (docs/vision.md): "auto" fits a softmax
    # temperature on the enrolled images, "verify" a same/different model; "sidecar" uses the
    # sidecar's temperature; a number fixes the temperature
    product_calibration: Union[float, Literal["auto", "verify", "sidecar"]] = "auto"
    threads: int = Field(1, ge=1, le=4)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)


class Config(_Strict):
    version: Literal[1]
    unit_id: str
    store_id: str
    state_dir: Path
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    sensing: SensingConfig
    shelves: list[ShelfConfig] = Field(default_factory=list)
    planogram: list[PlacementConfig] = Field(default_factory=list)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    camera: CameraConfig | None = None   # optional per unit
    vision: VisionConfig | None = None

    @field_validator("unit_id", "store_id")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not v or any(c in v for c in "/+# \t"):
            raise ValueError(f"must be non-empty with no '/', '+', '#' or spaces, got {v!r}")
        if v.startswith(("_", "$")):
            # `{prefix}/{store}/_store/...` holds the store-level topics (gates, receipts)
            raise ValueError(f"must not start with '_' or '$' (reserved for store topics), got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        problems: list[tuple[str, str]] = []
        needs_layout = not (isinstance(self.sensing, ReplaySensing) and self.sensing.format == "aifi")
        if needs_layout and not self.shelves:
            problems.append(("shelves", "at least one shelf with plates is required"))
        problems += _wiring_problems(self.sensing)
        declared = self.sensing.channel_names()
        used: dict[str, str] = {}
        shelf_ids: set[str] = set()
        plates_of: dict[str, set[int]] = {}
        for si, shelf in enumerate(self.shelves):
            if shelf.id in shelf_ids:
                problems.append((f"shelves[{si}].id", f"duplicate shelf id {shelf.id!r}"))
            shelf_ids.add(shelf.id)
            seen: set[int] = set()
            for pi, plate in enumerate(shelf.plates):
                at = f"shelves[{si}].plates[{pi}]"
                if plate.id in seen:
                    problems.append((f"{at}.id", f"duplicate plate id {plate.id} on shelf {shelf.id!r}"))
                seen.add(plate.id)
                if not plate.channels and not isinstance(self.sensing, (SimSensing, ReplaySensing)):
                    problems.append((f"{at}.channels", "plate has no load-cell channel"))
                for ch in plate.channels:
                    if declared and ch not in declared:
                        problems.append((f"{at}.channels", f"unknown channel {ch!r}; declared: {', '.join(declared)}"))
                    if ch in used:
                        problems.append((f"{at}.channels", f"channel {ch!r} already used by {used[ch]}"))
                    used[ch] = f"shelf {shelf.id} plate {plate.id}"
            plates_of[shelf.id] = seen
        weights: dict[str, tuple[float, int]] = {}
        for i, p in enumerate(self.planogram):
            at = f"planogram[{i}]"
            if self.shelves and p.shelf not in plates_of:
                problems.append((f"{at}.shelf", f"unknown shelf {p.shelf!r}"))
            elif self.shelves:
                for pl in p.plates:
                    if pl not in plates_of[p.shelf]:
                        problems.append((f"{at}.plates", f"shelf {p.shelf!r} has no plate {pl}"))
            if p.sku in weights and not math.isclose(weights[p.sku][0], p.unit_weight_g, rel_tol=1e-6):
                w, j = weights[p.sku]
                problems.append((f"{at}.unit_weight_g",
                                 f"SKU {p.sku!r} weighs {p.unit_weight_g} g here but {w} g in planogram[{j}]"))
            weights.setdefault(p.sku, (p.unit_weight_g, i))
        if self.mqtt.password_file is not None and self.mqtt.username is None:
            problems.append(("mqtt.username", "password_file is set but username is not"))
        for key, path in (("mqtt.password_file", self.mqtt.password_file),
                          ("mqtt.tls.ca_file", self.mqtt.tls and self.mqtt.tls.ca_file),
                          ("mqtt.tls.cert_file", self.mqtt.tls and self.mqtt.tls.cert_file),
                          ("mqtt.tls.key_file", self.mqtt.tls and self.mqtt.tls.key_file)):
            if path and not _readable(path):
                problems.append((key, f"file not found or not readable: {path}"))
        if self.mqtt.tls and bool(self.mqtt.tls.cert_file) != bool(self.mqtt.tls.key_file):
            problems.append(("mqtt.tls", "cert_file and key_file go together"))
        if isinstance(self.sensing, SimSensing) and self.sensing.script is not None:
            from .sensing.sim_script import script_problems
            problems += [("sensing.script", m) for m in script_problems(
                self.sensing.script, plates_of, {p.sku: p.unit_weight_g for p in self.planogram})]
        if isinstance(self.sensing, ReplaySensing) and not self.sensing.path.exists():
            problems.append(("sensing.path", f"recording not found: {self.sensing.path}"))
        if self.vision is not None and self.camera is None:
            problems.append(("vision", "needs a camera section (camera.type: sim, replay, v4l2 or picamera2)"))
        if isinstance(self.camera, SimCamera) and not isinstance(self.sensing, SimSensing):
            problems.append(("camera.type", "sim renders the simulated shelf: it needs sensing.backend: sim"))
        if isinstance(self.camera, ReplayCamera) and not self.camera.path.exists():
            problems.append(("camera.path", f"frames file not found: {self.camera.path}"))
        if self.vision is not None:
            for key in ("action_model", "product_model", "product_sidecar"):
                path = getattr(self.vision, key)
                if path is not None and not _readable(path):
                    problems.append((f"vision.{key}", f"file not found or not readable: {path}"))
        if problems:
            raise ValueError(_JOIN.join(f"{k}\x1f{m}" for k, m in problems))
        return self

    # ------------------------------------------------------------ helpers

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"gondola-{self.unit_id}"

    @property
    def topic_base(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.store_id}/{self.unit_id}"


_JOIN = "\x1e"  # separates cross-check problems inside one pydantic error


def _wiring_problems(sensing: Any) -> list[tuple[str, str]]:
    """What the drivers would refuse at ``run``, found by ``check``: duplicate channel names, and
    for GPIO chips any pin used twice (shared DOUT or SCK, a DOUT on another chip's SCK, a chip's
    DOUT on its own SCK). Each reader thread owns its two pins; shared pins corrupt both words."""
    problems: list[tuple[str, str]] = []
    if isinstance(sensing, Hx711Sensing):
        names: dict[str, int] = {}
        for i, chip in enumerate(sensing.chips):
            if chip.name in names:
                problems.append((f"sensing.chips[{i}].name",
                                 f"duplicate chip name {chip.name!r} (also chips[{names[chip.name]}])"))
            names.setdefault(chip.name, i)
        owner: dict[int, tuple[int, str]] = {}
        for i, chip in enumerate(sensing.chips):
            for role, pin in (("dout", chip.dout), ("sck", chip.sck)):
                if pin in owner:
                    j, other = owner[pin]
                    if j == i:
                        what = f"GPIO {pin} is also this chip's {other}: DOUT and SCK need two pins"
                    elif other == role:
                        what = (f"GPIO {pin} is already chips[{j}].{other} ({sensing.chips[j].name!r}): "
                                f"every chip needs its own {role.upper()}")
                    else:
                        what = (f"GPIO {pin} is already chips[{j}].{other} ({sensing.chips[j].name!r}): "
                                f"a {role.upper()} wired to another chip's {other.upper()}")
                    problems.append((f"sensing.chips[{i}].{role}", what))
                else:
                    owner[pin] = (i, role)
    elif isinstance(sensing, IioSensing):
        seen: dict[str, int] = {}
        wired: dict[tuple[str, str], int] = {}
        for i, ch in enumerate(sensing.channels):
            if ch.name in seen:
                problems.append((f"sensing.channels[{i}].name",
                                 f"duplicate channel name {ch.name!r} (also channels[{seen[ch.name]}])"))
            seen.setdefault(ch.name, i)
            key = (ch.device, ch.channel)
            if key in wired:
                problems.append((f"sensing.channels[{i}].channel",
                                 f"{ch.device} {ch.channel} is already channels[{wired[key]}]"))
            wired.setdefault(key, i)
    return problems


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


_TAGGED = {"sensing": ("hx711", "iio", "sim", "replay"), "camera": ("sim", "replay", "v4l2", "picamera2")}


def field_path(loc: tuple[Any, ...], tagged: dict[str, tuple[str, ...]]) -> str:
    """pydantic's error location as the user wrote the key: ``plates[2].channels``.

    ``tagged`` names the keys holding a ``type:``-switched union and their tags: pydantic puts the
    tag in the location, but users never wrote it."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tagged.get(out, ()):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    return field_path(loc, _TAGGED)


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid" and isinstance(err.get("input"), dict) and "type" in err["input"]:
        return f"unknown camera type {err['input'].get('type')!r}; expected sim, replay, v4l2 or picamera2"
    if kind == "union_tag_not_found" and err.get("loc", ("",))[0] == "camera":
        return "required key 'type' is missing (sim, replay, v4l2 or picamera2)"
    if kind == "union_tag_invalid":
        return f"unknown backend {err['input'].get('backend')!r}; expected hx711, iio, sim or replay" \
            if isinstance(err.get("input"), dict) else err["msg"]
    if kind == "union_tag_not_found":
        return "required key 'backend' is missing (hx711, iio, sim or replay)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("literal_error", "greater_than", "greater_than_equal", "less_than_equal",
                "less_than", "int_parsing", "float_parsing", "string_type", "too_short", "bool_parsing"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    return msg


def parse_config(data: Any, source: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors(include_url=False):
            msg = err["msg"]
            if _JOIN in msg or "\x1f" in msg:
                body = msg.split(", ", 1)[1] if msg.startswith("Value error, ") else msg
                for item in body.split(_JOIN):
                    key, _, m = item.partition("\x1f")
                    problems.append(f"{key}: {m}")
                continue
            problems.append(f"{_loc(err['loc']) or '(top level)'}: {_message(err)}")
        raise ConfigError(problems, source) from None


def read_yaml(path: Path) -> Any:
    """A config file's YAML; ConfigError with one line (file, line, column) when unreadable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"], str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{where}: not valid YAML: {problem}"], str(path)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    data = read_yaml(path)
    # Relative paths in a config are relative to the config file, as users expect.
    cfg = parse_config(_resolve_paths(data, path.parent), str(path))
    return cfg


_CRED_VARS = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")


def _resolve_paths(data: Any, base: Path) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)

    def fix(d: dict, key: str) -> None:
        v = d.get(key)
        if isinstance(v, str) and v.startswith(_CRED_VARS):
            # systemd LoadCredential= files: ${CREDENTIALS_DIRECTORY}/name (see systemd/README.md);
            # left as written when unset, so the readable-file check names the variable
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if cred_dir:
                d[key] = cred_dir + v[len(next(p for p in _CRED_VARS if v.startswith(p))):]
            return
        if isinstance(v, str) and v and not os.path.isabs(v):
            d[key] = str(base / v)

    fix(data, "state_dir")
    if isinstance(data.get("sensing"), dict):
        data["sensing"] = dict(data["sensing"])
        fix(data["sensing"], "path")
        fix(data["sensing"], "ground_truth")
        fix(data["sensing"], "load_file")
        fix(data["sensing"], "script")
    if isinstance(data.get("camera"), dict):
        data["camera"] = dict(data["camera"])
        fix(data["camera"], "path")
    if isinstance(data.get("vision"), dict):
        data["vision"] = dict(data["vision"])
        for k in ("action_model", "product_model", "product_sidecar"):
            fix(data["vision"], k)
        if isinstance(data["vision"].get("capture"), dict):
            data["vision"]["capture"] = dict(data["vision"]["capture"])
            fix(data["vision"]["capture"], "dir")
    if isinstance(data.get("mqtt"), dict):
        data["mqtt"] = dict(data["mqtt"])
        fix(data["mqtt"], "password_file")
        if isinstance(data["mqtt"].get("tls"), dict):
            data["mqtt"]["tls"] = dict(data["mqtt"]["tls"])
            for k in ("ca_file", "cert_file", "key_file"):
                fix(data["mqtt"]["tls"], k)
    return data
