"""Minimal systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING, BARRIER), no dependency.

Only active when ``NOTIFY_SOCKET`` is set (systemd ``Type=notify``); otherwise every call is a
no-op, so the daemon runs the same from a shell. What the unit relies on (sd_notify(3)):

- ``READY=1`` once the sample source runs; ``STATUS=`` is the line `systemctl status` shows.
- ``WATCHDOG=1`` is sent only when the caller saw the sample pipeline make progress, and only if
  systemd asked for a watchdog (``WATCHDOG_USEC``, and ``WATCHDOG_PID`` is us when set). Pings
  are thinned to one per quarter of the watchdog period: the loop calls ``watchdog()`` for every
  block, but systemd needs far fewer.
- ``status_and_wait()`` sends a status and then a ``BARRIER=1`` (sd_notify_barrier(3)): a process
  about to exit (a config error) otherwise races systemd, which drops messages from PIDs that are
  already gone, and the reason would not reach `systemctl status`.
"""
from __future__ import annotations

import array
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr: str | None = None
        self._clock = clock
        if addr and (addr.startswith("/") or addr.startswith("@")):
            if addr.startswith("@"):
                addr = "\0" + addr[1:]  # abstract namespace
            self._addr = addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str, fds: list[int] | None = None) -> bool:
        sock, addr = self._sock, self._addr
        if not sock or addr is None:  # the address is set whenever the socket is
            return False
        data = "\n".join(lines).encode()
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sock.sendmsg([data], anc, 0, addr)
            else:
                sock.sendto(data, addr)
            return True
        except OSError as exc:  # systemd gone: nothing useful to do but say so once
            log.warning("sd_notify failed: %s", exc)
            self._sock = None
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        """The sample pipeline made progress: keep the watchdog fed (thinned, see module doc)."""
        if self.watchdog_s is None:
            return
        now = self._clock()
        if now - self._last_ping >= self.watchdog_s / 4:
            if self.send("WATCHDOG=1"):
                self._last_ping = now

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def barrier(self, timeout: float = 2.0) -> bool:
        """Wait until systemd has processed everything sent before (sd_notify_barrier(3))."""
        if not self._sock:
            return False
        r, w = os.pipe()
        try:
            sent = self.send("BARRIER=1", fds=[w])
            os.close(w)
            w = -1
            if not sent:
                return False
            # systemd closes its copy of the write end once it has read the message: POLLHUP
            p = select.poll()
            p.register(r, select.POLLHUP)
            return bool(p.poll(int(timeout * 1000)))
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def status_and_wait(self, status: str, timeout: float = 2.0) -> None:
        self.status(status)
        self.barrier(timeout)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
