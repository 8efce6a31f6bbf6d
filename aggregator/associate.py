"""Who made an item event: who stood at the shelf, judged against how the tracker fails.

Pure functions, no database and no MQTT: the engine hands in the tracking observations it holds
for ``(unit, shelf)`` and ``(unit, shelf unknown)`` over the event's window, who holds the SKU
(for a put-back), and gets back the winner, the review reasons and the candidates.

How an overhead tracker fails, and what each failure looks like at one shelf (aggregator/sim/
tracking.py plays them): it *drops* sightings (occlusion: the shopper at the shelf is reported
there at only some instants, ``SEEN_P``); it reports a shopper at a *neighbouring shelf* or at the
unit with the shelf unknown; it reports *passers-by* briefly, at low confidence; and it *swaps the
ids* of two shoppers at one unit for 1–3 s (``SWAP_MIN_S``..``SWAP_MAX_S``) when they pass each
other. Its confidence (above the passers-by) does not say when it is wrong. The swap is the one
that takes lines: while it lasts, the shelf's own shopper is reported under the other's id, and
two swaps in one stand can leave the real shopper with fewer sightings than an impostor.

So each candidate ``C`` is weighed as two explanations of its sightings at the shelf (confident
ones, ≥ ``min_confidence``; unknown-shelf reports name candidates but say nothing about which
shelf): *C stood there* (each sighting is the tracker seeing the shelf's shopper) or *C did not*
(its sightings are one identity swap, which fits only in a burst no longer than a swap lasts,
plus stray position noise at ``STRAY_P`` per sighting). The log-likelihood ratio of the two is
C's score; the scores of all candidates, normalised (softmax), are each one's posterior of being
the shopper at the shelf (0..1, summing to 1), given the tracker's failure rates. A long presence
beats any number of swaps (no swap lasts that long); between two bursts, the one a swap would
hardly explain (longer, or one of several) wins; a shopper seen only inside one short burst is
honestly uncertain, and the posterior says so. The presence-over-time sum (confidence-seconds) is
kept for ties and for the staff page.

Cart and body consistency, from the lines already made: a put-back is weighed towards who holds
the SKU (``not_holding_factor``); and one shopper stands at one shelf at a time, so a candidate
whose earlier line is a touch at another shelf during this event has its odds multiplied by
1 - that line's posterior (``busy``; the engine does not pass it yet: bench/review_bench.py's
``noisy + busy`` rows measure it).

Duplicates (a tracking message redelivered, or the same instant at the exact shelf and at the
unit) count once per (session, instant).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

UNKNOWN_SHELF_WEIGHT = 0.5  # "near the unit, shelf unknown" is weaker evidence than "at this shelf"

# The tracker's failure model (what aggregator/sim/tracking.py's noisy mode does; for a real
# tracker, measure it with a walk-through: who stood where, against what it reported). The rule
# is not sensitive to them (bench/review_bench.py: SEEN_P 0.5-0.7, STRAY_P 0.02-0.08, SWAP_P
# 0.2-0.6 move F1 by < 0.003) except SWAP_MAX_S: set it too short and long swaps take lines
# with a confident-looking posterior; too long costs little. Err long.
SEEN_P = 0.6       # the shopper at a shelf is reported there at an instant: 30 % dropped, 15 % misplaced
STRAY_P = 0.03     # someone not at the shelf is reported there at an instant: 8 % at a neighbouring
#                    shelf, 30 % dropped, 0.03 (two neighbours) to 0.06 (one)
SWAP_P = 0.4       # two shoppers at one unit at once exchange ids at some point
SWAP_MIN_S = 1.0   # an identity swap lasts SWAP_MIN_S..SWAP_MAX_S (uniform)
SWAP_MAX_S = 3.0
BUSY_FLOOR = 0.01  # busy elsewhere: odds × (1 - that line's posterior), never below this


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
    # (t, confidence) of each distinct instant it was seen at the event's own shelf, time order
    # (filled only when there is more than one candidate: one needs no comparing)
    at_shelf: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Decision:
    session_id: str
    reasons: list[str] = field(default_factory=list)
    candidates: list[tuple[str, float]] = field(default_factory=list)  # (session, posterior), best first


def presence(observations: Iterable[Sighting], shelf: str, *,
             rounded: bool = False) -> dict[str, Presence]:
    """observations: (session_id, shelf_seen, t, confidence), shelf_seen '' = unknown; rounded:
    t is already rounded to the millisecond (the instant key), as TrackIndex.window returns it.

    Returns per session: per distinct instant the best weighted confidence, summed; and the
    instants it was seen at the shelf itself."""
    # Hot path (once per item event, ~20 observations each): plain dicts, no per-row objects.
    per_instant: dict[tuple[str, float], float] = {}
    exact: dict[tuple[str, float], float] = {}
    get, get_exact = per_instant.get, exact.get
    for sid, sh, t, conf in observations:
        k = (sid, t if rounded else round(t, 3))
        if sh == shelf:
            w = conf
            if conf > get_exact(k, -1.0):
                exact[k] = conf
        else:
            w = conf * UNKNOWN_SHELF_WEIGHT
        if w > get(k, -1.0):
            per_instant[k] = w
    out: dict[str, Presence] = {}
    for (sid, _), w in per_instant.items():
        p = out.get(sid)
        if p is None:
            out[sid] = Presence(w, max(0.0, w), 1)
        else:
            p.evidence += w
            p.instants += 1
            if w > p.peak:
                p.peak = w
    if len(out) > 1:  # one candidate needs no more (decide gives it the line)
        for (sid, t), conf in exact.items():
            out[sid].at_shelf.append((t, conf))
        for p in out.values():
            p.at_shelf.sort()
    return out


def stood_there(times: list[float]) -> float:
    """Log-likelihood ratio: the shopper seen at the shelf at `times` (sorted, confident sightings)
    stood there, against: they stood elsewhere and their sightings here are one identity swap
    (a burst within a swap's length) plus stray position noise.

    Stood there: each sighting is the tracker seeing the shelf's shopper, SEEN_P against the
    1 − SEEN_P it misses one (the misses are the same under both: while a swap lasts, the shelf's
    shopper is reported under the other id). Elsewhere: the likelier of no swap (every sighting
    stray, STRAY_P each) and one swap (prior SWAP_P, lasting at least the burst's span) whose burst
    is the best run of sightings, the others stray."""
    n = len(times)
    if n == 0:
        return 0.0
    hit = math.log(SEEN_P / (1.0 - SEEN_P))
    stray = math.log(STRAY_P)
    gain, lo, hi = hit - stray, SWAP_MIN_S, SWAP_MAX_S
    best = -math.inf  # the best burst: d sightings × gain + log P(a swap lasts at least its span)
    j = 0
    for i in range(n):
        ti = times[i]
        while ti - times[j] >= hi:
            j += 1
        for k in range(j, i + 1):
            span = ti - times[k]
            v = (i - k + 1) * gain
            if span > lo:  # uniform SWAP_MIN_S..SWAP_MAX_S
                v += math.log((hi - span) / (hi - lo))
            if v > best:
                best = v
            if span <= lo:
                break  # a later start: fewer sightings, and no likelier a swap
    elsewhere = n * stray + max(0.0, math.log(SWAP_P) + best)
    return n * hit - elsewhere


def decide(evidence: dict[str, Presence], *, put_back: bool, holding: dict[str, int] | None, quantity: int,
           min_confidence: float, ambiguity_margin: float, not_holding_factor: float,
           busy: dict[str, float] | None = None) -> Decision | None:
    """The winner among the candidates (sessions inside the store, already filtered), or None.

    Each candidate's score is ``stood_there`` over its confident sightings at the shelf; the
    posteriors are the scores' softmax. put_back/holding: for a put-back, holding[sid] is how many
    of that SKU sid's cart holds; a candidate holding none has its odds multiplied by
    ``not_holding_factor`` (when there is more than one candidate), and a winner holding fewer than
    ``quantity`` is flagged ``put_back_not_in_cart``. busy: {session: posterior of its line at
    another shelf overlapping this event}; odds × (1 - it), and a winner still busy is flagged
    ``busy_elsewhere``. The winner is flagged ``ambiguous`` when the runner-up's posterior is
    within ``ambiguity_margin`` of its own, ``weak_evidence`` when its best sighting is below
    ``min_confidence``."""
    if not evidence:
        return None
    if len(evidence) == 1:
        (best,) = evidence
        single: list[str] = ["weak_evidence"] if evidence[best].peak < min_confidence else []
        if put_back and holding is not None and holding.get(best, 0) < quantity:
            single.append("put_back_not_in_cart")
        return Decision(best, single, [(best, 1.0)])
    # Rounded: equal counts are an exact tie (the model cannot tell them apart), broken below by
    # the presence-over-time sum, never by the order the floating-point sums were made in.
    score = {sid: stood_there([t for t, c in p.at_shelf if c >= min_confidence]) for sid, p in evidence.items()}
    if put_back and holding is not None and not_holding_factor > 0:
        log_f = math.log(not_holding_factor)
        score = {sid: s + (log_f if holding.get(sid, 0) <= 0 else 0.0) for sid, s in score.items()}
    if busy:
        score = {sid: s + math.log(max(BUSY_FLOOR, 1.0 - busy.get(sid, 0.0))) for sid, s in score.items()}
    score = {sid: round(s, 9) for sid, s in score.items()}
    top = max(score.values())
    odds = {sid: math.exp(s - top) for sid, s in score.items()}
    if put_back and holding is not None and not_holding_factor <= 0:
        # factor 0: a candidate holding none cannot have put it back, unless nobody holds it
        held = {sid: v for sid, v in odds.items() if holding.get(sid, 0) > 0}
        odds = {sid: (v if sid in held or not held else 0.0) for sid, v in odds.items()}
    total = sum(odds.values()) or 1.0
    # best first; equal posteriors: the larger presence-over-time sum, then the session id
    ranked = sorted(((sid, v / total) for sid, v in odds.items()),
                    key=lambda kv: (-kv[1], -evidence[kv[0]].evidence, kv[0]))
    best, best_p = ranked[0]
    reasons: list[str] = []
    if evidence[best].peak < min_confidence:
        reasons.append("weak_evidence")
    if len(ranked) > 1 and round(best_p - ranked[1][1], 9) < ambiguity_margin:
        reasons.append("ambiguous")
    if put_back and holding is not None and holding.get(best, 0) < quantity:
        reasons.append("put_back_not_in_cart")
    if busy and busy.get(best, 0.0) > 0.0:
        reasons.append("busy_elsewhere")
    return Decision(best, reasons, ranked)
