"""Technician calibration CLI (`shelfcal`, docs/calibration.md).

cli.py (the commands) · link.py (a running shelfd's control socket, or the unit's own drivers) ·
guided.py (rest, zero, points, sessions, the atomic write) · fit.py (least squares and the checks
that refuse a point) · diag.py (verdicts per channel) · planogram.py · report.py · camera.py.
It writes the same calibration state the daemon reads (:mod:`daemon.calstate`).
"""
