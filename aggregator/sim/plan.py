"""The shoppers' plan: who enters when, which shelves they stand at, what they take and return,
when they leave. Deterministic for a seed; times are seconds after the store clock's ``t0``.

The plan is made first and then performed: each unit's simulator gets its shelves' interactions
as a script (``sensing.script``), the gates and tracking are played from the same plan, and the
truth (what each shopper really leaves with) comes out of it too.

Physical rules the plan keeps, because the shelves and the tracking cannot be better than them:

- one shopper at a shelf at a time, and ``SHELF_GAP_S`` between one leaving and the next arriving
  (the aggregator matches an event to whoever was tracked there from ``t_start - 2 s`` to
  ``t_end + 2 s``, and the simulator renders one interaction per shelf at a time);
- a shopper stays at the shelf until the shelf has come back to rest after their last touch;
- items are taken only from facings that still hold them; a return is of an item the shopper holds.
"""
from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .store import Store

SHELF_GAP_S = 4.5      # between one shopper leaving a shelf and the next arriving there
RING_S = 2.6           # a touched shelf needs this long after the hand leaves to be at rest again
APPROACH_S = (0.8, 1.6)  # standing at the shelf before the hand goes in
BETWEEN_S = 1.0        # the same shopper's next touch on the same shelf, after rest


@dataclass
class PlanParams:
    shoppers: int = 5
    seed: int = 1
    arrival_gap_s: float = 6.0        # mean gap between entries (Poisson arrivals)
    visits: tuple[int, int] = (1, 4)  # shelves a shopper stands at (inclusive range)
    second_item_p: float = 0.25       # a second product from the same shelf
    quantity_p: tuple[float, float, float] = (0.78, 0.17, 0.05)  # take 1, 2 or 3 units at once
    return_p: float = 0.25            # a shopper puts one held item back at some point
    wrong_place_p: float = 0.35       # ... and of those, onto the wrong plate/shelf of that unit
    nonevent_p: float = 0.0           # a lean or press while standing at a shelf (no item moves)
    lead_s: float = 4.0               # store opens this long after t0 (units settle first)


@dataclass
class Session:
    session_id: str
    t_entry: float
    t_exit: float
    gate: str = "g1"


@dataclass
class Stand:
    session_id: str
    unit_id: str
    shelf: str
    t_arrive: float
    t_leave: float


@dataclass
class Interaction:
    id: str
    session_id: str
    unit_id: str
    shelf: str
    t: float
    dur: float
    type: str               # pick | put_back | lean | press
    sku: str | None = None
    quantity: int = 1
    plates: list[int] | None = None
    wrong_place: bool = False

    def script_line(self, store: Store) -> dict[str, Any]:
        d: dict[str, Any] = {"t": round(self.t, 3), "type": self.type, "shelf": self.shelf, "dur": round(self.dur, 3),
             "id": self.id, "session_id": self.session_id}
        if self.sku is not None:
            p = store.products[self.sku]
            d.update(sku=self.sku, quantity=self.quantity, unit_weight_g=p.unit_weight_g, unit_weight_sd_g=p.sd_g)
        if self.plates:
            d["plates"] = self.plates
        return d


@dataclass
class Plan:
    params: PlanParams
    sessions: list[Session] = field(default_factory=list)
    stands: list[Stand] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        return max((s.t_exit for s in self.sessions), default=0.0)

    def truth(self) -> dict[str, dict[str, int]]:
        """What each shopper walks out with: {session_id: {sku: quantity}} (zero lines dropped)."""
        carts: dict[str, Counter[str]] = {s.session_id: Counter() for s in self.sessions}
        for i in self.interactions:
            if i.sku is None:  # a lean or a press
                continue
            if i.type == "pick":
                carts[i.session_id][i.sku] += i.quantity
            elif i.type == "put_back":
                carts[i.session_id][i.sku] -= i.quantity
        return {sid: {k: v for k, v in sorted(c.items()) if v > 0} for sid, c in carts.items()}

    def scripts(self, store: Store) -> dict[str, list[dict[str, Any]]]:
        """Per unit, the simulator script lines (sorted by time)."""
        out: dict[str, list[dict[str, Any]]] = {u.unit_id: [] for u in store.units}
        for i in sorted(self.interactions, key=lambda i: i.t):
            out[i.unit_id].append(i.script_line(store))
        return out

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"params": asdict(self.params), "sessions": [asdict(s) for s in self.sessions],
                                    "stands": [asdict(s) for s in self.stands],
                                    "interactions": [asdict(i) for i in self.interactions],
                                    "truth": self.truth()}, indent=1))


class _ShelfBook:
    """Reserved [arrive, leave] intervals per shelf, kept sorted; finds the first free slot."""

    def __init__(self) -> None:
        self._iv: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def first_free(self, key: tuple[str, str], t: float, stay: float) -> float:
        iv = self._iv.get(key, [])
        cand = t
        for a, b in iv:
            if cand + stay + SHELF_GAP_S <= a:
                break
            if cand < b + SHELF_GAP_S:
                cand = max(cand, b + SHELF_GAP_S)
        return cand

    def book(self, key: tuple[str, str], a: float, b: float) -> None:
        bisect.insort(self._iv.setdefault(key, []), (a, b))


def make_plan(store: Store, params: PlanParams) -> Plan:
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 6]))
    stock = {(f.unit_id, f.sku): f.stock for f in store.facings()}
    facings = {(f.unit_id, f.shelf): [g for g in store.facings() if (g.unit_id, g.shelf) == (f.unit_id, f.shelf)]
               for f in store.facings()}
    shelves = store.shelves
    book = _ShelfBook()
    plan = Plan(params)
    t_entry = params.lead_s
    for n in range(params.shoppers):
        sid = f"s{params.seed}-{n + 1:04d}"
        if n:
            t_entry += float(rng.exponential(params.arrival_gap_s))
        t = t_entry + float(rng.uniform(2.0, 5.0))       # from the gate to the first shelf
        held: list[tuple[str, str, str]] = []            # (unit, shelf, sku) per unit held
        n_visits = int(rng.integers(params.visits[0], params.visits[1] + 1))
        will_return = rng.random() < params.return_p
        return_at = int(rng.integers(1, n_visits + 1)) if will_return else -1
        k = 0
        visit = 0
        while visit < n_visits or (will_return and return_at >= 0):
            want_return = will_return and visit >= return_at and held
            wrong = False
            if want_return:
                unit_id, home_shelf, sku = held[int(rng.integers(len(held)))]
                wrong = rng.random() < params.wrong_place_p
                if wrong:
                    unit = store.unit(unit_id)
                    near = [s for s in unit.shelves if abs(int(s) - int(home_shelf)) <= 1]
                    shelf = near[int(rng.integers(len(near)))]
                else:
                    shelf = home_shelf
                key = (unit_id, shelf)
            else:
                if visit >= n_visits:
                    break
                # a shelf with something on it, preferring one that is free now
                open_ = [k_ for k_ in shelves if any(stock[(f.unit_id, f.sku)] >= 4 for f in facings[k_])]
                order = [open_[i] for i in rng.permutation(len(open_))]
                key = min(order[:4], key=lambda k_: book.first_free(k_, t, 8.0))
            # what happens at this shelf, and how long the shopper stands there
            # (type, sku, quantity, plates, wrong place)
            acts: list[tuple[str, str | None, int, list[int] | None, bool]] = []
            if want_return:
                plates = None
                if wrong:
                    fac = next(f for f in store.unit(key[0]).facings if f.sku == sku)
                    others = [p for p in store.unit(key[0]).shelves[key[1]]
                              if not (key[1] == fac.shelf and p in fac.plates)]
                    plates = [others[int(rng.integers(len(others)))]]
                acts.append(("put_back", sku, 1, plates, wrong))
                held.remove((unit_id, home_shelf, sku))
                if not wrong:
                    stock[(unit_id, sku)] += 1
                will_return, return_at = False, -1
            else:
                n_items = 2 if rng.random() < params.second_item_p else 1
                cands = [f for f in facings[key] if stock[(f.unit_id, f.sku)] >= 4]
                for f in [cands[i] for i in rng.permutation(len(cands))][:n_items]:
                    q = int(rng.choice([1, 2, 3], p=params.quantity_p))
                    stock[(f.unit_id, f.sku)] -= q
                    acts.append(("pick", f.sku, q, None, False))
                    held.extend([(f.unit_id, f.shelf, f.sku)] * q)
            if params.nonevent_p and rng.random() < params.nonevent_p:
                acts.insert(
                    int(rng.integers(len(acts) + 1)), (str(rng.choice(["lean", "press"])), None, 0, None, False)
                )
            durs = [float(rng.uniform(1.0, 3.0)) for _ in acts]
            approach = float(rng.uniform(*APPROACH_S))
            stay = approach + sum(d + RING_S + BETWEEN_S for d in durs) - BETWEEN_S
            t_arr = book.first_free(key, t, stay)
            book.book(key, t_arr, t_arr + stay)
            plan.stands.append(Stand(sid, key[0], key[1], t_arr, t_arr + stay))
            tt = t_arr + approach
            for (typ, act_sku, q, plates, wr), d in zip(acts, durs):
                k += 1
                if typ in ("lean", "press"):
                    d = min(d, 1.5) if typ == "press" else d
                plan.interactions.append(Interaction(f"{sid}-{k}", sid, key[0], key[1], tt, d, typ, act_sku,
                                                     q if act_sku else 1, plates, wr))
                tt += d + RING_S + BETWEEN_S
            t = t_arr + stay + float(rng.uniform(2.0, 5.0))  # walk to the next shelf
            visit += 1
        plan.sessions.append(Session(sid, t_entry, t + float(rng.uniform(1.0, 4.0))))
    plan.interactions.sort(key=lambda i: i.t)
    return plan
