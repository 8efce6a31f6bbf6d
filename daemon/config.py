"""The unit's YAML config: intent (what is wired where, what sits where), validated strictly.

Calibration (offset/scale per channel) is *state*, not config: it lives in ``state_dir`` and is
written by ``shelfcal``. Every model forbids unknown keys so a typo is an error, not a default.
Errors come out one line per problem, naming the key path (``mqtt.port: must be 1..65535, got 0``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .exitcodes import EX_CONFIG, EX_NOINPUT
from .registry import StrictModel as _Strict

# Importing the two lists registers every sensing backend and camera type. Their models live
# beside their factories; they are re-exported (``X as X``) as callers know them: daemon.config.X.
from .sensing.backends import SENSING, SensingSettings
from .sensing.backends.hx711 import Hx711Chip as Hx711Chip
from .sensing.backends.hx711 import Hx711Sensing as Hx711Sensing
from .sensing.backends.iio import IioChannel as IioChannel
from .sensing.backends.iio import IioSensing as IioSensing
from .sensing.backends.replay import ReplaySensing as ReplaySensing
from .sensing.backends.sim import SimSensing as SimSensing
from .vision.cameras import CAMERAS, CameraSettings
from .vision.cameras.picamera2 import Picamera2Camera as Picamera2Camera
from .vision.cameras.replay import ReplayCamera as ReplayCamera
from .vision.cameras.sim import SimCamera as SimCamera
from .vision.cameras.v4l2 import V4l2Camera as V4l2Camera


class ConfigError(Exception):
    """One or more problems, each a line ``path: message`` (``FILE:LINE: path: message`` once
    :func:`load_yaml_config` has placed them), and the exit code to leave with: 78 (EX_CONFIG),
    or 66 (EX_NOINPUT) when the file itself cannot be read."""

    def __init__(self, problems: list[str], source: str | None = None, exit_code: int = EX_CONFIG):
        self.problems = problems
        self.source = source
        self.exit_code = exit_code
        super().__init__("\n".join(problems))


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
    keepalive_s: int = Field(default=30, ge=5, le=3600)

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
    historical_after_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(default=10.0, gt=0)


# ---------------------------------------------------------------- sensing backends
# Each backend's model lives with its factory in daemon/sensing/backends/<name>.py; the union and
# the ``sensing.backend`` error texts are built from what registered there.

if TYPE_CHECKING:  # what every backend's model offers; pydantic gets the real union
    SensingConfig = SensingSettings
else:
    SensingConfig = SENSING.union()


# ---------------------------------------------------------------- shelves, plates, planogram


class PlateConfig(_Strict):
    id: int = Field(ge=0)
    channels: list[str] = Field(default_factory=list)  # load-cell channels this plate sums
    capacity_g: float = Field(default=20000.0, gt=0)


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
    unit_weight_sd_g: float | None = Field(default=None, gt=0)
    stock: int | None = Field(default=None, ge=0)  # units initially on the facing, when known


class DetectionConfig(_Strict):
    """Weight-change detection. Defaults suit 10-80 Hz HX711s and AiFi-like 60 Hz plates."""

    median_samples: int = Field(default=3, ge=1, le=15)  # spike filter (samples)
    settle_s: float = Field(default=0.6, ge=0.1, le=5.0)  # rest must hold this long before and after
    trigger_sigma: float = Field(default=6.0, ge=2.0)  # activity threshold in multiples of plate noise
    min_trigger_g: float = Field(default=4.0, gt=0)  # ... but never below this many grams
    min_event_g: float = Field(default=8.0, gt=0)  # net changes smaller than this are not events
    max_active_s: float = Field(default=20.0, ge=2.0)  # open longer than this → unknown_change
    max_quantity: int = Field(default=12, ge=1, le=1000)
    # events less sure than this carry "review": true (their candidates say what else it may be)
    review_below: float = Field(default=0.8, ge=0.0, le=1.0)
    noise_floor_g: float = Field(default=0.5, gt=0)  # assumed minimum plate noise σ
    degraded_after_s: float = Field(default=2.0, gt=0)  # channel silent this long → status degraded


# ---------------------------------------------------------------- camera and vision (optional)


# Each camera type's model lives with its factory in daemon/vision/cameras/<name>.py.
if TYPE_CHECKING:
    CameraConfig = CameraSettings
else:
    CameraConfig = CAMERAS.union()


class CaptureConfig(_Strict):
    """Opt-in: crops of high-confidence weight events saved (on the unit only) as training data."""

    enabled: bool = False
    min_confidence: float = Field(default=0.98, ge=0.5, le=1.0)
    max_mb: float = Field(default=200.0, gt=0)
    max_age_days: float = Field(default=14.0, gt=0)
    dir: Path | None = None  # default: <state_dir>/vision/capture


class VisionConfig(_Strict):
    """Models and fusion. Both models are optional; with neither, events stay weight-only."""

    action_model: Path | None = None
    product_model: Path | None = None
    product_sidecar: Path | None = None  # sidecar of a third-party model kept in a read-only folder
    tau: float = Field(default=0.9, gt=0, lt=1.0)        # temper: vision log-likelihoods × tau (docs/vision.md)
    floor: float = Field(default=1e-5, gt=0, lt=1.0)     # no vision probability counts as less than this
    deadline_ms: int = Field(default=400, ge=0, le=10000)  # an event waits at most this long for vision
    # how gallery similarities become SKU scores (docs/vision.md): "auto" fits a softmax
    # temperature on the enrolled images, "verify" a same/different model; "sidecar" uses the
    # sidecar's temperature; a number fixes the temperature
    product_calibration: float | Literal["auto", "verify", "sidecar"] = "auto"
    threads: int = Field(default=1, ge=1, le=4)
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
    def _cross_checks(self) -> Config:
        problems: list[tuple[str, str]] = []
        if not self.sensing.brings_layout() and not self.shelves:
            problems.append(("shelves", "at least one shelf with plates is required"))
        problems += self.sensing.problems(self)  # wiring, files: what its driver would refuse
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
                if not plate.channels and not self.sensing.names_plate_channels:
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
        if self.vision is not None and self.camera is None:
            problems.append(("vision", f"needs a camera section (camera.type: {CAMERAS.choices()})"))
        if self.camera is not None:
            problems += self.camera.problems(self)
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


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


_REGISTRIES = {r.section: r for r in (SENSING, CAMERAS)}
_TAGGED = {r.section: r.names() for r in _REGISTRIES.values()}


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


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    loc = err.get("loc", ())
    reg = _REGISTRIES.get(loc[0]) if len(loc) == 1 and isinstance(loc[0], str) else None
    if reg is not None and kind == "union_tag_invalid" and isinstance(err.get("input"), dict):
        return reg.unknown(err["input"].get(reg.tag))
    if reg is not None and kind == "union_tag_not_found":
        return reg.missing()
    return error_text(err)


def error_text(err: ErrorDetails) -> str:
    """One pydantic error in the words a config's author understands ("unknown key", "must be
    1..65535, got 0"). Public: shelfd's and cartd's config checks word their errors alike."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("literal_error", "greater_than", "greater_than_equal", "less_than_equal",
                "less_than", "int_parsing", "float_parsing", "string_type", "too_short", "bool_parsing",
                "list_type", "dict_type", "model_type"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    return msg


M = TypeVar("M", bound=BaseModel)


def validate_config(model: type[M], data: Any, source: str | None,
                    problems_of: Callable[[ErrorDetails], list[str]]) -> M:
    """``model`` from a config file's mapping, or ConfigError with one line per problem
    (``problems_of`` words each pydantic error). Shared by shelfd's and cartd's configs."""
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([p for err in exc.errors(include_url=False) for p in problems_of(err)], source) from None


def _problems(err: ErrorDetails) -> list[str]:
    msg = err["msg"]
    if _JOIN in msg or "\x1f" in msg:  # several problems found by one validator, joined
        body = msg.split(", ", 1)[1] if msg.startswith("Value error, ") else msg
        return [f"{key}: {m}" for key, _, m in (item.partition("\x1f") for item in body.split(_JOIN))]
    return [f"{_loc(err['loc']) or '(top level)'}: {_message(err)}"]


def parse_config(data: Any, source: str | None = None) -> Config:
    return validate_config(Config, data, source, _problems)


# ---------------------------------------------------------------- reading a config file

KeyPath = tuple[str | int, ...]
_KIND = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}


class YamlDoc(NamedTuple):
    data: dict[str, Any]
    lines: dict[KeyPath, int]  # key path (list items by index) → 1-based line where it is written


def read_yaml_doc(path: Path) -> YamlDoc:
    """A config file's mapping and where each key and list item is written. ConfigError in one
    line when the file cannot be read (exit 66), is not YAML (line and column), is empty or is
    not a mapping of keys (78)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"], str(path), EX_NOINPUT) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{where}: not valid YAML: {problem}"], str(path)) from None
    if data is None:
        what = "the file is empty" if not text.strip() else "the file holds only comments"
        raise ConfigError([f"{path}: {what}; expected a mapping of config keys"], str(path))
    if not isinstance(data, dict):
        kind = _KIND.get(type(data), type(data).__name__)
        raise ConfigError([f"{path}:{root.start_mark.line + 1 if root else 1}: expected a mapping of config keys "
                           f"(key: value lines), got {kind}"], str(path))
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, at: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*at, str(k.value))
                lines.setdefault(key, k.start_mark.line + 1)
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines.setdefault((*at, i), v.start_mark.line + 1)
                walk(v, (*at, i))

    if root is not None:
        walk(root, ())
    return YamlDoc(data, lines)


_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\[\d+\]|\.[A-Za-z_][\w-]*)*")
_PART = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")
_REF = re.compile(r"\b([a-z_]+)\[(\d+)\]((?:\.[a-z_]+)*)")
_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")


def key_parts(key: str) -> KeyPath:
    """``shelves[0].plates[1]`` → ("shelves", 0, "plates", 1)."""
    return tuple(int(i) if i else name for name, i in _PART.findall(key))


def people_path(key: str) -> str:
    """The key path as written, with its list items counted as people do: ``units[1].shelves``
    → ``units[1].shelves (units item 2)``; a path without list items stays as it is
    (``mqtt.port``)."""
    parts = key_parts(key)
    items = [f"{parts[k - 1]} item {p + 1}" for k, p in enumerate(parts) if isinstance(p, int) and k]
    return f"{key} ({', '.join(items)})" if items else key


def _people_refs(msg: str) -> str:
    """References to list items inside a message (``also chips[0]``), 1-based; quoted values
    (what the user wrote) are left alone."""
    def ref(m: re.Match[str]) -> str:
        rest = m.group(3).lstrip(".")
        return f"{m.group(1)} item {int(m.group(2)) + 1}" + (f"'s {rest}" if rest else "")
    parts = _QUOTED.split(msg)
    return "".join(p if i % 2 else _REF.sub(ref, p) for i, p in enumerate(parts))


def place_problems(problems: list[str], path: Path, lines: dict[KeyPath, int]) -> list[str]:
    """``key.path: message`` → ``FILE:LINE: key.path (list items 1-based): message``: the line of
    the key (or of the nearest enclosing key or list item that is written, for a missing key)."""
    out = []
    for p in problems:
        if p.startswith(str(path)):
            out.append(p)
            continue
        key, sep, msg = p.partition(": ")
        if not sep or not _PATH.fullmatch(key):
            out.append(f"{path}: {_people_refs(p)}")
            continue
        parts = key_parts(key)
        line = next((lines[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in lines), None)
        out.append(f"{path}{f':{line}' if line else ''}: {people_path(key)}: {_people_refs(msg)}")
    return out


T = TypeVar("T")


def load_yaml_config(path: str | Path, parse: Callable[[Any, str], T],
                     prepare: Callable[[dict[str, Any], Path], Any] | None = None) -> T:
    """Read a config file, ``prepare`` its data (relative paths ...), ``parse`` it; every problem
    comes out placed (:func:`place_problems`). shelfd's and cartd's configs both load this way."""
    path = Path(path)
    doc = read_yaml_doc(path)
    data = prepare(doc.data, path) if prepare is not None else doc.data
    try:
        return parse(data, str(path))
    except ConfigError as exc:
        raise ConfigError(place_problems(exc.problems, path, doc.lines), str(path), exc.exit_code) from None


def load_config(path: str | Path) -> Config:
    # Relative paths in a config are relative to the config file, as users expect.
    return load_yaml_config(path, parse_config, lambda data, p: _resolve_paths(data, p.parent))


_CRED_VARS = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")


def _resolve_paths(data: Any, base: Path) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)

    def fix(d: dict[str, Any], key: str) -> None:
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
    for reg in _REGISTRIES.values():  # each backend and camera type names its path keys
        section = data.get(reg.section)
        model = reg.model_for(section.get(reg.tag)) if isinstance(section, dict) else None
        if model is not None:
            data[reg.section] = dict(section)
            for k in getattr(model, "path_keys", ()):
                fix(data[reg.section], k)
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
