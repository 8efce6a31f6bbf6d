"""Per-plate REST → ACTIVE → REST detection, grouped per shelf into weight changes.

Why this shape:
- A shopper's hand, a lean or a neighbour's shove moves a plate for a second or two and then
  leaves it; only the difference between the level *before* the shelf was touched and the level
  *after* it came back to rest says what changed. Everything in between (pressing, ringing) is
  ignored, so a press or lean that returns to its level yields Δ≈0 and no event.
- Thresholds follow each plate's own measured noise σ (AiFi plates range 0.7 g … 14 g), so a
  quiet plate sees a 30 g item and a noisy one does not fire on its own noise.
- The baseline is re-estimated only while a plate is at rest, which follows slow drift without
  letting an interaction pull it.
- Plates of one shelf that are active at overlapping times form one *group*; when every plate of
  the group is back at rest the group is resolved into changes: adjacent plates whose levels moved
  are summed (an item resting across two plates; an item shoved from one plate onto the next sums
  to ~0), plates far apart on the same shelf stay separate changes (two shoppers).
- A lean (a forearm or hip on the shelf edge) presses several adjacent plates the same way and
  can hold them steady for seconds, which looks like rest at a new level. No item sits on more
  plates than the widest facing of its shelf (or two, straddling), so a same-sign change spread
  over more adjacent plates than that is held open until the plates return (no event) or
  ``max_active_s`` passes.
- A group that never comes back to rest within ``max_active_s`` becomes one ``unresolved`` change
  (published as ``unknown_change``) instead of silence; the group stays open and, if the shelf
  finally settles, the net change is still reported.

All per-sample work is vectorised over plates; the Python loop only visits plates that are active.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..layout import Layout

Array = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

INIT, REST, ACTIVE, UNAVAILABLE = 0, 1, 2, 3
REACH = 2  # plates either side that one hand's contact displaces (shelf flex)
STATE_NAMES = {INIT: "init", REST: "rest", ACTIVE: "active", UNAVAILABLE: "unavailable"}


@dataclass
class DetectorParams:
    rate_hz: float
    settle_s: float = 0.6
    trigger_sigma: float = 6.0
    min_trigger_g: float = 4.0
    min_event_g: float = 8.0
    max_active_s: float = 20.0
    noise_floor_g: float = 0.5
    rest_sigma: float = 6.0        # rest window range allowed, in σ
    min_rest_band_g: float = 3.0   # ... but never tighter than this
    guard_s: float = 0.15          # pre-level window ends this long before the trigger
    # A plate shaken by shoppers elsewhere on the gondola (AiFi: ±5-30 g for many seconds) never
    # gets a quiet window; its *level* can still be stable. Over a double settle window it counts
    # as at rest when its σ stays under vib_cap and the two halves' medians agree within level_tol.
    vib_cap_sigma: float = 8.0
    vib_cap_min_g: float = 10.0
    level_tol_sigma: float = 2.0
    level_tol_min_g: float = 2.5
    level_tol_rel: float = 0.02
    # a plate that settled lower in its group this long ago and only shakes since is done
    shaken_settle_s: float = 2.0
    shaken_cap_x: float = 3.0
    # a plate held this far off its resting level is under a hand (a push is 150-600 g; a plate
    # next to it swings 50-230 g): the plates within REACH of it are held back from resolving
    hand_g: float = 40.0
    # Decisions (baseline updates, settle scans, group resolution) are taken once per *tick* of
    # this many seconds of samples, counted from the first sample, whatever blocks the driver
    # hands over: the same samples then give the same events live, replayed, paced or not.
    tick_s: float = 0.2


@dataclass
class WeightChange:
    """What the signal stage hands to identification."""

    shelf: str
    plates: list[int]               # plates whose level changed
    plate_deltas: dict[int, float]  # per plate Δ in grams
    delta_g: float
    t_start: float
    t_end: float
    noise_g: float                  # σ of the Δ estimate
    kind: str = "change"            # change | unresolved
    t_detect: float = 0.0           # data time at which it was decided (the end of its tick)


@dataclass
class _Group:
    shelf: str
    members: set[int] = field(default_factory=set)  # plate indices
    t_start: float = 0.0
    t_last: float = 0.0
    unresolved_sent: bool = False
    lean_hold: bool = False


class Detector:
    def __init__(self, layout: Layout, params: DetectorParams):
        self.layout = layout
        self.p = params
        P = len(layout.plates)
        self.W = max(3, int(round(params.settle_s * params.rate_hz)))
        self.guard = max(1, int(round(params.guard_s * params.rate_hz)))
        self.L = 2 * self.W + self.guard + 2        # history rows kept between blocks
        self.state = np.full(P, INIT, dtype=np.int8)
        self.base = np.zeros(P)
        self.sigma = np.full(P, params.noise_floor_g)
        self.sigma_known = np.zeros(P, dtype=bool)
        self.trig_at = np.zeros(P, dtype=np.int64)  # absolute sample index of the trigger
        self.init_at = np.zeros(P, dtype=np.int64)  # absolute sample index its data (re)started
        self.settled = np.zeros(P, dtype=bool)      # came to rest at least once in its group
        self.carried = np.zeros(P, dtype=bool)      # its group resolved while it still shook
        self.settled_t = np.zeros(P)                # when it first came to rest in its group
        self.t_trig = np.zeros(P)                   # time the plate left rest
        self.pre = np.zeros(P)                      # level before the trigger
        self.H = np.empty((0, P))
        self.HT = np.empty(0)
        self.tick = max(1, int(round(params.tick_s * params.rate_hz)))
        self.tick_log: list[tuple[float, dict[str, float]]] = []   # ticks of the last process()
        # samples received but not yet processed: less than one tick
        self._pend = (np.empty(0), np.empty((0, P)), np.empty((0, P), dtype=bool))
        self.N = 0                                  # samples processed so far
        self.shelf_of = [pl.shelf for pl in layout.plates]
        self.plate_id = [pl.id for pl in layout.plates]
        self.groups: dict[str, _Group] = {}
        self.counters = {"triggers": 0, "changes": 0, "returned_to_level": 0, "unresolved": 0,
                         "rebaselined_after_gap": 0, "lean_holds": 0}
        # adjacency: same shelf, consecutive plate ids, or sharing a planogram facing
        self._adj: dict[int, set[int]] = {pl.index: set() for pl in layout.plates}
        for shelf in layout.shelves:
            pls = layout.shelf_plates(shelf)
            for a, b in zip(pls, pls[1:]):
                self._link(a.index, b.index)
        for fc in layout.placements:
            idx = [layout.plate(fc.shelf, i).index for i in fc.plates if layout.has_plate(fc.shelf, i)]
            for ia, ib in zip(idx, idx[1:]):
                self._link(ia, ib)
        # within a shopper's reach of a plate: a hand on one plate flexes the shelf, swinging the
        # plates next to it by 50-230 g and those two away by about a third of that (AiFi), so a
        # plate up to REACH positions away may sit at a displaced level while the hand is there
        # widest facing per shelf: more adjacent plates moving together than this is a body, not an item
        self._widest: dict[str, int] = {sh: 1 for sh in layout.shelves}
        for fc in layout.placements:
            if fc.shelf in self._widest:
                self._widest[fc.shelf] = max(self._widest[fc.shelf], len(fc.plates))
        self._reach: dict[int, set[int]] = {}
        for shelf in layout.shelves:
            on_shelf = [pl.index for pl in layout.shelf_plates(shelf)]
            for k, pa in enumerate(on_shelf):
                self._reach[pa] = set(on_shelf[max(0, k - REACH):k + REACH + 1]) - {pa}

    def _link(self, a: int, b: int) -> None:
        self._adj[a].add(b)
        self._adj[b].add(a)

    # ------------------------------------------------------------------ thresholds

    def trigger_g(self) -> np.ndarray:
        return np.maximum(self.p.min_trigger_g, self.p.trigger_sigma * self.sigma)

    def rest_band_g(self) -> np.ndarray:
        return np.maximum(self.p.min_rest_band_g, self.p.rest_sigma * self.sigma)

    def level_tol_g(self) -> np.ndarray:
        return np.maximum(self.p.level_tol_min_g, self.p.level_tol_sigma * self.sigma)

    def _shaken_tol(self, j: int, sd: float) -> float:
        """How far a shaken plate's median level may sit from a level and still be at it: the
        level tolerance (never under half an event), plus a third of the sway's σ."""
        return max(float(self.level_tol_g()[j]), self.p.min_event_g / 2) + 0.35 * sd

    def vib_cap_g(self) -> np.ndarray:
        return np.maximum(self.p.vib_cap_min_g, self.p.vib_cap_sigma * self.sigma)

    # ------------------------------------------------------------------ main entry

    def process(self, t: np.ndarray, x: np.ndarray, available: np.ndarray) -> list[WeightChange]:
        """Feed samples (any block size); changes come out once the tick that completes them."""
        if len(t) == 0:
            return []
        pt, px, pa = self._pend
        if len(pt):
            t, x, available = np.concatenate([pt, t]), np.vstack([px, x]), np.vstack([pa, available])
        k = self.tick
        full = len(t) - len(t) % k
        self.tick_log = []
        out: list[WeightChange] = []
        for a in range(0, full, k):
            out.extend(self._tick(t[a:a + k], x[a:a + k], available[a:a + k]))
        self._pend = (t[full:], x[full:], available[full:])
        return out

    @property
    def pending_samples(self) -> int:
        return len(self._pend[0])

    def _tick(self, t: np.ndarray, x: np.ndarray, available: np.ndarray) -> list[WeightChange]:
        n = len(t)
        out: list[WeightChange] = []
        Z = np.vstack([self.H, x])
        TZ = np.concatenate([self.HT, t])
        L0 = len(self.H)
        first_abs = self.N - L0                      # absolute index of Z[0]
        W = self.W

        # plates losing data: forget their baseline; they re-learn it when data returns
        lost = ~available.all(axis=0)
        if lost.any():
            for j in np.nonzero(lost & (self.state != UNAVAILABLE))[0].tolist():
                self._drop_from_group(j)
                self.state[j] = UNAVAILABLE
        back = (self.state == UNAVAILABLE) & available[-1]
        if back.any():
            self.state[back] = INIT
            self.init_at[back] = self.N + np.argmax(available[:, back], axis=0)
            self.counters["rebaselined_after_gap"] += int(back.sum())

        # INIT: adopt a baseline once a settle window looks quiet
        init = np.nonzero((self.state == INIT) & available.all(axis=0))[0]
        if len(init) and len(Z) >= W:
            win = Z[-W:, init]
            d = np.diff(win, axis=0)
            s0 = 1.4826 * np.median(np.abs(d - np.median(d, axis=0)), axis=0) / np.sqrt(2)
            s = np.where(self.sigma_known[init], self.sigma[init], np.maximum(self.p.noise_floor_g, s0))
            ok = np.ptp(win, axis=0) <= np.maximum(self.p.min_rest_band_g, self.p.rest_sigma * s)
            if len(Z) >= 2 * W:
                # a unit started while shoppers shake the gondola: accept a stable level
                w2 = Z[-2 * W:, init]
                sd = w2.std(axis=0)
                dm = np.abs(np.median(w2[W:], axis=0) - np.median(w2[:W], axis=0))
                ok |= (sd <= np.maximum(self.p.vib_cap_min_g, self.p.vib_cap_sigma * s)) & \
                    (dm <= np.maximum(self.p.level_tol_min_g, self.p.level_tol_sigma * s) + 0.35 * sd)
            j = init[ok]
            self.sigma[j] = s[ok]
            self.sigma_known[j] = True
            self.base[j] = win[:, ok].mean(axis=0)
            self.state[j] = REST
            init = init[~ok]
        for ji in init:
            self._early_touch(int(ji), Z, TZ, first_abs)

        # REST: vectorised check for a trigger; quiet plates track baseline and noise
        rest = np.nonzero(self.state == REST)[0]
        if len(rest):
            dev = np.abs(x[:, rest] - self.base[rest])
            trig = dev > self.trigger_g()[rest]
            quiet = rest[~trig.any(axis=0)]
            if len(quiet) and len(Z) >= W:
                win = Z[-W:, quiet]
                rng = np.ptp(win, axis=0)
                settled = rng <= self.rest_band_g()[quiet]
                q = quiet[settled]
                self.base[q] = win[:, settled].mean(axis=0)
                # slow EWMA of the window σ: follows a plate getting noisier or quieter
                sd = win[:, settled].std(axis=0, ddof=1)
                self.sigma[q] = np.maximum(self.p.noise_floor_g, 0.97 * self.sigma[q] + 0.03 * sd)
            for col in np.nonzero(trig.any(axis=0))[0]:
                j = rest[col]
                i = int(np.argmax(trig[:, col]))
                self._trigger(j, L0 + i, Z, TZ, first_abs)

        # ACTIVE: look for a settle window that starts after the trigger
        for j in np.nonzero(self.state == ACTIVE)[0].tolist():
            self._scan_active(j, Z, TZ, L0, first_abs, out)

        # a plate that left its group while shaking at its old level stays ACTIVE (it never
        # re-triggers from REST); if it is then pushed well off that level (a lean, a hand), it
        # rejoins its shelf's activity so that it is judged together with the plates next to it
        if len(Z) >= W:
            for j in np.nonzero(self.state == ACTIVE)[0].tolist():
                g = self.groups.get(self.shelf_of[j])
                if g is not None and j in g.members:
                    continue
                if abs(float(np.median(Z[-W:, j])) - self.pre[j]) > max(self.trigger_g()[j], self.p.hand_g):
                    self._join(j, float(TZ[-W]))

        # groups: resolve those whose plates all came back; flag those open too long
        for shelf in list(self.groups):
            g = self.groups[shelf]
            blocking: set[int] = set()
            shaking: set[int] = set()
            for j in g.members:
                if self.state[j] != ACTIVE:
                    continue
                # still moving but back at its old level (shaken, not changed): does not hold
                # the group; it keeps its own pre-level and is judged again when it settles
                # (a plate under a hand, σ above the vibration cap, is never "at level"). Judged
                # only on a double window lying wholly after its trigger: just after a trigger the
                # window still holds the quiet pre-touch samples and would call every plate "at
                # level", dropping it from its group before the shopper's contact even shows.
                # (Since it first left rest in this group: a plate re-triggering while it shakes
                # at level, as on a crowded AiFi gondola, is still judged.)
                if TZ[-1] - self.t_trig[j] < 2 * W / self.p.rate_hz:
                    blocking.add(j)
                    continue
                w2 = Z[-2 * W:, j]
                sd = float(w2.std())
                lvl = float(np.median(w2))
                # a *level* tolerance (2σ), not the rest window's range (6σ): on a noisy plate the
                # range would call the 10-15 g share of a straddling candy bar "at level" and let
                # that plate leave the group, splitting the item into two unknown changes
                tol = self._shaken_tol(j, sd)
                # (a plate swinging symmetrically around its old level, even hard, while a shopper
                # works elsewhere on the gondola is shaken, not held: a hand shifts its median
                # — once it has shaken for longer than a hand's contact lasts)
                cap = self.vib_cap_g()[j] * (
                    self.p.shaken_cap_x if TZ[-1] - self.t_trig[j] >= self.p.shaken_settle_s else 1.0
                )
                at_level = sd <= cap and abs(lvl - self.pre[j]) <= tol
                if at_level:
                    shaking.add(j)
                elif self.settled[j] and TZ[-1] - self.settled_t[j] >= self.p.shaken_settle_s \
                        and self.pre[j] - self.base[j] >= max(self.trigger_g()[j], self.p.min_event_g) \
                        and sd <= self.vib_cap_g()[j] \
                        and abs(lvl - self.base[j]) <= tol + self.p.level_tol_rel * (self.pre[j] - self.base[j]):
                    # it came to rest at a new, *lower* level in this group a while ago (longer
                    # than a hand's contact) and now only shakes around it (a crowded gondola):
                    # its change is known; it does not hold the group. Only lower: a body leaning on the
                    # shelf adds load and can hold a plate steady above its level for seconds; nothing
                    # holds one below it.
                    continue
                else:
                    blocking.add(j)
            g.members -= shaking
            if not blocking and g.members and TZ[-1] - g.t_start <= self.p.max_active_s \
                    and self._lean_like(g.shelf, g.members):
                if not g.lean_hold:
                    g.lean_hold = True
                    self.counters["lean_holds"] += 1
                continue
            if not blocking:
                del self.groups[shelf]
                if g.members:
                    out.extend(self._resolve(g))
                continue
            # settled plates not connected (through moved neighbours) to a plate still moving,
            # nor within its reach, are resolved now: a shopper at one end of a shelf does not
            # hold up the other end. A plate within reach of a moving one may only be flexed to
            # a displaced level that looks settled; it returns when the hand lets go.
            # Only a plate carrying a hand's push or an item in hand (held well off its last
            # resting level) flexes its neighbours that far; a plate merely shaking by tens of
            # grams, or re-triggered after settling at a new level, does not.
            seeds = set(blocking)
            for j in blocking:
                if np.median(np.abs(Z[-W:, j] - self.base[j])) >= self.p.hand_g:
                    seeds |= self._reach[j] & g.members
            held = self._component(seeds, g.members)
            ready = g.members - held
            if ready and any(abs(self.base[j] - self.pre[j]) >= self.p.min_event_g / 3.0 for j in ready) \
                    and not (TZ[-1] - g.t_start <= self.p.max_active_s and self._lean_like(shelf, ready)):
                out.extend(self._resolve(_Group(shelf, ready, g.t_start, g.t_last)))
                g.members = held
                g.t_start = float(min(self.t_trig[j] for j in held))
            if not g.unresolved_sent and TZ[-1] - g.t_start > self.p.max_active_s:
                g.unresolved_sent = True
                self.counters["unresolved"] += 1
                out.append(self._unresolved(g, Z, float(TZ[-1])))
            continue


        self.N += n
        keep = min(self.L, len(Z))
        self.H = Z[-keep:]
        self.HT = TZ[-keep:]
        for c in out:
            c.t_detect = float(TZ[-1])
        # per tick: when each shelf's open activity began (a later stage holding a change back
        # decides on exactly these tick ends, whatever blocks the samples came in)
        self.tick_log.append((float(TZ[-1]), {sh: g.t_start for sh, g in self.groups.items()}))
        return out

    @property
    def processed_t(self) -> float | None:
        """Data time of the last sample decided on (the end of the last whole tick)."""
        return float(self.HT[-1]) if len(self.HT) else None

    def flush(self) -> list[WeightChange]:
        """End of stream (recording over, daemon stopping). An activity still open is resolved
        when every plate still moving holds a steady level over its last samples (the hand has
        gone; only the settle window was cut short); one still under a hand has no after-level
        and yields no event: it is logged so a technician can see it was there."""
        pt, px, pa = self._pend
        self.tick_log = []
        out = self._tick(pt, px, pa) if len(pt) else []
        self._pend = (pt[:0], px[:0], pa[:0])
        W = self.W
        for shelf, g in self.groups.items():
            steady = True
            for j in g.members:
                if self.state[j] != ACTIVE:
                    continue
                since = int(self.N - self.trig_at[j])
                w = self.H[-W:, j]
                lvl, sd = float(np.median(w)), float(w.std())
                tol = self._shaken_tol(j, sd)
                if sd <= self.p.shaken_cap_x * self.vib_cap_g()[j] and abs(lvl - self.pre[j]) <= tol:
                    self.base[j] = self.pre[j]      # shaken at its old level: unchanged
                    continue
                if self.settled[j] and sd <= self.p.shaken_cap_x * self.vib_cap_g()[j] and \
                        abs(lvl - self.base[j]) <= tol + self.p.level_tol_rel * abs(self.base[j] - self.pre[j]):
                    continue                        # shaken around the level it settled at
                w = w[-min(W, max(1, since)):]
                if since < W // 2 or float(w.std()) > self.vib_cap_g()[j]:
                    steady = False
                    break
                self.base[j] = float(np.median(w))
            if steady and g.members and not self._lean_like(shelf, g.members):
                log.info("stream ended while shelf %s was settling (plates %s): resolved on its last samples",
                         shelf, sorted(self.plate_id[j] for j in g.members))
                for c in self._resolve(g):
                    c.t_detect = self.processed_t or c.t_end
                    out.append(c)
                continue
            log.info("stream ended while shelf %s was still active (plates %s); no event",
                     shelf, sorted(self.plate_id[j] for j in g.members))
        self.groups.clear()
        return out

    # ------------------------------------------------------------------ internals

    def _trigger(self, j: int, zi: int, Z: Array, TZ: Array, first_abs: int) -> None:
        lo = max(0, zi - self.guard - self.W)
        hi = max(lo + 1, zi - self.guard)
        pre = float(np.median(Z[lo:hi, j])) if hi > lo else float(self.base[j])
        # the baseline is the better estimate when the window before the trigger was quiet
        if abs(pre - self.base[j]) < self.rest_band_g()[j]:
            pre = float(self.base[j])
        self.state[j] = ACTIVE
        self.trig_at[j] = first_abs + zi
        self.counters["triggers"] += 1
        t0 = float(TZ[max(0, zi - 1)])
        g = self.groups.get(self.shelf_of[j])
        if g is not None and j in g.members:
            return  # re-triggered inside its group: the group's pre-level still holds
        self.pre[j] = pre
        self.t_trig[j] = t0
        self._join(j, t0)

    def _early_touch(self, j: int, Z: Array, TZ: Array, first_abs: int) -> None:
        """A plate touched before it ever found a rest (a unit just started, a plate back from a
        gap) still had a level before the hand: the first half settle window of its data, if that
        was calm. A clear departure from it within the first double window is a trigger."""
        # (the spike median's first outputs after a gap still mix in the fill value: skip them)
        start = max(0, int(self.init_at[j] - first_abs) + 2)
        h = self.W // 2
        col = Z[start:start + 2 * self.W, j]
        if len(col) <= h or first_abs + len(Z) - self.init_at[j] > 2 * self.W + self.tick:
            return
        ref = col[:h]
        sd = float(ref.std())
        if sd > self.p.vib_cap_min_g:
            return
        med = float(np.median(ref))
        thr = max(self.p.min_trigger_g, self.p.min_event_g, self.p.trigger_sigma * max(self.p.noise_floor_g, sd))
        dev = np.abs(col[h:] - med) > thr
        if not dev.any():
            return
        self.base[j] = med
        self.sigma[j] = max(self.p.noise_floor_g, sd)
        self.sigma_known[j] = True
        self._trigger(j, start + h + int(np.argmax(dev)), Z, TZ, first_abs)
        self.pre[j] = med

    def rebaseline(self, j: int) -> None:
        """Forget plate ``j``'s level (its calibration changed): it re-learns a baseline once
        quiet, without an event, as after a data gap."""
        self._drop_from_group(j)
        self.state[j] = INIT
        self.init_at[j] = self.N + self.pending_samples

    def _join(self, j: int, t0: float) -> None:
        shelf = self.shelf_of[j]
        g = self.groups.get(shelf)
        if g is None:
            g = self.groups[shelf] = _Group(shelf, t_start=t0)
        if j not in g.members:
            self.settled[j] = False
        g.members.add(j)
        g.t_start = min(g.t_start, t0)

    def _scan_active(self, j: int, Z: Array, TZ: Array, L0: int, first_abs: int, out: list[WeightChange]) -> None:
        W = self.W
        col = Z[:, j]
        band, trig = self.rest_band_g()[j], self.trigger_g()[j]
        tol, cap = self.level_tol_g()[j], self.vib_cap_g()[j]
        t_rel = int(self.trig_at[j] - first_abs)          # trigger row in Z (may be negative)
        lo = max(L0, W - 1, t_rel + W - 1)                 # first window end worth testing
        while lo < len(Z):
            ends = np.arange(lo, len(Z))
            win = np.lib.stride_tricks.sliding_window_view(col, W)   # window k ends at k+W-1
            quiet = np.ptp(win[ends - W + 1], axis=1) <= band
            vib = np.zeros_like(quiet)
            ok2 = ends - 2 * W + 1 >= max(0, t_rel)       # double window after the trigger
            if ok2.any():
                e2 = ends[ok2]
                first = np.median(win[e2 - 2 * W + 1], axis=1)
                second = np.median(win[e2 - W + 1], axis=1)
                sd = np.lib.stride_tricks.sliding_window_view(col, 2 * W)[e2 - 2 * W + 1].std(axis=1)
                # the level of a shaken plate is known to about a third of its σ over half a
                # second of oscillation; allow that on top of the quiet-plate tolerance
                # ... and a level that is stable to a small fraction of the change it shows: a
                # 370 g pick read while the gondola shakes needs its level to ~2 %, not to the
                # quiet plate's 2σ (which a 1-2 Hz sway of a few grams never meets)
                # (only below the old level: a leaning body sways in proportion to its load, so
                # above it a relative tolerance would take a swaying lean for a put-back)
                rel = self.p.level_tol_rel * np.maximum(0.0, self.pre[j] - second)
                vib[ok2] = (np.abs(second - first) <= tol + 0.35 * sd + rel) & (sd <= cap)
            hits = np.nonzero(quiet | vib)[0]
            if not len(hits):
                return
            h = int(hits[0])
            e = int(ends[h])
            n_win = W if quiet[h] else 2 * W
            after = float(col[e - n_win + 1:e + 1].mean())
            self.state[j] = REST
            self.base[j] = after
            t_settle = float(TZ[e - n_win + 1])
            g = self.groups.get(self.shelf_of[j])
            if g is None or j not in g.members:
                # it left its group while shaking at level; judged on its own now
                # (one whose change was already reported while it shook around its new level
                # only re-reads that level now: within its own noise that is no new change)
                # (and a level read through shaking is known only to its level tolerance)
                floor = self.trigger_g()[j] if self.carried[j] else max(self.p.min_event_g / 3.0, self.level_tol_g()[j])
                if abs(after - self.pre[j]) >= floor:
                    self._join(j, float(self.t_trig[j]))
                    g = self.groups[self.shelf_of[j]]
            self.carried[j] = False
            if g is not None and j in g.members:
                g.t_last = max(g.t_last, t_settle)
                if not self.settled[j]:
                    self.settled_t[j] = t_settle
                self.settled[j] = True
            # a new touch later in this same block re-triggers the plate
            rest_dev = np.abs(col[e + 1:] - after) > trig
            if not rest_dev.any():
                return
            zi = e + 1 + int(np.argmax(rest_dev))
            self._trigger(j, zi, Z, TZ, first_abs)
            t_rel = zi
            lo = zi + W - 1

    def _component(self, seeds: set[int], members: set[int]) -> set[int]:
        """Members reachable from ``seeds`` through adjacent members whose level moved."""
        moved = {j for j in members if self.state[j] == ACTIVE
                 or abs(self.base[j] - self.pre[j]) >= self.p.min_event_g / 3.0}
        comp, stack = set(), list(seeds)
        while stack:
            k = stack.pop()
            if k in comp:
                continue
            comp.add(k)
            stack.extend(a for a in self._adj[k] if a in members and a in moved and a not in comp)
        return comp

    def _lean_like(self, shelf: str, members: set[int]) -> bool:
        """More adjacent plates moved the same way, each by a real share, than any facing spans.

        A lean spreads its force unevenly (a forearm: most on two plates, a little on the next),
        so the run of adjacent plates is taken at a low floor (3 % of the total), and counted on
        those carrying a real share (8 %): a hand's flex residue of a few grams next to an item
        must not turn a two-plate item into a "lean"."""
        deltas = {j: float(self.base[j] - self.pre[j]) for j in members}
        total = abs(sum(deltas.values()))
        floor = max(self.p.min_event_g, 0.03 * total)
        strong = max(2 * self.p.min_event_g, 0.08 * total)
        for sign in (1.0, -1.0):
            for comp in self._runs({j for j, d in deltas.items() if d * sign >= floor}):
                # any item may straddle two plates, whatever the planogram says
                if sum(1 for k in comp if deltas[k] * sign >= strong) > max(2, self._widest.get(shelf, 1)):
                    return True
        return False

    def _runs(self, plates: set[int]) -> list[set[int]]:
        """``plates`` split into runs of adjacent plates (adjacent on the shelf or one facing)."""
        out: list[set[int]] = []
        seen: set[int] = set()
        for j in sorted(plates):
            if j in seen:
                continue
            comp, stack = set(), [j]
            while stack:
                k = stack.pop()
                if k in comp:
                    continue
                comp.add(k)
                stack.extend(a for a in self._adj[k] if a in plates and a not in comp)
            seen |= comp
            out.append(comp)
        return out

    def _drop_from_group(self, j: int) -> None:
        g = self.groups.get(self.shelf_of[j])
        if g is not None:
            g.members.discard(j)
            if not g.members:
                del self.groups[self.shelf_of[j]]

    def _delta_noise(self, j: int) -> float:
        # Δ = mean(after window) − median(before window); LF noise makes window means wander,
        # so use a generous fraction of σ rather than the white-noise σ·√(2/W).
        return float(self.sigma[j]) * max(float(np.sqrt(2.0 / self.W)), 0.5)

    def _resolve(self, g: _Group) -> list[WeightChange]:
        deltas = {j: float(self.base[j] - self.pre[j]) for j in g.members}
        # a member still shaking around its new level is judged from that level from now on
        for j in g.members:
            self.pre[j] = self.base[j]
            self.settled[j] = False
            self.carried[j] = self.state[j] == ACTIVE
        noise = {j: self._delta_noise(j) for j in deltas}
        sig = {j for j, d in deltas.items()
               if abs(d) >= max(self.p.min_event_g / 3.0, 4.0 * noise[j], 2.0)}
        out: list[WeightChange] = []
        for comp in self._runs(sig):
            total = sum(deltas[k] for k in comp)
            nz = float(np.sqrt(sum(noise[k] ** 2 for k in comp)))
            # plates still shaking (their level read through the sway) alone: twice the bar
            floor = self.p.min_event_g * (2.0 if all(self.state[k] == ACTIVE for k in comp) else 1.0)
            if abs(total) < max(floor, 4.0 * nz):
                self.counters["returned_to_level"] += 1
                continue
            self.counters["changes"] += 1
            out.append(WeightChange(
                shelf=g.shelf, plates=sorted(self.plate_id[k] for k in comp),
                plate_deltas={self.plate_id[k]: round(deltas[k], 2) for k in sorted(comp)},
                delta_g=float(total), t_start=g.t_start, t_end=max(g.t_last, g.t_start), noise_g=nz))
        if not out:
            self.counters["returned_to_level"] += 1 if not sig else 0
        return out

    def _unresolved(self, g: _Group, Z: Array, t_now: float) -> WeightChange:
        cur = {j: float(np.median(Z[-self.W:, j])) - self.pre[j] for j in g.members}
        moved = [j for j, d in cur.items() if abs(d) >= self.trigger_g()[j]] or list(cur)
        return WeightChange(
            shelf=g.shelf, plates=sorted(self.plate_id[j] for j in moved),
            plate_deltas={self.plate_id[j]: round(cur[j], 2) for j in moved},
            delta_g=float(sum(cur[j] for j in moved)), t_start=g.t_start,
            t_end=t_now,
            noise_g=float(np.sqrt(sum(self._delta_noise(j) ** 2 for j in moved))), kind="unresolved")

    # ------------------------------------------------------------------ for health / state

    def plate_states(self) -> list[str]:
        return [STATE_NAMES[int(s)] for s in self.state]
