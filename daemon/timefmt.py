"""Timestamps, one home: how Gondola writes and reads times.

* :func:`rfc3339` / :func:`parse_rfc3339`: the wire format of item events, status and health
  (``2020-04-22T05:06:49.657Z``: UTC, milliseconds).
* :func:`now_iso`: a document's "when" in files a person reads (calibration, camera ROIs, recording
  headers, the technician log): ``2020-04-22T05:06:49+00:00``, seconds.
* :func:`file_stamp`: a time in a file name that sorts (``20200422T050649Z``).
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def rfc3339(t: float) -> str:
    """Epoch seconds → ``2020-04-22T05:06:49.657Z`` (UTC, milliseconds)."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_rfc3339(s: Any) -> float | None:
    """An RFC 3339 time with a zone → epoch seconds; None for anything else (no zone, not a string)."""
    if not isinstance(s, str):
        return None
    try:
        dt = datetime.fromisoformat(s)  # 3.11 reads the Z
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


def now_iso() -> str:
    """Now, UTC, to the second: ``2020-04-22T05:06:49+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_stamp(micros: bool = False) -> str:
    """Now, UTC, for a file name: ``20200422T050649Z`` (``…T050649.123456Z`` with ``micros``)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ" if micros else "%Y%m%dT%H%M%SZ")
