"""Transactions and their retry policy, and the one ordered flush of shared rows.

Why here: every write of the engine happens inside ``run_tx``; what is retried, split or
dead-lettered when a transaction fails is decided in this module only. The service PUBACKs a
burst as soon as ``handle_batch`` returns, so ``handle_batch`` returns only when every message of
the burst is committed (applied, or kept as a dead letter).
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from ..store import RetryTransaction
from ..tables import tracking, units
from .base import TRACK_WINDOW_S, EngineBase, Message, Outbound

log = logging.getLogger("aggregator.engine")

_RETRIES_BURST = 6       # deadlocks in a row before a burst is applied in halves
_RETRIES_ONE = 40        # ... and for a single message (≈ 15 s of back-off) before it is dead-lettered
_RETRIES_TICK = 6

# The flush-order invariant. Shared rows (rows other instances write too) are written last in each
# transaction and always in this order — sessions (sorted, by the staged lines), units (sorted:
# health/status documents, then seq bookkeeping), tracking rows (sorted by key), the tracking feed —
# so two instances' transactions take their row locks in the same order and cannot deadlock.
# Writes another instance already made are skipped (UPDATE ... WHERE value < new): no lock at all.
# ``flush_shared`` is the only place that runs them at the end of a transaction; tests check the
# order of the statements it issues (tests/test_cartd_engine_split.py).
FLUSH_ORDER = ("lines", "unit_docs", "unit_seqs", "tracking")


class Transactions(EngineBase):
    def handle_batch(self, msgs: list[Message]) -> list[Outbound]:
        """Apply messages in one transaction; returns what to publish after the commit.

        When this returns, *every* message of msgs is committed (applied, or kept as a dead letter):
        the service acknowledges them all to the broker next, and an acknowledged message is never
        delivered again. A deadlock or serialization failure between instances retries the burst;
        a burst that keeps hitting them is applied in halves (smaller transactions, fewer locks
        held), down to one message, which is retried longer. An unexpected fault in one message is
        isolated by replaying the burst one message per transaction and dead-lettering the culprit.
        """
        if self.store.pg and len(msgs) > 1:
            # Several instances: the messages every instance receives (gates, tracking, unit
            # documents) are committed in their own short transaction before the burst's item
            # events, so the events' transaction never holds a session row while it waits for a
            # shared row another instance is writing (or the reverse): no deadlock between them.
            shared = [m for m in msgs if not self._is_event_topic(m[0])]
            if shared and len(shared) < len(msgs):
                events = [m for m in msgs if self._is_event_topic(m[0])]
                return self.handle_batch(shared) + self.handle_batch(events)
        tries = _RETRIES_BURST if len(msgs) > 1 else _RETRIES_ONE
        last: BaseException | None = None
        for attempt in range(tries):
            try:
                return self._run_tx(lambda: self._apply(msgs))
            except RetryTransaction as exc:
                last = exc
                log.debug("batch of %d, retry %d: %s", len(msgs), attempt, exc)
                self.counters["tx_retries"] += 1
                # Growing, jittered back-off: instances that deadlocked together do not retry in step.
                time.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * (0.5 + random.random()))
            except Exception as exc:
                last = exc
                if len(msgs) == 1:
                    break
                log.exception("fault in a batch of %d messages; applying them one by one", len(msgs))
                out: list[Outbound] = []
                for m in msgs:
                    out += self.handle_batch([m])
                return out
        else:
            if len(msgs) > 1:
                # Contention, not a bad message. (This used to dead-letter msgs[0] and return, and
                # the service then acknowledged the rest of the burst unapplied: events lost.)
                self.counters["tx_splits"] += 1
                log.warning("a burst of %d messages hit %d deadlocks in a row (%s); applying it in halves",
                            len(msgs), tries, last)
                mid = len(msgs) // 2
                return self.handle_batch(msgs[:mid]) + self.handle_batch(msgs[mid:])
        # One message that keeps failing: keep it as a dead letter and move on (never a crash loop).
        topic, payload = msgs[0]
        self.counters["internal_errors"] += 1
        log.error("cannot apply a message on %s (%s); kept as dead letter internal_error", topic,
                  f"{type(last).__name__}: {last}" if last else "?", exc_info=last)
        return self._run_tx(lambda: self._deadletter("internal_error", topic,
                                                     "the aggregator failed on this message (see its log)", payload))

    def tick(self) -> list[Outbound]:
        """The timed work in one transaction (retried on contention; skipped after 6 tries)."""
        for attempt in range(_RETRIES_TICK):
            try:
                return self._run_tx(self._tick)
            except RetryTransaction:
                self.counters["tx_retries"] += 1
                time.sleep(0.01 * (attempt + 1))
        return []

    def _run_tx(self, fn: Callable[[], Any]) -> list[Outbound]:
        self._reset_tx()
        self.store.begin()
        try:
            if self._tracks_dirty:
                self._load_tracks()
            fn()
            self.flush_shared()
            self.store.commit()
        except BaseException:
            self.store.rollback()
            self._reset_tx()
            # Tracking added to memory by this transaction is not in the database: reload.
            self._tracks_dirty = True
            self._tracker_t = None
            raise
        out, self._out = self._out, []
        return out

    def flush_shared(self) -> None:
        """Write the transaction's staged shared rows in FLUSH_ORDER (see there), then check that
        nothing is left staged: a write staged after its turn would take a lock out of order."""
        steps = {"lines": self._flush_lines, "unit_docs": self._flush_unit_docs,
                 "unit_seqs": self._flush_units, "tracking": self._flush_tracking}
        for name in FLUSH_ORDER:
            steps[name]()
        assert not (self._lines or self._unit_seqs or self._track_rows or self._feed_t is not None
                    or self._unit_health or self._unit_status), "a shared row was staged during the ordered flush"

    def _load_tracks(self) -> None:
        now = self.clock()
        frm = now - TRACK_WINDOW_S
        self.tracks.load(tracking.since(self.store, frm), frm)
        self._tracks_dirty = False
        self._next_prune = now + 30.0

    # ---------------------------------------------------------------- the shared-row flushes

    def _flush_units(self) -> None:
        """Seq bookkeeping per unit, in unit order. A missing row is created; an existing one is only
        touched when this burst advances it (with several instances the other one often already
        has): a skipped UPDATE locks nothing."""
        if self._unit_seqs:
            items, self._unit_seqs = sorted(self._unit_seqs.items()), {}
            units.advance_seqs(self.store, items)

    def _flush_unit_docs(self) -> None:
        """The newest health and the last status per unit seen in this transaction, in unit order."""
        if not self._unit_health and not self._unit_status:
            return
        health, status = self._unit_health, self._unit_status
        self._unit_health, self._unit_status = {}, {}
        for unit in sorted(set(health) | set(status)):
            units.ensure(self.store, unit)
            if unit in health:
                t, last, depth = health[unit]
                # Keep the newest (t, last_seq) pair; a fresh unit row starts its seq baseline
                # here (we do not ask for history from before cartd knew the unit). The daemon's
                # last_seq is the last seq *issued*; the `depth` events still in its outbox are on
                # their way, not history, so the baseline stops before them and a hole among them
                # is asked for.
                units.newer_health(self.store, unit, t, last)
                if last is not None:
                    if isinstance(depth, int) and not isinstance(depth, bool) and 0 < depth <= last:
                        last -= depth
                    units.baseline(self.store, unit, last)
            if unit in status:
                units.changed_status(self.store, unit, status[unit], self.clock())

    def _flush_tracking(self) -> None:
        if self._track_rows:
            rows, self._track_rows = sorted(self._track_rows), []
            tracking.insert(self.store, rows)
        if self._feed_t is not None:
            t, self._feed_t = self._feed_t, None
            tracking.advance_feed(self.store, t)
