"""Gondola shelf-unit daemon (`shelfd`).

A sample travels one way through these packages:
``sensing`` (drivers: GPIO, IIO, sim, replay) → ``signal`` (calibration, glitch rejection,
rest/active detection) → ``events`` (identification against the planogram) → ``publish``
(SQLite outbox, MQTT). ``pipeline`` wires them together; ``cli`` is the entry point.
"""

__version__ = "0.1.0"
