"""Log output that reads well both in a terminal and in ``journalctl``.

Under systemd, stderr is a stream to journald and ``JOURNAL_STREAM`` names it (``dev:inode``).
Then each record is one line, starts with an sd-daemon(3) ``<N>`` syslog priority (so
``journalctl -p warning`` works and errors show red) and carries no timestamp (journald stamps
it). A traceback would become a dozen unrelated journal entries, so in journal mode an exception
is folded into the record's one line (type, message, innermost frames). In a terminal the usual
``time LEVEL name: message`` with the full traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import IO, TypeAlias

#: what logging hands Formatter.formatException
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

#: Python level → syslog priority (sd-daemon(3): <3> err, <4> warning, <6> info, <7> debug)
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
                   logging.DEBUG: 7}


def stderr_is_journal(env: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> bool:
    """True when stderr *is* the journald stream systemd handed us (not merely inherited env)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def priority(levelno: int) -> int:
    for lvl in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= lvl:
            return SYSLOG_PRIORITY[lvl]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` on one line; exceptions folded into that line."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        exc, record.exc_info, record.exc_text = record.exc_info, None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info = exc
        if exc and exc[1] is not None:
            line += " — " + fold_exception(exc[1])
        return f"<{priority(record.levelno)}>" + line.replace("\r", " ").replace("\n", " ⏎ ")

    def formatException(self, ei: ExcInfo) -> str:  # pragma: no cover - format() handles it
        return fold_exception(ei[1]) if ei[1] is not None else super().formatException(ei)


def fold_exception(exc: BaseException, frames: int = 3) -> str:
    """``Type: message (at file.py:12 in f ← file.py:40 in g)``, innermost frame first."""
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " ← ".join(f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in reversed(tb))
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (at {where})" if where else text


def setup(level: str = "info", journal: bool | None = None) -> None:
    journal = stderr_is_journal() if journal is None else journal
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def error_line(msg: str, journal: bool | None = None) -> str:
    """A one-line error for stderr before logging is set up (config problems): ``<3>`` in journal."""
    journal = stderr_is_journal() if journal is None else journal
    return f"<3>{msg}" if journal else msg
