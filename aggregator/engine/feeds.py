"""Tracking and the units' own documents (health, status): the feeds every instance receives.

Why apart: these messages reach *every* cartd instance (plain subscriptions), so applying them
must be idempotent and must only stage shared rows; transactions.flush_shared writes them, in
its fixed order, at the end of the transaction.
"""
from __future__ import annotations

import logging

from ..messages import BadMessage, Tracking, decode, fmt_ts, health_fields, validate
from ..tables.tracking import TrackRow
from .base import EngineBase, UnitHealth

log = logging.getLogger("aggregator.engine")


class Feeds(EngineBase):
    def _tracking(self, topic: str, payload: bytes) -> None:
        m = validate(Tracking, decode(payload))
        self._not_future("tracking", m.t)
        rows = [TrackRow(o.unit_id, o.shelf or "", m.t, o.session_id, o.confidence) for o in m.observations]
        # Written at the end of the transaction, sorted (flush_shared).
        self._track_rows += rows
        self._feed_t = m.t if self._feed_t is None else max(self._feed_t, m.t)
        # This instance's own view: tracking is delivered in order to every instance, so when our
        # tracker_t passes an event's t_end we have committed every observation up to it.
        self._tracker_t = max(self._tracker_t or m.t, m.t)
        for r in rows:
            self.tracks.add(*r)
        now = self.clock()
        if now >= self._next_prune:
            self.tracks.prune(now)
            self._next_prune = now + 30.0
        self.counters["tracking"] += 1
        self.counters["observations"] += len(rows)

    def _health(self, unit_id: str, payload: bytes) -> None:
        depth = None
        try:
            data = decode(payload)
            t, last = health_fields(data)
            ob = data.get("outbox") if isinstance(data, dict) else None
            depth = ob.get("depth") if isinstance(ob, dict) else None
        except BadMessage:
            t = last = None
        if t is None:
            self.counters["unit_health_unusable"] += 1
            return
        now = self.clock()
        if t > now + self.cfg.association.max_clock_skew_s:
            # The document cannot describe a moment after we received it: clamp, so a unit clock
            # running ahead never moves its watermark ahead of time.
            self.counters["unit_health_clamped"] += 1
            if now - self._warned_health.get(unit_id, float("-inf")) >= 60.0:
                self._warned_health[unit_id] = now
                log.warning("unit %s health time %s is %.1f s ahead of cartd's clock: taken as now (check its NTP)",
                            unit_id, fmt_ts(t), t - now)
            t = now
        # Applied at the end of the transaction (flush_shared): the newest per unit.
        prev = self._unit_health.get(unit_id)
        if prev is None or t > prev.t:
            self._unit_health[unit_id] = UnitHealth(t, last, depth)
        if last is not None and unit_id in self._seq_refs:
            self._seq_refs[unit_id] = max(self._seq_refs[unit_id] or 0, last)
        self.counters["unit_health"] += 1

    def _status(self, unit_id: str, payload: bytes) -> None:
        try:
            data = decode(payload)
        except BadMessage:
            data = None
        if not payload:
            return  # a cleared retained status
        state = data.get("state") if isinstance(data, dict) else None
        if state not in ("online", "degraded", "stopped", "offline"):
            self.counters["unit_status_unusable"] += 1
            return
        self._unit_status[unit_id] = state  # applied at the end of the transaction (flush_shared)
