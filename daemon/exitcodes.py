"""Exit codes of every Gondola command (shelfd, shelfcal, cartd): sysexits(3), one home.

systemd's units rely on them: ``RestartPreventExitStatus=64 66 78`` (restarting cannot fix a usage
or configuration error, nor a missing config file), 75 is retried after ``RestartSec``.
"""
from __future__ import annotations

EX_OK = 0
EX_USAGE = 64        # wrong option, plate name, mass out of range
EX_DATAERR = 65      # bad recording data; a refused measurement, a failed verify
EX_NOINPUT = 66      # a file to read is missing
EX_UNAVAILABLE = 69  # a service (broker, daemon, samples) is not there
EX_SOFTWARE = 70     # an internal fault
EX_CANTCREAT = 73    # cannot write (state_dir, calibration, report)
EX_TEMPFAIL = 75     # try again later: nothing was changed
EX_CONFIG = 78       # configuration error (also: a database newer than the code)
EX_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), by shell convention rather than sysexits
