"""Incoming payloads: parse + validate fast (pydantic models that mirror the JSON Schemas).

The JSON Schemas in ``aggregator/schemas`` and ``daemon/schemas`` are the contract; these models
enforce the parts cartd relies on, at a cost that allows >10k events/s (jsonschema would be ~20×
slower). The tests check that what these models accept and reject agrees with the schemas on the
cases that matter. Unknown fields are ignored, as the contract asks.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

_TS = re.compile(
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z$"
)
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SESSION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _session_id(v: str) -> str:
    if not SESSION_RE.match(v):
        raise ValueError("must be 1..128 of letters, digits and . _ : -")
    return v


SessionId = Annotated[str, AfterValidator(_session_id)]


def parse_ts(s: object) -> float:
    """RFC 3339 UTC with milliseconds → epoch seconds (raises ValueError)."""
    if not isinstance(s, str) or not _TS.match(s):
        raise ValueError(f"not an RFC 3339 UTC timestamp with milliseconds: {s!r}")
    return datetime.fromisoformat(s).timestamp()  # 3.11 reads the Z; C speed, unlike strptime


def fmt_ts(t: float | None) -> str | None:
    if t is None:
        return None
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _ts(v: object) -> float:
    return parse_ts(v)


class Candidate(_Msg):
    sku: str | None
    quantity: int = Field(ge=0)
    score: float = Field(ge=0, le=1)


class ItemEvent(_Msg):
    schema_: Literal["gondola.item-event/1"] = Field(alias="schema")
    event_id: str
    store_id: str = Field(min_length=1)
    unit_id: str = Field(min_length=1)
    seq: int = Field(ge=1)
    shelf: str = Field(min_length=1)
    plates: list[int]
    type: Literal["pick", "put_back", "unknown_change"]
    sku: str | None
    quantity: int = Field(ge=0)
    t_start: float
    t_end: float
    delta_g: float
    confidence: float = Field(ge=0, le=1)
    candidates: list[Candidate]
    historical: bool = False
    review: bool = False     # the unit's own doubt (confidence below its detection.review_below)
    misplaced: bool = False  # a product that does not belong on these plates

    def flags(self, confidence_below: float, misplaced_returns: bool = True) -> str | None:
        """The unit's reasons to have a person look at this event, comma-separated (or None)."""
        out = []
        if self.type in ("pick", "put_back") and (self.review or self.confidence < confidence_below):
            out.append("low_confidence")
        if self.misplaced and misplaced_returns:
            out.append("misplaced")
        return ",".join(out) or None

    _t = field_validator("t_start", "t_end", mode="before")(lambda v: _ts(v))

    @field_validator("event_id")
    @classmethod
    def _eid(cls, v: str) -> str:
        if not (_ULID.match(v) or _UUID7.match(v)):
            raise ValueError("not a ULID or UUIDv7")
        return v

    def check(self) -> str | None:
        """Cross-field rules of the schema; returns a problem or None."""
        if self.type in ("pick", "put_back") and self.quantity < 1:
            return f"quantity must be ≥ 1 for {self.type}, got {self.quantity}"
        if self.t_end < self.t_start:
            return "t_end is before t_start"
        return None


class _SessionMsg(_Msg):
    session_id: SessionId
    t: float
    gate: str = Field(min_length=1)
    store_id: str | None = None

    _t = field_validator("t", mode="before")(lambda v: _ts(v))


class GateEntry(_SessionMsg):
    schema_: Literal["gondola.gate-entry/1"] = Field(alias="schema")
    shopper_ref: str | None = None


class GateExit(_SessionMsg):
    schema_: Literal["gondola.gate-exit/1"] = Field(alias="schema")


class Observation(_Msg):
    session_id: SessionId
    unit_id: str = Field(min_length=1)
    shelf: str | None
    confidence: float = Field(ge=0, le=1)


class Tracking(_Msg):
    schema_: Literal["gondola.tracking/1"] = Field(alias="schema")
    t: float
    observations: list[Observation]

    _t = field_validator("t", mode="before")(lambda v: _ts(v))


class BadMessage(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def decode(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage("malformed_json", f"not JSON: {str(exc).splitlines()[0][:200]}") from None


_M = TypeVar("_M", bound=_Msg)


def validate(model: type[_M], data: object) -> _M:
    if not isinstance(data, dict):
        raise BadMessage("schema_violation", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        parts = []
        for e in errs[:3]:
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            loc = loc.replace("schema_", "schema")
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
        raise BadMessage("schema_violation", "; ".join(parts) + more) from None


def health_fields(data: object) -> tuple[float | None, int | None]:
    """(t, outbox.last_seq) from a unit's retained health document; Nones when absent/bad."""
    if not isinstance(data, dict):
        return None, None
    t = None
    try:
        t = parse_ts(data.get("t"))
    except ValueError:
        pass
    ob = data.get("outbox")
    last = ob.get("last_seq") if isinstance(ob, dict) else None
    return t, last if isinstance(last, int) and not isinstance(last, bool) else None
