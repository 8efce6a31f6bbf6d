"""The engine's state and the helpers every job uses (dead letters, the outgoing messages).

Why a base class: each job of the engine (transactions, routing, sessions, association, gaps,
receipts) is a mixin in its own module, and they share one transaction's buffers. The buffers are
declared here, in one place, with named types, so a reader sees everything a transaction carries.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..catalogue import Catalogue
from ..config import Config
from ..messages import BadMessage, fmt_ts
from ..store import Store
from ..tables import deadletters
from ..tables.sessions import Span
from ..tables.tracking import TrackRow
from ..tables.units import SeqSpan
from ..trackindex import TrackIndex

log = logging.getLogger("aggregator.engine")

TRACK_WINDOW_S = 300.0   # tracking kept in memory for association; older questions go to the database

Message = tuple[str, bytes]  # (topic, payload) as received


@dataclass
class Outbound:
    """A message to publish after the transaction that produced it has committed."""
    topic: str
    payload: str
    qos: int = 1
    retain: bool = False
    kind: str | None = None  # "receipt" | "deadletter": mark published on PUBACK
    ref: str | None = None


class StagedLine(NamedTuple):
    """A cart line decided during a burst, written with the burst's others (flush_lines)."""
    session_id: str
    event_id: str
    sku: str | None
    signed: int
    reasons: list[str]
    evidence: str
    candidates: list[dict[str, object]]  # [{"session_id", "score"}], the best first


class UnitHealth(NamedTuple):
    """The newest health document of a unit seen in a transaction."""
    t: float
    last_seq: int | None
    depth: object  # the outbox depth as the unit reported it (validated where used)


class SpanCache(NamedTuple):
    """Sessions inside the store from ``frm`` on, read once per burst (see association.spans)."""
    frm: float
    spans: dict[str, Span]


class EngineBase:
    """State shared by the engine's jobs, and the helpers all of them use."""

    if TYPE_CHECKING:  # the joints between jobs: what one job's module calls in another's
        from .gaps import Watermark

        def _run_tx(self, fn: Callable[[], Any]) -> list[Outbound]: ...         # transactions
        def _tick(self) -> None: ...                                             # engine/__init__
        def _flush_units(self) -> None: ...
        def _flush_unit_docs(self) -> None: ...
        def _flush_tracking(self) -> None: ...
        def _is_event_topic(self, topic: str) -> bool: ...                       # routing
        def _apply(self, msgs: list[Message]) -> None: ...
        def _lock_gate_sessions(self, msgs: list[Message]) -> None: ...          # sessions
        def _entry(self, topic: str, payload: bytes) -> None: ...
        def _exit(self, topic: str, payload: bytes) -> None: ...
        def _tracking(self, topic: str, payload: bytes) -> None: ...             # feeds
        def _health(self, unit_id: str, payload: bytes) -> None: ...
        def _status(self, unit_id: str, payload: bytes) -> None: ...
        def _events(self, run: list[tuple[str, str, bytes]]) -> None: ...       # events
        def _pending(self, now: float) -> None: ...                              # association
        def _tracking_ready(self, t_end: float, received_at: float, now: float) -> bool: ...
        def _associate(self, event_id: str, unit_id: str, shelf: str, etype: str, sku: str | None, qty: int,
                       t_start: float, t_end: float, topic: str, *, from_memory: bool = False,
                       lo_hint: float | None = None, flags: str | None = None) -> None: ...
        def _flush_lines(self) -> None: ...
        def watermarks(self) -> dict[str, Watermark]: ...                       # gaps
        def _resend_reply(self, topic: str, unit_id: str, payload: bytes) -> None: ...
        def _scan_gaps(self, now: float) -> None: ...
        def _rebirth(self, unit: str, now: float) -> None: ...
        def _decisions(self, now: float) -> None: ...                            # reviews
        def _receipts(self, now: float) -> None: ...                             # receipts
        def _corrections(self, now: float) -> None: ...

    def __init__(self, cfg: Config, store: Store, catalogue: Catalogue, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.store = store
        self.catalogue = catalogue
        self.clock = clock
        self.base = cfg.base
        self.units_cfg = {u.unit_id: set(u.shelves) for u in cfg.units}
        self.counters: Counter[str] = Counter()
        self.deadletter_counts: Counter[str] = Counter()
        self._tracker_t: float | None = None
        # Recent tracking in memory (see trackindex.py); loaded from the database at start.
        self.tracks = TrackIndex(TRACK_WINDOW_S)
        self._tracks_dirty = True
        self._next_prune = 0.0
        self._warned_health: dict[str, float] = {}
        self._reset_tx()

    def _reset_tx(self) -> None:
        """Drop every per-transaction buffer (at the start of a transaction and after a rollback)."""
        self._out: list[Outbound] = []
        # Lines decided but not yet written (flush_lines), and a cache of the sessions inside the
        # store (dropped whenever a gate message is applied).
        self._lines: list[StagedLine] = []
        self._staged_qty: dict[tuple[str, str], int] = {}
        self._sessions: SpanCache | None = None
        # Written at the transaction's end in one fixed order (transactions.flush_shared).
        self._unit_seqs: dict[str, SeqSpan] = {}
        self._track_rows: list[TrackRow] = []
        self._feed_t: float | None = None
        self._unit_health: dict[str, UnitHealth] = {}
        self._unit_status: dict[str, str] = {}
        # The highest seq believed per unit (association.plausible_seq).
        self._seq_refs: dict[str, int | None] = {}

    # ---------------------------------------------------------------- helpers for every job

    def _not_future(self, what: str, t: float) -> None:
        """Refuse a time beyond the clock tolerance in the future (it would move a watermark)."""
        ahead = t - self.clock()
        if ahead > self.cfg.association.max_clock_skew_s:
            raise BadMessage("clock_skew", f"{what} time {fmt_ts(t)} is {ahead:.1f} s ahead of cartd's clock"
                                           f" (tolerance {self.cfg.association.max_clock_skew_s:g} s): refused")

    def _too_large(self, topic: str, payload: bytes) -> None:
        """Dead letter for an oversized message: topic, size and digest only, never the payload."""
        self.counters["messages"] += 1
        pre = self.base + "/"
        unit = None
        if topic.startswith(pre):
            first = topic[len(pre):].split("/", 1)[0]
            unit = first if first and not first.startswith("_") else None
        digest = hashlib.sha256(payload).hexdigest()[:16]
        self._deadletter("payload_too_large", topic,
                         f"{len(payload)} bytes (limit {self.cfg.limits.max_payload_bytes}), sha256 {digest}…:"
                         " not parsed, not stored", None, unit_id=unit)

    def _deadletter(self, reason: str, topic: str, detail: str, payload: bytes | str | None = None, *,
                    action: str = "kept", event_id: str | None = None, unit_id: str | None = None,
                    session_id: str | None = None) -> None:
        now = self.clock()
        if isinstance(payload, bytes):
            try:
                text: str | None = payload[:16384].decode("utf-8")
            except UnicodeDecodeError:
                text = base64.b64encode(payload[:12288]).decode()
        else:
            text = payload[:16384] if payload else None
        # The id derives from what was received, so a redelivered message (after a crash, or seen
        # by every instance on a plain subscription) does not make a second dead letter.
        key = (f"{reason}\x00{topic}\x00{event_id or ''}\x00{unit_id or ''}\x00{session_id or ''}\x00"
               f"{detail if payload is None else text}")
        dl = deadletters.DeadLetter(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:26].upper(), now,
                                    reason, action, topic, detail, event_id, unit_id, session_id, text)
        if not deadletters.insert(self.store, dl):
            self.counters["duplicate_deadletters"] += 1
            return
        self.deadletter_counts[reason] += 1
        log.warning("dead letter %s (%s) on %s: %s", reason, action, topic, detail)
        self._out.append(Outbound(f"{self.base}/_store/cartd/deadletter", json.dumps(deadletter_doc(dl)),
                                  kind="deadletter", ref=dl.id))


def deadletter_doc(dl: deadletters.DeadLetter) -> dict[str, object]:
    """The published form (schema gondola.deadletter/1)."""
    return {"schema": "gondola.deadletter/1", "id": dl.id, "t": fmt_ts(dl.t), "reason": dl.reason,
            "action": dl.action, "topic": dl.topic, "detail": dl.detail, "event_id": dl.event_id,
            "unit_id": dl.unit_id, "session_id": dl.session_id, "payload": dl.payload}
