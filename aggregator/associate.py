"""Who made an item event: presence over the event's window, not the single best sighting.

Pure functions, no database and no MQTT: the engine hands in the tracking observations it holds
for ``(unit, shelf)`` and ``(unit, shelf unknown)`` over ``[t_start - tol, t_end + tol]``, who
holds the SKU (for a put-back), and gets back the winner, the review reasons and the candidates.

Why presence and not the highest confidence: a multi-camera tracker's confidence is not
correlated with being right, and its classic failure is an *identity swap* — two shoppers passing
each other exchange ids for a second or three. Under the old rule one swapped sighting at 0.9
beat the real shopper's dozen sightings at 0.8. Here each candidate's evidence is its
confidence integrated over time (confidence × tracker period, summed over the distinct instants
it was seen there), so a brief swap, a passer-by or a dropped observation moves the evidence by
the share of the window it lasted, not all of it. The candidates' scores are their shares of the
total evidence (0..1, summing to 1): the margin between the best two is then a plain "how sure",
and ``ambiguity_margin`` keeps its meaning (closer than that → ``needs_review``).

Duplicates (a tracking message redelivered, or the same instant at the exact shelf and at the
unit) count once per (session, instant): the best weight × confidence seen then.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

UNKNOWN_SHELF_WEIGHT = 0.5  # "near the unit, shelf unknown" is weaker evidence than "at this shelf"


class Sighting(NamedTuple):
    """One tracking observation as association reads it (from TrackIndex or the database)."""
    session_id: str
    shelf: str          # the shelf it was seen at; '' = unknown
    t: float
    confidence: float


@dataclass
class Presence:
    evidence: float = 0.0   # Σ weight × confidence over distinct instants (≈ confidence-seconds / period)
    peak: float = 0.0       # best single weight × confidence (for weak_evidence)
    instants: int = 0


@dataclass
class Decision:
    session_id: str
    reasons: list[str] = field(default_factory=list)
    candidates: list[tuple[str, float]] = field(default_factory=list)  # (session, share), best first


def presence(observations: Iterable[Sighting], shelf: str, *,
             rounded: bool = False) -> dict[str, Presence]:
    """observations: (session_id, shelf_seen, t, confidence), shelf_seen '' = unknown; rounded:
    t is already rounded to the millisecond (the instant key), as TrackIndex.window returns it.

    Returns evidence per session: per distinct instant the best weighted confidence, summed."""
    # Hot path (once per item event, ~20 observations each): plain dicts, no per-row objects.
    per_instant: dict[tuple[str, float], float] = {}
    get = per_instant.get
    for sid, sh, t, conf in observations:
        w = conf if sh == shelf else conf * UNKNOWN_SHELF_WEIGHT
        k = (sid, t if rounded else round(t, 3))
        if w > get(k, -1.0):
            per_instant[k] = w
    total: dict[str, float] = {}
    peak: dict[str, float] = {}
    count: dict[str, int] = {}
    for (sid, _), w in per_instant.items():
        if sid in total:
            total[sid] += w
            count[sid] += 1
            if w > peak[sid]:
                peak[sid] = w
        else:
            total[sid], peak[sid], count[sid] = w, max(0.0, w), 1
    return {sid: Presence(v, peak[sid], count[sid]) for sid, v in total.items()}


def decide(evidence: dict[str, Presence], *, put_back: bool, holding: dict[str, int] | None, quantity: int,
           min_confidence: float, ambiguity_margin: float, not_holding_factor: float) -> Decision | None:
    """The winner among the candidates (sessions inside the store, already filtered), or None.

    put_back/holding: for a put-back, holding[sid] is how many of that SKU sid's cart holds; a
    candidate holding none has its evidence multiplied by ``not_holding_factor`` (when there is
    more than one candidate), and a winner holding fewer than ``quantity`` is flagged
    ``put_back_not_in_cart``."""
    if not evidence:
        return None
    # A sighting at confidence 0 still names a candidate: keep it, with (almost) no weight.
    ev = {sid: max(p.evidence, 1e-9) for sid, p in evidence.items()}
    if put_back and holding is not None and len(ev) > 1:
        ev = {sid: v * (not_holding_factor if holding.get(sid, 0) <= 0 else 1.0) for sid, v in ev.items()}
    total = sum(ev.values())
    if total <= 0:  # not_holding_factor 0 and nobody holds it: fall back to the raw evidence
        ev = {sid: max(p.evidence, 1e-9) for sid, p in evidence.items()}
        total = sum(ev.values())
    ranked = sorted(((sid, v / total) for sid, v in ev.items()), key=lambda kv: (-kv[1], kv[0]))
    best, best_s = ranked[0]
    reasons: list[str] = []
    if evidence[best].peak < min_confidence:
        reasons.append("weak_evidence")
    if len(ranked) > 1 and best_s - ranked[1][1] < ambiguity_margin:
        reasons.append("ambiguous")
    if put_back and holding is not None and holding.get(best, 0) < quantity:
        reasons.append("put_back_not_in_cart")
    return Decision(best, reasons, ranked)
