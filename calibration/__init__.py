"""Technician calibration CLI (`shelfcal`). It writes the same calibration state the daemon reads
(:mod:`daemon.calstate`); the guided commands are not built yet."""
