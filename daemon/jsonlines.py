"""The JSON-lines files ``shelfd record`` writes (samples, camera frames): one home for their header.

Line 1 is a JSON object naming the ``format`` and describing the rest; a reader checks it before
reading any data so a wrong file is one line ``path:1: …``, not a traceback later.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .timefmt import now_iso


def create_with_header(path: Path, header: dict[str, Any]) -> IO[str]:
    """Create ``path`` (truncating) and write ``header`` plus ``created`` as its first line."""
    fh = open(path, "w", encoding="utf-8")
    fh.write(json.dumps({**header, "created": now_iso()}) + "\n")
    return fh


def read_header(path: Path, fmt: str, check: Callable[[dict[str, Any]], None], *, error: type[Exception],
                missing: str, noun: str, header_noun: str) -> dict[str, Any]:
    """The checked first line of ``path``; ``check`` coerces its fields in place (raising on bad ones).

    Errors are ``error`` with one line: ``path: <missing>``, ``path:1: not a Gondola <noun> (binary
    data)``, or ``path:1: not a Gondola <header_noun> (why)``.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except UnicodeDecodeError:
        raise error(f"{path}:1: not a Gondola {noun} (binary data)") from None
    try:
        h: dict[str, Any] = json.loads(first)  # not a dict: .get raises AttributeError, below
        if h.get("format") != fmt:
            raise ValueError(f"format is {h.get('format')!r}, expected {fmt!r}")
        check(h)
        return h
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise error(f"{path}:1: not a Gondola {header_noun} ({exc})") from None
