"""Item events in: validate, refuse what must not be stored, dedupe by ``event_id``, then hand the
new ones to association.

Refused before anything is stored (dead letter, kept): a unit_id or store_id that differs from the
topic's, a t_end beyond the clock tolerance in the future, a seq implausibly far above the unit's.
A known event_id with different content is a conflict, not a duplicate.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from pydantic import ValidationError

from ..messages import BadMessage, ItemEvent, decode, fmt_ts, validate
from ..tables import events, seqs, units
from ..tables.units import SeqSpan
from .base import EngineBase


class EventMsg(NamedTuple):
    """An item event as routed: its topic, the unit the topic names, the payload."""
    topic: str
    unit: str
    payload: bytes


class _Accepted(NamedTuple):
    topic: str
    ev: ItemEvent
    payload: bytes


class Events(EngineBase):
    def _events(self, run: list[tuple[str, str, bytes]]) -> None:
        """A run of item events: validate each, insert them all at once (the primary key on event_id
        dedupes, RETURNING says which were new), then associate the new ones in order."""
        evs: list[_Accepted] = []
        seen: dict[str, bytes] = {}
        now = self.clock()
        skew = self.cfg.association.max_clock_skew_s
        for topic, topic_unit, payload in map(EventMsg._make, run):
            self.counters["messages"] += 1
            try:
                try:
                    # Fast path: pydantic parses the JSON itself (no dict of Python objects first).
                    ev = ItemEvent.model_validate_json(payload)
                except ValidationError:
                    # The usual path says precisely what is wrong (malformed_json / schema_violation).
                    ev = validate(ItemEvent, decode(payload))
                problem = ev.check()
                if problem:
                    raise BadMessage("schema_violation", problem)
            except BadMessage as bad:
                self._deadletter(bad.reason, topic, bad.detail, payload)
                continue
            ids = {"event_id": ev.event_id, "unit_id": topic_unit}
            if ev.unit_id != topic_unit:
                self._deadletter("topic_mismatch", topic, f"unit_id {ev.unit_id!r} differs from the topic's unit"
                                 f" {topic_unit!r}: refused", payload, **ids)
                continue
            if ev.store_id != self.cfg.store_id:
                self._deadletter("wrong_store", topic, f"store_id {ev.store_id!r} differs from the topic's store"
                                 f" {self.cfg.store_id!r}: refused", payload, **ids)
                continue
            if ev.t_end > now + skew:
                # Refused, never clamped: a wrong time would also pick the wrong shopper. Its seq is
                # accounted for (seq_notes), so it is not asked for again and again.
                self._deadletter("clock_skew", topic, f"unit {ev.unit_id} event t_end {fmt_ts(ev.t_end)} is"
                                 f" {ev.t_end - now:.1f} s ahead of cartd's clock (tolerance {skew:g} s): refused",
                                 payload, **ids)
                if self._plausible_seq(ev.unit_id, ev.seq):
                    seqs.note(self.store, ev.unit_id, ev.seq, "clock_skew", now)
                continue
            if not self._plausible_seq(ev.unit_id, ev.seq):
                ref = self._seq_refs.get(ev.unit_id)
                self._deadletter("seq_implausible", topic, f"unit {ev.unit_id} seq {ev.seq} is {ev.seq - (ref or 0)}"
                                 f" above its highest known seq {ref} (limit {self.cfg.limits.max_seq_jump}):"
                                 " refused; seqs in between are not marked missing", payload, **ids)
                continue
            first = seen.get(ev.event_id)
            if first is not None:  # twice in one burst
                if self._same_event(first, payload):
                    self.counters["duplicates"] += 1
                else:
                    self._conflict(topic, ev, payload, now)
                continue
            seen[ev.event_id] = payload
            self._seq_refs[ev.unit_id] = max(self._seq_refs.get(ev.unit_id) or 0, ev.seq)
            evs.append(_Accepted(topic, ev, payload))
        if not evs:
            return
        new = events.insert_new(self.store, [
            events.NewEvent(ev.event_id, ev.unit_id, ev.seq, ev.shelf, ev.type, ev.sku, ev.quantity, ev.t_start,
                            ev.t_end, ev.confidence, int(ev.historical), now, payload.decode("utf-8"),
                            ev.flags(self.cfg.review.event_confidence_below, self.cfg.review.misplaced_returns))
            for _, ev, payload in evs])
        if len(new) < len(evs):
            # Already known event_ids: a redelivery (same content; a resend adds "historical") is a
            # duplicate; anything else is a conflict, kept for people to look at.
            stored = events.payloads(self.store, [a.ev.event_id for a in evs if a.ev.event_id not in new])
            for topic, ev, payload in evs:
                if ev.event_id in new:
                    continue
                prev = stored.get(ev.event_id)
                if prev is not None and not self._same_event(prev.encode("utf-8"), payload):
                    self._conflict(topic, ev, payload, now)
        lo_all = min(a.ev.t_start for a in evs) - self.cfg.association.clock_tolerance_s
        for topic, ev, payload in evs:
            if ev.event_id not in new:
                self.counters["duplicates"] += 1
                continue
            self._new_event(topic, ev, payload, now, lo_all)
        self._flush_lines()

    @staticmethod
    def _same_event(a: bytes, b: bytes) -> bool:
        """The same event, ignoring ``historical`` (a resend marks it)."""
        if a == b:
            return True
        try:
            da, db = json.loads(a), json.loads(b)
        except ValueError:
            return False
        if isinstance(da, dict) and isinstance(db, dict):
            da.pop("historical", None)
            db.pop("historical", None)
        return bool(da == db)

    def _conflict(self, topic: str, ev: ItemEvent, payload: bytes, now: float) -> None:
        """Same event_id, different content: the first one stays; this one is kept as a dead letter
        and its seq is accounted for (not asked for again, never recorded as lost)."""
        self.counters["conflicts"] += 1
        self._deadletter("duplicate_event_conflict", topic,
                         f"event_id {ev.event_id} already received with different content (unit {ev.unit_id}"
                         f" seq {ev.seq}): the first one stands, this one is not applied", payload,
                         event_id=ev.event_id, unit_id=ev.unit_id)
        seqs.note(self.store, ev.unit_id, ev.seq, "duplicate_event_conflict", now)

    def _plausible_seq(self, unit: str, seq: int) -> bool:
        """Is seq within ``limits.max_seq_jump`` of the highest seq known for the unit? The reference
        is what cartd has received or been told by the unit's own health (which, under the broker
        ACL, only the unit can publish); a unit cartd knows nothing about yet has none (any seq)."""
        if unit not in self._seq_refs:
            ref: int | None = None
            row = units.seq_ref(self.store, unit)
            if row is not None:
                known = [v for v in (row.contiguous_seq if row.contiguous_seq is not None and row.contiguous_seq >= 0
                                     else None, row.max_seq if row.max_seq else None, row.health_last_seq)
                         if v is not None]
                ref = max(known) if known else None
            h = self._unit_health.get(unit)
            if h is not None and h.last_seq is not None:
                ref = max(ref or 0, h.last_seq)
            self._seq_refs[unit] = ref
        ref = self._seq_refs[unit]
        return ref is None or seq <= ref + self.cfg.limits.max_seq_jump

    def _new_event(self, topic: str, ev: ItemEvent, payload: bytes, now: float, lo_all: float) -> None:
        self.counters["events"] += 1
        if ev.historical:
            self.counters["historical"] += 1
        # Unit seq bookkeeping once per unit per batch (written by flush_shared before commit).
        span = self._unit_seqs.get(ev.unit_id)
        self._unit_seqs[ev.unit_id] = (SeqSpan(min(span.lo, ev.seq), max(span.hi, ev.seq)) if span
                                       else SeqSpan(ev.seq, ev.seq))
        reason = None
        if self.units_cfg and ev.unit_id not in self.units_cfg:
            reason, detail = "unknown_unit", f"unit {ev.unit_id} is not in cartd's units list"
        elif self.units_cfg.get(ev.unit_id) and ev.shelf not in self.units_cfg[ev.unit_id]:
            reason, detail = "unknown_shelf", f"unit {ev.unit_id} has no shelf {ev.shelf!r} in cartd's config"
        if reason:
            events.mark_deadletter(self.store, ev.event_id)
            self._deadletter(reason, topic, detail, payload, event_id=ev.event_id, unit_id=ev.unit_id)
            return
        if self._tracking_ready(ev.t_end, now, now):
            self._associate(
                ev.event_id,
                ev.unit_id,
                ev.shelf,
                ev.type,
                ev.sku,
                ev.quantity,
                ev.t_start,
                ev.t_end,
                topic,
                from_memory=True,
                lo_hint=lo_all,
                flags=ev.flags(self.cfg.review.event_confidence_below, self.cfg.review.misplaced_returns),
            )
        else:
            self.counters["waiting_for_tracking"] += 1
