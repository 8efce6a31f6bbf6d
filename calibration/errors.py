"""shelfcal's one-line error; its exit codes are sysexits, from :mod:`daemon.exitcodes`."""
from __future__ import annotations


class ShelfcalError(Exception):
    """One line for the technician (``shelfcal: <message>``) and the exit code to leave with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
