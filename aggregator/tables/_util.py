"""Helpers shared by the table modules."""
from __future__ import annotations

CHUNK = 500  # rows per multi-row statement (SQLite allows 32766 parameters)


def marks(n: int) -> str:
    """``?,?,?`` for an IN list of n values."""
    return ",".join("?" * n)
