"""shelfcal's one-line errors and their sysexits codes."""
from __future__ import annotations

EX_OK = 0
EX_USAGE = 64        # wrong plate name, mass out of range, missing option
EX_DATAERR = 65      # degenerate or refused measurement, corrupt/foreign calibration, failed verify
EX_NOINPUT = 66      # a file to read is missing
EX_UNAVAILABLE = 69  # no samples, daemon not answering, a channel fault found by diag
EX_SOFTWARE = 70
EX_CANTCREAT = 73    # cannot write the calibration / config / report
EX_TEMPFAIL = 75     # plate never came to rest; the technician aborted: nothing written, try again
EX_CONFIG = 78
EX_INTERRUPTED = 130


class ShelfcalError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
