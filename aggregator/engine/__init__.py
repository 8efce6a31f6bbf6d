"""The aggregator's logic: messages in, database rows and outgoing messages out.

No MQTT here: ``handle_batch`` takes (topic, payload) pairs and ``tick`` runs the timed work; both
run one transaction and return the messages to publish *after* the commit. The service acknowledges
the incoming messages only after that commit, so a crash anywhere replays them, and every write is
idempotent (event_id primary key, ON CONFLICT DO NOTHING, state transitions guarded by WHERE).

One module per job, each a mixin over ``base.EngineBase`` (the state a transaction carries):

- transactions.py  transactions, retry/split policy, the ordered flush of shared rows (FLUSH_ORDER)
- routing.py       which handler a topic goes to (add a cartd topic here)
- sessions.py      gate entry/exit
- feeds.py         tracking, unit health and status
- events.py        item events: validation, refusals, dedupe
- association.py   which shopper an event belongs to; cart lines
- gaps.py          seq gaps, resend requests, lost events, watermarks
- reviews.py       staff review decisions (queued by the console) applied to lines
- receipts.py      receipts and corrections
- publication.py   publish-after-commit bookkeeping, the health document

SQL lives in aggregator/tables/ (one module per table), the schema in aggregator/schema.py.
"""
from __future__ import annotations

from .association import Association
from .base import TRACK_WINDOW_S, Message, Outbound
from .events import Events
from .feeds import Feeds
from .gaps import LEADER_GAPS, Gaps, Watermark, watermarks
from .publication import Publication
from .receipts import Receipts, cart
from .reviews import Reviews
from .routing import Routing
from .sessions import Sessions
from .transactions import FLUSH_ORDER, Transactions

__all__ = ["FLUSH_ORDER", "TRACK_WINDOW_S", "Engine", "Message", "Outbound", "Watermark", "cart", "watermarks"]


class Engine(Transactions, Routing, Sessions, Feeds, Events, Association, Gaps, Reviews, Receipts, Publication):
    """cartd's engine: ``handle_batch``, ``tick``, ``mark_published``, ``unpublished``, ``health``."""

    def _tick(self) -> None:
        now = self.clock()
        self._pending(now)
        if self.store.try_leader(LEADER_GAPS):
            self._scan_gaps(now)
        self._decisions(now)
        self._receipts(now)
        self._corrections(now)


