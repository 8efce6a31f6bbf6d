"""Topic routing: which handler a received message goes to.

Why a module of its own: this is where a new cartd topic is added (a branch in ``_handle``, a
handler in the job's module, and the subscription in service.py). Item events are the volume, so
runs of them skip the general dispatch and are applied together (one INSERT per run).
"""
from __future__ import annotations

from ..messages import BadMessage
from .base import EngineBase, Message


class Routing(EngineBase):
    def _is_event_topic(self, topic: str) -> bool:
        """``{base}/{unit}/events`` with a real unit id (not ``_store`` or a deeper path)."""
        pre = self.base + "/"
        if not (topic.startswith(pre) and topic.endswith("/events")):
            return False
        unit = topic[len(pre):-len("/events")]
        return bool(unit) and "/" not in unit and not unit.startswith("_")

    def _apply(self, msgs: list[Message]) -> None:
        """Apply a burst in order; runs of item events are applied together (one INSERT per run)."""
        run: list[tuple[str, str, bytes]] = []
        ev_prefix = self.base + "/"
        limit = self.cfg.limits.max_payload_bytes
        if any(len(p) > limit for _, p in msgs):
            for topic, payload in msgs:
                if len(payload) > limit:
                    self._too_large(topic, payload)
            msgs = [m for m in msgs if len(m[1]) <= limit]
        if self.store.pg:
            self._lock_gate_sessions(msgs)
        for topic, payload in msgs:
            if topic.startswith(ev_prefix) and topic.endswith("/events"):
                unit = topic[len(ev_prefix):-len("/events")]
                if unit and "/" not in unit and not unit.startswith("_"):
                    run.append((topic, unit, payload))
                    continue
            if run:
                self._events(run)
                run = []
            self._handle(topic, payload)
        if run:
            self._events(run)

    def _handle(self, topic: str, payload: bytes) -> None:
        """One message that is not part of a run of item events."""
        self.counters["messages"] += 1
        if not topic.startswith(self.base + "/"):
            self._deadletter("unexpected_topic", topic, "topic outside this store's tree", payload)
            return
        parts = topic[len(self.base) + 1:].split("/")
        try:
            if parts[0] == "_store":
                if parts[1:2] == ["gates"]:
                    self._flush_lines()
                    self._sessions = None  # a gate changes who is inside
                if parts[1:] == ["gates", "entry"]:
                    self._entry(topic, payload)
                elif parts[1:] == ["gates", "exit"]:
                    self._exit(topic, payload)
                elif parts[1:] == ["tracking"]:
                    self._tracking(topic, payload)
                else:
                    self._deadletter("unexpected_topic", topic, "not a topic cartd consumes", payload)
            elif len(parts) == 2 and parts[1] == "events":
                self._events([(topic, parts[0], payload)])
            elif len(parts) == 2 and parts[1] == "health":
                self._health(parts[0], payload)
            elif len(parts) == 2 and parts[1] == "status":
                self._status(parts[0], payload)
            elif len(parts) == 3 and parts[1:] == ["res", "resend"]:
                self._resend_reply(topic, parts[0], payload)
            else:
                self._deadletter("unexpected_topic", topic, "not a topic cartd consumes", payload)
        except BadMessage as bad:
            self._deadletter(bad.reason, topic, bad.detail, payload)
