"""The local control transport: a unix socket in ``state_dir`` for `shelfcal` on the unit.

Protocol: newline-delimited JSON. A request line ``{"command": "tare", "txid": "...", ...args}``
gets exactly one reply line, the :mod:`daemon.control` reply document. Requests on one
connection are answered in order; several clients may connect at once.

Access is the file's: mode 0660, so the daemon's user and group (technicians in the ``shelfd``
group) may talk to it and nobody else. A stale socket left by a killed daemon is replaced; a live
one (another daemon on the same ``state_dir``) is not, and this transport stays off.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from .control import CommandError, Commands, RequestRefused, decode_limited, parse_request

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


class ControlSocket:
    def __init__(self, path: Path, commands: Commands, reply_timeout_s: float = 30.0):
        self.path = Path(path)
        self.commands = commands
        self.reply_timeout_s = reply_timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        if self.path.exists() or self.path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(0.5)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink(missing_ok=True)  # stale: its daemon is gone
            else:
                log.error("control socket %s is in use by another process (a second shelfd on this "
                          "state_dir?); local control is off", self.path)
                return False
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # never a moment with wider access than 0660
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        s.listen(8)
        s.settimeout(0.5)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        sock = self._sock
        if sock is None:  # stopped before this thread ran
            return
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        f = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                line = f.readline(MAX_LINE)
                if not line:
                    return
                if not line.strip():
                    continue
                reply = self._answer(line)
                conn.sendall((json.dumps(reply, allow_nan=False, default=str) + "\n").encode())
        except OSError:
            return
        finally:
            f.close()
            conn.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            # the same depth limit as MQTT requests: a deep line must not raise RecursionError here
            doc = decode_limited(line, max_bytes=MAX_LINE)
        except RequestRefused as exc:
            return {"txid": exc.txid, "command": None, "ok": False, "error": f"request refused: {exc}"}
        command = doc.get("command") if isinstance(doc, dict) else None
        if not isinstance(command, str) or not command:
            return {"txid": doc.get("txid") if isinstance(doc, dict) else None, "command": None, "ok": False,
                    "error": "request needs \"command\""}
        try:
            req = parse_request(command, doc, "socket")
        except CommandError as exc:
            return {"txid": doc.get("txid"), "command": command, "ok": False, "error": str(exc)}
        done = threading.Event()
        box: list[dict[str, Any]] = []

        def reply(d: dict[str, Any]) -> None:
            box.append(d)
            done.set()

        self.commands.submit(req, reply)
        if not done.wait(self.reply_timeout_s):
            return {"txid": req.txid, "command": command, "ok": False,
                    "error": f"no answer within {self.reply_timeout_s:.0f} s (sample loop stalled?)"}
        safe: dict[str, Any] = _json_safe(box[0])
        return safe


def _json_safe(d: Any) -> Any:
    """NaN/inf are not JSON: send them as null."""
    if isinstance(d, float):
        return None if d != d or d in (float("inf"), float("-inf")) else d
    if isinstance(d, dict):
        return {k: _json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_json_safe(v) for v in d]
    return d


def call(path: Path, command: str, args: dict[str, Any] | None = None, *, txid: str | None = None,
         timeout_s: float = 10.0) -> dict[str, Any]:
    """One request, one reply (a client for shelfcal and tests). Raises ConnectionRefusedError /
    FileNotFoundError when no daemon listens, TimeoutError when it does not answer."""
    import uuid

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
        msg = {"command": command, "txid": txid or uuid.uuid4().hex, **(args or {})}
        s.sendall((json.dumps(msg) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no reply from {path} within {timeout_s:g} s") from None
            if not chunk:
                raise ConnectionResetError(f"{path} closed the connection without a reply")
            buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply
    finally:
        s.close()


DRIVERS_LOCK = ".drivers.lock"


def acquire_drivers_lock(state_dir: Path) -> int | None:
    """The load cells belong to one process at a time: shelfd, or shelfcal when it opens them
    itself. An exclusive flock on ``state_dir/.drivers.lock`` held for the process's lifetime
    (the kernel drops it when the process dies, however it dies). Returns the fd, or None when
    another process holds it."""
    import fcntl

    fd = os.open(Path(state_dir) / DRIVERS_LOCK, os.O_RDWR | os.O_CREAT, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def drivers_lock_holder(state_dir: Path) -> str:
    try:
        return (Path(state_dir) / DRIVERS_LOCK).read_text().strip() or "?"
    except OSError:
        return "?"
