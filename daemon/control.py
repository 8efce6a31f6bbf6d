"""Requests to a running unit, whatever carried them (MQTT request topics, the local socket).

A transport turns a message into a :class:`Request` and hands it to :meth:`Commands.submit` with
a ``reply`` callback; the handler's result (or its one-line error) goes back through ``reply`` as

    {"txid": ..., "command": ..., "ok": true,  "result": {...}}
    {"txid": ..., "command": ..., "ok": false, "error": "one line saying what is wrong"}

Why two kinds of handler: most commands touch the sample pipeline (tare a plate, reload the
calibration), which belongs to the sample thread alone, so they are queued and run by
:meth:`drain`, which the service loop calls between sample blocks. Commands that only read the
outbox (``resend``) run at once on the caller's thread so they work even while the pipeline is busy.

Requests from the store's network are untrusted input, so nothing here can hurt the unit:

* :func:`parse_request` refuses a payload over ``MAX_REQUEST_BYTES`` or nested deeper than
  ``MAX_REQUEST_DEPTH`` *before* ``json.loads`` (a cheap byte scan), so 6 KB of ``[[[[...`` is a
  one-line error, not a ``RecursionError`` in the MQTT thread; the refusal carries the ``txid``
  when one can be read off the raw bytes (:class:`RequestRefused`).
* :meth:`Commands.admit` is a token bucket per command (``RATES``); the pipeline queue holds at
  most ``max_queued`` requests. Both refuse with a one-line error and count it.
* Commands that change what the unit reports or how it weighs (``DESTRUCTIVE``) are logged, one
  WARNING line each, with the requester's identity and the outcome.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[["Request"], dict[str, Any]]

MAX_TXID_LEN = 128
MAX_REQUEST_BYTES = 16 * 1024   # the largest request (a resend range, a tare) is under 1 KiB
MAX_REQUEST_DEPTH = 8           # {"plates": ["1/2"]} is depth 2
MAX_IDENTITY_LEN = 64

#: Commands whose every use is logged with the requester's identity: they change the calibration
#: (tare, rezero, calibration_reload) or silence plates (maintenance).
DESTRUCTIVE = frozenset({"tare", "rezero", "maintenance", "calibration_reload"})

#: Token buckets per command: (requests per second, burst). Others get DEFAULT_RATE; names the
#: unit does not know share one bucket, so a flood of made-up names costs one bucket.
DEFAULT_RATE = (5.0, 10)
RATES: dict[str, tuple[float, int]] = {
    "raw": (1.0, 3),          # up to 20k rows a reply
    "snapshot": (2.0, 5),
    "rebirth": (1.0, 3),      # republishes three retained documents
    "resend": (20.0, 40),     # coalesced and paced by the publisher; refusals are cheap
}
UNKNOWN_BUCKET = "\x00unknown"
UNKNOWN_RATE = (2.0, 5)

_IDENTITY = re.compile(rf"^[A-Za-z0-9_.@:+-]{{1,{MAX_IDENTITY_LEN}}}$")
_TXID_RAW = re.compile(rb'"txid"\s*:\s*"((?:[^"\\]|\\.){1,%d})"' % MAX_TXID_LEN)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


class CommandError(Exception):
    """A request that cannot be done; the message is sent back as the reply's ``error``."""


class RequestRefused(CommandError):
    """A payload refused before it became a request; ``txid`` when it could be read off the bytes."""

    def __init__(self, message: str, txid: str | None = None, kind: str = "malformed"):
        super().__init__(message)
        self.txid = txid
        self.kind = kind


@dataclass
class Request:
    command: str
    txid: str
    args: dict[str, Any] = field(default_factory=dict)
    origin: str = "local"  # "mqtt" or "socket": for logs and for handlers that care
    identity: str = ""     # who asked (logged with destructive commands); defaults to origin

    def __post_init__(self) -> None:
        if not self.identity:
            self.identity = self.origin


def recover_txid(raw: bytes | str) -> str | None:
    """The ``txid`` of a payload that will not be parsed (too big, too deep, not JSON), if a
    plain ``"txid": "..."`` appears in its first 4 KiB; else None."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    m = _TXID_RAW.search(raw[:4096])
    if not m:
        return None
    try:
        txid = json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None
    return txid if isinstance(txid, str) and txid else None


def nesting_depth(raw: bytes) -> int:
    """How deep ``[``/``{`` nest in a JSON text, brackets inside strings not counted. A byte scan
    with two regexes: no recursion, linear in the size, whatever the input."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_JSON_STRING.sub(b"", raw)):
        if b in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def decode_limited(payload: bytes | str, *, max_bytes: int = MAX_REQUEST_BYTES,
                   max_depth: int = MAX_REQUEST_DEPTH) -> Any:
    """``json.loads`` behind a size and a nesting limit; RequestRefused (one line) otherwise."""
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise RequestRefused(f"payload is {len(raw)} bytes; requests are at most {max_bytes}",
                             recover_txid(raw), "too_large")
    if raw.count(b"[") + raw.count(b"{") > max_depth:  # only then is the scan worth doing
        depth = nesting_depth(raw)
        if depth > max_depth:
            raise RequestRefused(f"payload nests {depth} levels deep; requests nest at most {max_depth}",
                                 recover_txid(raw), "too_deep")
    try:
        return json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestRefused(f"payload is not JSON: {first}", recover_txid(raw)) from None


def parse_request(command: str, payload: bytes | str | dict[str, Any], origin: str, *,
                  max_bytes: int = MAX_REQUEST_BYTES, max_depth: int = MAX_REQUEST_DEPTH) -> Request:
    """Build a Request from a JSON payload ``{"txid": ..., "identity"?: ..., ...args}``.

    RequestRefused (a CommandError) when it is too big, too deep, not JSON or malformed."""
    if isinstance(payload, (bytes, bytearray, str)):
        payload = decode_limited(payload, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(payload, dict):
        raise RequestRefused("payload must be a JSON object like {\"txid\": \"...\"}")
    args = dict(payload)
    txid = args.pop("txid", None)
    if not isinstance(txid, str) or not txid or len(txid) > MAX_TXID_LEN:
        raise RequestRefused(f"txid must be a non-empty string of at most {MAX_TXID_LEN} characters")
    args.pop("command", None)
    identity = args.pop("identity", None)
    if identity is not None and not (isinstance(identity, str) and _IDENTITY.match(identity)):
        raise RequestRefused(f"identity must be 1..{MAX_IDENTITY_LEN} characters of A-Z a-z 0-9 _ . @ : + -",
                             txid)
    return Request(command, txid, args, origin, identity or "")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.t = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def take(self, n: float = 1.0) -> bool:
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def take_up_to(self, n: int) -> int:
        """As many whole tokens as are there, at most ``n``."""
        self._refill()
        k = max(0, min(int(n), int(self.tokens)))
        self.tokens -= k
        return k


class Commands:
    """The registry of commands a unit answers, and the queue of pipeline-thread requests."""

    def __init__(self, *, max_queued: int = 64, rates: dict[str, tuple[float, int]] | None = None,
                 default_rate: tuple[float, int] = DEFAULT_RATE, clock: Callable[[], float] = time.monotonic) -> None:
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self.max_queued = max(1, max_queued)
        self._queue: queue.Queue[tuple[Request, Reply]] = queue.Queue(self.max_queued)
        self._lock = threading.Lock()
        self._rates = dict(RATES if rates is None else rates)
        self._default_rate = default_rate
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.counters = {"requests": 0, "ok": 0, "errors": 0, "faults": 0,
                         "malformed": 0, "rate_limited": 0, "queue_full": 0}

    def register(self, name: str, handler: Handler, *, in_pipeline: bool = True) -> None:
        if not name or "/" in name or "+" in name or "#" in name:
            raise ValueError(f"bad command name {name!r}")
        self._handlers[name] = (handler, in_pipeline)

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def admit(self, command: str) -> str | None:
        """Rate limit per command, checked before any parsing: None to go ahead, else the one-line
        refusal (counted). Untrusted transports (MQTT) call it; the local socket does not."""
        if command in self._handlers:
            key, (rate, burst) = command, self._rates.get(command, self._default_rate)
        else:
            key, (rate, burst) = UNKNOWN_BUCKET, UNKNOWN_RATE
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, burst, self._clock)
            if bucket.take():
                return None
            self.counters["requests"] += 1
            self.counters["rate_limited"] += 1
            self.counters["errors"] += 1
        return f"rate limit: at most {rate:g} {command} requests a second (burst {burst}); ask again later"

    def count_malformed(self) -> None:
        """A transport refused a payload before it became a request (too big, too deep, not JSON)."""
        with self._lock:
            self.counters["requests"] += 1
            self.counters["malformed"] += 1
            self.counters["errors"] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counters)
        out["queued"] = self._queue.qsize()
        return out

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
            try:
                self._queue.put_nowait((req, reply))
            except queue.Full:
                with self._lock:
                    self.counters["queue_full"] += 1
                self._finish(req, reply, error=f"busy: {self.max_queued} requests already waiting for the "
                                               f"sample loop; ask again later")
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
            self._audit(req, f"refused: {exc}")
            self._finish(req, reply, error=str(exc))
        except Exception as exc:  # a bad request must never take the unit down
            log.exception("command %s (txid %s) failed", req.command, req.txid)
            with self._lock:
                self.counters["faults"] += 1
            self._audit(req, f"failed: {type(exc).__name__}")
            self._finish(req, reply, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            self._audit(req, "done" + (f", calibration {result['calibration_id']}"
                                       if isinstance(result, dict) and result.get("calibration_id") else ""))
            self._finish(req, reply, result=result or {})

    @staticmethod
    def _audit(req: Request, outcome: str) -> None:
        """One WARNING line per destructive command: who (identity, transport), what, the outcome."""
        if req.command not in DESTRUCTIVE:
            return
        what = req.command + (" with force" if req.command == "tare" and req.args.get("force") else "")
        plates = req.args.get("plates", req.args.get("plate"))
        log.warning("%s of %s requested by %r via %s (txid %s): %s", what,
                    plates if plates is not None else "-", req.identity, req.origin, req.txid, outcome)

    def _finish(self, req: Request, reply: Reply, *, result: dict[str, Any] | None = None,
                error: str | None = None) -> None:
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
        except Exception:  # the requester went away; nothing else to do
            log.warning("could not reply to %s (txid %s)", req.command, req.txid, exc_info=True)
