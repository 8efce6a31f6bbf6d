"""cartd's YAML config, validated strictly (unknown keys are errors, one line per problem).

Same conventions as the daemon's config (``daemon/config.py``): ``ConfigError`` carries lines
``key.path: message``; the CLI prints them and exits 78 (EX_CONFIG). Relative paths are relative
to the config file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import ErrorDetails

from daemon.config import BrokerConnection, error_text, field_path, load_yaml_config, validate_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(BrokerConnection):
    # MQTT 5 persistent session: the broker queues our QoS 1 messages while we are down for this
    # long. Must exceed the longest restart you want to survive without relying on unit resends.
    session_expiry_s: int = Field(default=86400, ge=0)
    # Shared-subscription group. Several cartd instances with the same group split the event
    # stream; null subscribes plainly (one instance only).
    shared_group: str | None = "cartd"

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError(f"must be a non-empty name without / + #, got {v!r}")
        return v


class SqliteStorage(_Strict):
    type: Literal["sqlite"]
    path: Path


class PostgresStorage(_Strict):
    type: Literal["postgres"]
    dsn: str  # libpq connection string or URI, e.g. "host=127.0.0.1 dbname=gondola"
    schema_name: str = Field(default="public", alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, v: str) -> str:
        if not v.replace("_", "").isalnum() or v[0].isdigit():
            raise ValueError(f"must be a plain SQL identifier, got {v!r}")
        return v


Storage = Annotated[SqliteStorage | PostgresStorage, Field(discriminator="type")]


class UnitConfig(_Strict):
    unit_id: str
    # Known shelves of this unit; empty = accept any shelf id the unit publishes.
    shelves: list[str] = []

    @field_validator("unit_id")
    @classmethod
    def _uid(cls, v: str) -> str:
        if not v or v.startswith("_") or any(c in v for c in "/+#"):
            raise ValueError(f"must be non-empty, not start with '_' and hold no / + #, got {v!r}")
        return v


class AssociationConfig(_Strict):
    # Unit, gate and tracking clocks may disagree by this much (NTP on a store LAN: well under 1 s).
    clock_tolerance_s: float = Field(default=1.0, ge=0)
    # Presence is weighed over the event's window widened by these (beyond the clock tolerance):
    # the shopper who touched a shelf stood there before reaching in and stays until it rests
    # (associate.py). Only the part after t_end delays association (tracking must pass it).
    context_before_s: float = Field(default=1.0, ge=0, le=30)
    context_after_s: float = Field(default=1.5, ge=0, le=30)
    # A best candidate below this confidence, or closer than `ambiguity_margin` to the second,
    # still gets the line but it is marked needs_review.
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    ambiguity_margin: float = Field(default=0.2, ge=0, le=1)
    # For a put-back, a candidate who does not hold the SKU is weighted by this factor.
    not_holding_factor: float = Field(default=0.2, ge=0, le=1)
    # Wait this long for tracking to reach an event's t_end before associating with what is known.
    tracking_wait_s: float = Field(default=2.0, ge=0)
    # A time further than this in the future of cartd's clock is not believed: an item event
    # (t_end), gate message or tracking message beyond it is refused (dead letter clock_skew,
    # kept, never applied), and a unit's health time is clamped to cartd's clock. Neither can move
    # a unit's watermark or the tracking feed ahead.
    max_clock_skew_s: float = Field(default=5.0, gt=0)


class ReceiptConfig(_Strict):
    # Issue the receipt at the latest this long after the exit was received, even if a unit has
    # not reported past the exit time (then complete=false; late events become corrections).
    deadline_s: float = Field(default=15.0, gt=0)
    # A unit decides an event up to ~1.2 s after t_end (the detector's settle window): its
    # watermark is (latest t_end or health time) minus this.
    unit_lag_s: float = Field(default=1.5, ge=0)
    # Ask lagging units for a `rebirth` (fresh retained health) this often while a receipt waits.
    rebirth_interval_s: float = Field(default=0.5, gt=0)
    # Gather late events for this long before issuing a correction receipt.
    correction_delay_s: float = Field(default=1.0, ge=0)
    currency: str = "USD"


class ReviewConfig(_Strict):
    # A pick or put-back whose identification confidence is below this (or that its unit flagged
    # with `review: true`) goes to the staff review queue, as does a misplaced return.
    event_confidence_below: float = Field(default=0.8, ge=0, le=1)
    # A misplaced return the unit is sure of (confidence above the line) is queued too, by default;
    # false: only the console's stock view lists it (the receipt is right, the shelf is not).
    misplaced_returns: bool = True
    # Hold a receipt while its session has lines awaiting review, for at most this long after the
    # exit (0: issue at once; a decision made later issues a correction receipt).
    hold_receipt_s: float = Field(default=0.0, ge=0, le=86400)


class SsoConfig(_Strict):
    # Behind the store's single sign-on proxy: the proxy authenticates and passes the user name in
    # this header; it is believed only from these proxy addresses, and the name must be a console
    # account (its role comes from there). Unset: the console's own sign-in page.
    header: str | None = None
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]


class LowStockConfig(_Strict):
    # A facing with this many units or fewer raises a low-stock alert; per-SKU overrides.
    default: int = Field(default=2, ge=0)
    skus: dict[str, int] = {}


class ConsoleMqtt(_Strict):
    # The console's own broker identity (`cartd broker-config` writes one named console); unset:
    # cartd's (which may not send maintenance requests on a broker with the generated ACL).
    username: str | None = None
    password_file: Path | None = None


class ConsoleConfig(_Strict):
    # Signed-in sessions last this long (then sign in again).
    session_ttl_s: float = Field(default=12 * 3600.0, ge=60, le=30 * 86400)
    # Mark the session cookie Secure (the console is served over HTTPS, e.g. behind a TLS proxy).
    secure_cookies: bool = False
    sso: SsoConfig = SsoConfig()
    mqtt: ConsoleMqtt = ConsoleMqtt()
    low_stock: LowStockConfig = LowStockConfig()


class ResendConfig(_Strict):
    # A seq gap that is still open after this long triggers a resend request to the unit.
    gap_wait_s: float = Field(default=1.0, ge=0)
    retry_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)


class LimitsConfig(_Strict):
    # A message larger than this is a dead letter (payload_too_large) holding only its topic, size
    # and SHA-256: never parsed, never stored. Item events are ~1 KB.
    max_payload_bytes: int = Field(default=65536, ge=1024)
    # An item event whose seq is this far above the highest seq known for its unit (received, or
    # the unit's own health last_seq) is refused (dead letter seq_implausible): it neither marks
    # the seqs in between as missing nor moves the unit's seq bookkeeping. A unit reserves seqs in
    # blocks of 1000, so a real restart jumps by less.
    max_seq_jump: int = Field(default=10000, ge=1000)


class BatchConfig(_Strict):
    # Messages processed per transaction (one commit, then the PUBACKs).
    max_messages: int = Field(default=1000, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)


class Config(_Strict):
    version: Literal[1] = 1
    store_id: str
    instance_id: str = "cartd-1"  # MQTT client id suffix; stable across restarts (persistent session)
    mqtt: MqttConfig = MqttConfig()
    storage: Storage
    catalogue: Path | None = None
    units: list[UnitConfig] = []
    association: AssociationConfig = AssociationConfig()
    receipts: ReceiptConfig = ReceiptConfig()
    review: ReviewConfig = ReviewConfig()
    console: ConsoleConfig = ConsoleConfig()
    resend: ResendConfig = ResendConfig()
    batch: BatchConfig = BatchConfig()
    limits: LimitsConfig = LimitsConfig()
    health_interval_s: float = Field(default=5.0, gt=0)
    tick_s: float = Field(default=0.2, gt=0)

    @field_validator("store_id", "instance_id")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not v or any(c in v for c in "/+#") or v.startswith("_"):
            raise ValueError(f"must be non-empty, not start with '_' and hold no / + #, got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_units(self) -> Config:
        seen: set[str] = set()
        for u in self.units:
            if u.unit_id in seen:
                raise ValueError(f"unit {u.unit_id!r} is listed twice")
            seen.add(u.unit_id)
        return self

    @property
    def base(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.store_id}"

    @property
    def client_id(self) -> str:
        return f"cartd-{self.store_id}-{self.instance_id}"


def _loc(loc: tuple[Any, ...]) -> str:
    return field_path(loc, {"storage": ("sqlite", "postgres")})


def _problems(err: ErrorDetails) -> list[str]:
    if err["type"] == "union_tag_invalid":
        msg = "unknown storage type; expected sqlite or postgres"
    elif err["type"] == "union_tag_not_found":
        msg = "required key 'type' is missing (sqlite or postgres)"
    else:
        msg = error_text(err)
    return [f"{_loc(err['loc']) or '(top level)'}: {msg}"]


def parse_config(data: Any, source: str | None = None) -> Config:
    return validate_config(Config, data, source, _problems)


def _resolve_paths(data: dict[str, Any], path: Path) -> dict[str, Any]:
    data = dict(data)
    base = path.parent
    for holder, key in ((data, "catalogue"), (data.get("storage"), "path"), ):
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and not os.path.isabs(holder[key]):
            holder = holder if holder is data else data.setdefault("storage", holder)
            holder[key] = str(base / holder[key])
    con = data.get("console")
    for mq in (data.get("mqtt"), con.get("mqtt") if isinstance(con, dict) else None):
        if isinstance(mq, dict) and isinstance(mq.get("password_file"), str) \
                and not os.path.isabs(mq["password_file"]):
            mq["password_file"] = str(base / mq["password_file"])
    return data


def load_config(path: str | Path) -> Config:
    """The file's config; ConfigError lines ``FILE:LINE: key path: message`` (exit 78), or one
    line and exit 66 when the file cannot be read."""
    return load_yaml_config(path, parse_config, _resolve_paths)
