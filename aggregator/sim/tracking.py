"""The overhead-camera tracking feed, derived from the plan: who is reaching into which shelf.

A batch every ``PERIOD_S`` (the contract asks for at least every 0.5 s; an empty batch says
"nobody near a shelf at t" and that the tracker is alive). Two modes:

- ``clean``: every standing shopper observed at their shelf every period, confidence 0.9–1.0;
- ``noisy``: what real multi-camera trackers do on a busy floor —
  * dropped observations (occlusion): each one lost with ``drop_p``, plus whole-batch outages;
  * position noise: reported at the neighbouring shelf of the unit (``pos_p``) or at the unit
    with the shelf unknown (``null_p``);
  * identity swaps: two shoppers at the same unit at the same time exchange ids for 1–3 s
    (``swap_p`` per such encounter), the classic tracker failure when people pass each other;
  * passers-by: a shopper walking between shelves is briefly reported at a shelf they walk past,
    with low confidence (``ghost_p`` per walk);
  * confidence 0.5–0.95, uncorrelated with being right (trackers do not know when they are wrong).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .plan import Plan, Stand
from .store import Store

PERIOD_S = 0.5


@dataclass
class NoiseParams:
    drop_p: float = 0.3
    outage_p: float = 0.01      # per batch: the whole batch is lost
    pos_p: float = 0.08
    null_p: float = 0.07
    swap_p: float = 0.4
    ghost_p: float = 0.3
    conf: tuple[float, float] = (0.5, 0.95)


CLEAN_CONF = (0.9, 1.0)


def batches(plan: Plan, store: Store, mode: str = "clean", seed: int = 1,
            noise: NoiseParams | None = None) -> list[tuple[float, list[dict[str, Any]]]]:
    """[(t, observations)] every ``PERIOD_S`` from the first entry to the last exit."""
    if mode not in ("clean", "noisy"):
        raise ValueError(f"tracking mode must be clean or noisy, got {mode!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 1 if mode == "noisy" else 0]))
    nz = noise or NoiseParams()
    stands = sorted(plan.stands, key=lambda s: s.t_arrive)
    if not plan.sessions:
        return []
    t_first = min(s.t_entry for s in plan.sessions)
    n = int((plan.end_s - t_first) / PERIOD_S) + 2
    times = t_first + PERIOD_S * np.arange(n)
    shelves_of = {u.unit_id: list(u.shelves) for u in store.units}

    # identity swaps: pairs of stands at one unit that overlap in time
    swaps: list[tuple[float, float, str, str]] = []
    ghosts: list[tuple[float, float, str, str, str]] = []   # (a, b, session, unit, shelf)
    if mode == "noisy":
        for i, sa in enumerate(stands):
            for sb in stands[i + 1:]:
                if sb.t_arrive >= sa.t_leave:
                    break
                if sa.unit_id != sb.unit_id or sa.session_id == sb.session_id:
                    continue
                lo, hi = max(sa.t_arrive, sb.t_arrive), min(sa.t_leave, sb.t_leave)
                if hi - lo > 1.0 and rng.random() < nz.swap_p:
                    d = float(rng.uniform(1.0, 3.0))
                    s0 = float(rng.uniform(lo, max(lo, hi - d)))
                    swaps.append((s0, s0 + d, sa.session_id, sb.session_id))
        by_session: dict[str, list[Stand]] = {}
        for s in stands:
            by_session.setdefault(s.session_id, []).append(s)
        for sid, ss in by_session.items():
            for prev, nxt in zip(ss, ss[1:]):
                if nxt.t_arrive - prev.t_leave > 1.5 and rng.random() < nz.ghost_p:
                    g0 = float(rng.uniform(prev.t_leave, nxt.t_arrive - 1.0))
                    u = store.units[int(rng.integers(len(store.units)))].unit_id
                    gshelf = shelves_of[u][int(rng.integers(len(shelves_of[u])))]
                    ghosts.append((g0, g0 + float(rng.uniform(0.5, 1.5)), sid, u, gshelf))

    out: list[tuple[float, list[dict[str, Any]] | None]] = []
    j0 = 0
    for t in times:
        t = float(t)
        while j0 < len(stands) and stands[j0].t_leave < t - 60:
            j0 += 1
        obs: list[dict[str, Any]] = []
        if mode == "noisy" and rng.random() < nz.outage_p:
            out.append((t, None))  # the tracker was down: no batch at all
            continue
        for s in stands[j0:]:
            if s.t_arrive > t:
                break
            if s.t_leave < t:
                continue
            shelf: str | None
            sid, unit, shelf = s.session_id, s.unit_id, s.shelf
            if mode == "clean":
                obs.append(_obs(sid, unit, shelf, rng.uniform(*CLEAN_CONF)))
                continue
            if rng.random() < nz.drop_p:
                continue
            for a, b, x, y in swaps:
                if a <= t <= b and sid in (x, y):
                    sid = y if sid == x else x
                    break
            draw = rng.random()
            if draw < nz.pos_p:
                unit_shelves = shelves_of[unit]
                i = unit_shelves.index(s.shelf)
                shelf = unit_shelves[min(len(unit_shelves) - 1, i + 1)] \
                    if (rng.random() < 0.5 and i + 1 < len(unit_shelves)) or i == 0 else unit_shelves[i - 1]
            elif draw < nz.pos_p + nz.null_p:
                shelf = None
            obs.append(_obs(sid, unit, shelf, rng.uniform(*nz.conf)))
        for a, b, sid, unit, shelf in ghosts:
            if a <= t <= b:
                obs.append(_obs(sid, unit, shelf, rng.uniform(0.2, 0.45)))
        out.append((t, obs))
    return [(t, o) for t, o in out if o is not None]


def _obs(sid: str, unit: str, shelf: str | None, conf: float) -> dict[str, Any]:
    return {"session_id": sid, "unit_id": unit, "shelf": shelf, "confidence": round(float(conf), 3)}
