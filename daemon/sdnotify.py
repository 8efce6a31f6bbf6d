"""Minimal systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING) without a dependency.

Only active when ``NOTIFY_SOCKET`` is set (systemd ``Type=notify``); otherwise every call is a
no-op, so the daemon runs the same from a shell.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET")
        self._sock = None
        self._addr = None
        if addr:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]  # abstract namespace
            self._addr = addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if not self._sock:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as exc:  # systemd gone: nothing useful to do but say so once
            log.warning("sd_notify failed: %s", exc)
            self._sock = None

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
