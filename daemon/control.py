"""Requests to a running unit, whatever carried them (MQTT request topics, the local socket).

A transport turns a message into a :class:`Request` and hands it to :meth:`Commands.submit` with
a ``reply`` callback; the handler's result (or its one-line error) goes back through ``reply`` as

    {"txid": ..., "command": ..., "ok": true,  "result": {...}}
    {"txid": ..., "command": ..., "ok": false, "error": "one line saying what is wrong"}

Why two kinds of handler: most commands touch the sample pipeline (tare a plate, reload the
calibration), which belongs to the sample thread alone, so they are queued and run by
:meth:`drain`, which the service loop calls between sample blocks. Commands that only read the
outbox (``resend``) run at once on the caller's thread so they work even while the pipeline is busy.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[["Request"], dict[str, Any]]

MAX_TXID_LEN = 128


class CommandError(Exception):
    """A request that cannot be done; the message is sent back as the reply's ``error``."""


@dataclass
class Request:
    command: str
    txid: str
    args: dict[str, Any] = field(default_factory=dict)
    origin: str = "local"  # "mqtt" or "socket": for logs and for handlers that care


def parse_request(command: str, payload: bytes | str | dict, origin: str) -> Request:
    """Build a Request from a JSON payload ``{"txid": ..., ...args}``; CommandError when malformed."""
    import json

    if isinstance(payload, (bytes, str)):
        try:
            payload = json.loads(payload or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CommandError(f"payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError("payload must be a JSON object like {\"txid\": \"...\"}")
    args = dict(payload)
    txid = args.pop("txid", None)
    if not isinstance(txid, str) or not txid or len(txid) > MAX_TXID_LEN:
        raise CommandError(f"txid must be a non-empty string of at most {MAX_TXID_LEN} characters")
    args.pop("command", None)
    return Request(command, txid, args, origin)


class Commands:
    """The registry of commands a unit answers, and the queue of pipeline-thread requests."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._queue: queue.Queue[tuple[Request, Reply]] = queue.Queue()
        self._lock = threading.Lock()
        self.counters = {"requests": 0, "ok": 0, "errors": 0, "faults": 0}

    def register(self, name: str, handler: Handler, *, in_pipeline: bool = True) -> None:
        if not name or "/" in name or "+" in name or "#" in name:
            raise ValueError(f"bad command name {name!r}")
        self._handlers[name] = (handler, in_pipeline)

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def submit(self, req: Request, reply: Reply) -> None:
        """Run or queue a request; ``reply`` is called exactly once (possibly on another thread)."""
        with self._lock:
            self.counters["requests"] += 1
        entry = self._handlers.get(req.command)
        if entry is None:
            self._finish(req, reply, error=f"unknown command {req.command!r}; known: {', '.join(self.names)}")
            return
        handler, in_pipeline = entry
        if in_pipeline:
            self._queue.put((req, reply))
        else:
            self._run(handler, req, reply)

    def drain(self, limit: int = 16) -> int:
        """Run queued pipeline-thread requests (called by the service loop); returns how many ran."""
        n = 0
        while n < limit:
            try:
                req, reply = self._queue.get_nowait()
            except queue.Empty:
                break
            self._run(self._handlers[req.command][0], req, reply)
            n += 1
        return n

    def fail_pending(self, reason: str) -> None:
        """Answer every queued request with ``reason`` (the unit is stopping)."""
        while True:
            try:
                req, reply = self._queue.get_nowait()
            except queue.Empty:
                return
            self._finish(req, reply, error=reason)

    def _run(self, handler: Handler, req: Request, reply: Reply) -> None:
        try:
            result = handler(req)
        except CommandError as exc:
            self._finish(req, reply, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bad request must never take the unit down
            log.exception("command %s (txid %s) failed", req.command, req.txid)
            with self._lock:
                self.counters["faults"] += 1
            self._finish(req, reply, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            self._finish(req, reply, result=result or {})

    def _finish(self, req: Request, reply: Reply, *, result: dict | None = None, error: str | None = None) -> None:
        doc: dict[str, Any] = {"txid": req.txid, "command": req.command, "ok": error is None}
        if error is None:
            doc["result"] = result
        else:
            doc["error"] = error
            log.info("command %s from %s (txid %s) refused: %s", req.command, req.origin, req.txid, error)
        with self._lock:
            self.counters["ok" if error is None else "errors"] += 1
        try:
            reply(doc)
        except Exception:  # noqa: BLE001 - the requester went away; nothing else to do
            log.warning("could not reply to %s (txid %s)", req.command, req.txid, exc_info=True)
