"""Publication bookkeeping: receipts and dead letters are stored before they are published and
marked published on the broker's PUBACK; what is still unmarked is published again (same bytes)
when the service (re)connects. Also the instance's health document.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..messages import fmt_ts
from ..tables import deadletters, receipts, sessions, units
from .base import EngineBase, Outbound, deadletter_doc


class Publication(EngineBase):
    def mark_published(self, refs: Sequence[tuple[str, str]]) -> None:
        """(kind, ref) pairs the broker acknowledged: receipts and dead letters not sent again."""
        if not refs:
            return

        def mark() -> None:
            for kind, ref in refs:
                (receipts.mark_published if kind == "receipt" else deadletters.mark_published)(self.store, ref)
        self._run_tx(mark)

    def unpublished(self) -> list[Outbound]:
        out = [Outbound(f"{self.base}/_store/receipts/{sid}", p, kind="receipt", ref=rid)
               for rid, sid, p in receipts.unpublished(self.store)]
        for dl in deadletters.unpublished(self.store):
            out.append(Outbound(f"{self.base}/_store/cartd/deadletter", json.dumps(deadletter_doc(dl)),
                                kind="deadletter", ref=dl.id))
        self.store.end_read()
        return out

    def health(self) -> dict[str, Any]:
        try:
            open_n = sessions.count(self.store, "open")
            waiting = sessions.count(self.store, "exited")
            per_unit = {}
            for u, contig, mx, status in units.summaries(self.store):
                per_unit[u] = {"contiguous_seq": contig, "last_seq": mx, "status": status}
            for u, wm in self.watermarks().items():
                if u in per_unit:
                    t = wm.t
                    per_unit[u]["watermark"] = None if t is None else ("inf" if t == float("inf") else fmt_ts(t))
        finally:
            self.store.end_read()
        c: dict[str, Any] = dict(self.counters)
        c["deadletters"] = dict(self.deadletter_counts)
        return {"t": fmt_ts(self.clock()), "instance": self.cfg.instance_id, "version": __version__,
                "counters": c, "open_sessions": open_n, "awaiting_receipt": waiting, "units": per_unit}
