"""Wires the stages for one unit: source → conditioner → detector → identifier → item events.

The same :class:`Pipeline` runs under ``shelfd run`` (live, events go to the outbox and MQTT),
``shelfd replay`` (events go to a file) and the benchmarks, so what is measured is what ships.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .calstate import CalibrationState
from .config import DetectionConfig
from .events.identify import Evidence, Identifier, book_for
from .events.item_event import build_event, make_trace, rfc3339
from .events.unit_weights import FILE_NAME as WEIGHTS_FILE
from .layout import Layout
from .sensing.base import SampleBlock, SampleSource
from .signal.condition import Conditioner
from .signal.detector import REST, Detector, DetectorParams, WeightChange

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .config import Config
    from .events.identify import Identification
    from .vision.capture import CaptureStore
    from .vision.engine import VisionEngine, VisionResult

log = logging.getLogger(__name__)

EvidenceProvider = Callable[[WeightChange], list[Evidence]]
# (change, weight-only identification, fused identification, vision result, event)
Observer = Callable[[WeightChange, "Identification | None", "Identification | None", "VisionResult | None",
                     dict[str, Any]], None]

# The weight trace in every event (docs/publishing.md): conditioned grams of the event's plates,
# about TRACE_HZ, from TRACE_PAD_S before t_start to TRACE_PAD_S after t_end (or to the tick at
# which the event left the detector and the press hold, when that came sooner), at most
# TRACE_MAX_POINTS a plate and about TRACE_BUDGET values in all (longer windows are decimated
# further), reaching at most TRACE_MAX_SPAN_S back; the ring keeps TRACE_KEEP_S before the block
# being processed.
TRACE_HZ = 10.0
TRACE_PAD_S = 1.0
TRACE_MAX_POINTS = 300
TRACE_BUDGET = 800
TRACE_MAX_SPAN_S = 50.0
TRACE_KEEP_S = 70.0


@dataclass
class Facing:
    sku: str
    shelf: str
    plates: tuple[int, ...]
    units: int | None
    source: str  # stock | weight | unknown


@dataclass
class PipelineStats:
    samples: int = 0
    blocks: int = 0
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    data_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def count(self, kind: str) -> None:
        self.by_type[kind] = self.by_type.get(kind, 0) + 1


class TraceRing:
    """The last TRACE_KEEP_S of conditioned plate weights at about TRACE_HZ, for event traces.

    A sample is kept when its index *in the whole stream* is a multiple of ``k``, so the kept
    points (and every trace cut from them) are the same however the samples were cut into blocks.
    Samples of the block being processed are all kept, plus ``keep`` points before it: a change the
    detector decides anywhere in that block finds its window here."""

    def __init__(self, n_plates: int, rate_hz: float):
        self.k = max(1, int(round(rate_hz / TRACE_HZ)))
        self.dt_s = self.k / rate_hz
        self.keep = int(math.ceil(TRACE_KEEP_S / self.dt_s))
        self.t = np.empty(2 * self.keep)
        self.g = np.empty((2 * self.keep, n_plates))
        self.n = 0      # rows in use
        self.seen = 0   # samples of the stream so far

    def push(self, t: np.ndarray, grams: np.ndarray, available: np.ndarray) -> None:
        idx = np.arange((-self.seen) % self.k, len(t), self.k)
        self.seen += len(t)
        m = len(idx)
        if not m:
            return
        if self.n + m > len(self.t):
            old = min(self.n, self.keep)
            cap = max(2 * self.keep, old + m)
            t_new, g_new = np.empty(cap), np.empty((cap, self.g.shape[1]))
            t_new[:old], g_new[:old] = self.t[self.n - old:self.n], self.g[self.n - old:self.n]
            self.t, self.g, self.n = t_new, g_new, old
        self.t[self.n:self.n + m] = t[idx]
        self.g[self.n:self.n + m] = np.where(available[idx], grams[idx], np.nan)
        self.n += m

    @property
    def last_t(self) -> float | None:
        return float(self.t[self.n - 1]) if self.n else None

    def trace(self, columns: list[int], plate_ids: list[int], t_from: float, t_to: float) -> dict[str, Any] | None:
        """The ``trace`` of plates ``columns`` (named ``plate_ids``) over [t_from, t_to], or None
        when no point lies there."""
        t = self.t[:self.n]
        sel = np.nonzero((t >= t_from) & (t <= t_to))[0]
        if not len(sel):
            return None
        most = max(30, min(TRACE_MAX_POINTS, TRACE_BUDGET // max(1, len(columns))))
        step = -(-len(sel) // most)   # ceil: decimate further, relative to the window's first point
        sel = sel[::step]
        return make_trace(float(t[sel[0]]), self.dt_s * step,
                          {pid: self.g[sel, col].tolist() for pid, col in zip(plate_ids, columns)})


class Pipeline:
    def __init__(self, store_id: str, unit_id: str, layout: Layout, channels: list[str], units: str,
                 rate_hz: float, calibration: CalibrationState | None,
                 detection: DetectionConfig | None = None,
                 evidence: EvidenceProvider | None = None, vision: VisionEngine | None = None,
                 fusion: tuple[float, float] = (0.9, 1e-5), vision_deadline_s: float = 0.4,
                 capture: CaptureStore | None = None, state_dir: str | Path | None = None,
                 learn_confidence: float = 0.9, press_hold_s: float = 1.0):
        det = detection or DetectionConfig()
        self.store_id, self.unit_id = store_id, unit_id
        self.layout = layout
        self.channels = channels
        self.rate_hz = rate_hz
        self.calibration = calibration
        self.conditioner = Conditioner(layout, channels, units, calibration, rate_hz,
                                       median_samples=det.median_samples,
                                       max_gap_s=min(0.5, det.degraded_after_s))
        self.detector = Detector(layout, DetectorParams(
            rate_hz=rate_hz, settle_s=det.settle_s, trigger_sigma=det.trigger_sigma,
            min_trigger_g=det.min_trigger_g, min_event_g=det.min_event_g,
            max_active_s=det.max_active_s, noise_floor_g=det.noise_floor_g))
        # unit weights learned from confident events: kept in state_dir by a running unit, in
        # memory only for a replay (a replay must never change the unit's state)
        self.weights = book_for(layout, None if state_dir is None else Path(state_dir) / WEIGHTS_FILE)
        self.learn_confidence = learn_confidence
        self.identifier = Identifier(layout, max_quantity=det.max_quantity, weights=self.weights)
        self.review_below = det.review_below
        self.evidence = evidence
        # Camera (optional): a daemon.vision.engine.VisionEngine. Each change is handed to it on
        # its worker thread; the event waits at most vision_deadline_s (wall clock) for the answer,
        # in order, and otherwise goes out weight-only, flagged. The sample thread never blocks.
        self.vision = vision
        self.fusion = fusion
        self.vision_deadline_s = vision_deadline_s
        self.capture = capture
        # (change, future|None, deadline, trace)
        self._waiting: list[tuple[WeightChange, Future[VisionResult] | None, float, dict[str, Any] | None]] = []
        self._held: list[WeightChange] = []   # put-backs waiting out the press hold
        self.press_hold_s = press_hold_s
        # benches: observer(change, weight-only identification, fused identification, vision result, event)
        self.observer: Observer | None = None
        self.stats = PipelineStats()
        self.facings = [Facing(f.sku, f.shelf, f.plates, f.stock, "stock" if f.stock is not None else "unknown")
                        for f in layout.placements]
        self.last_t: float | None = None
        self.maintenance: dict[str, float] = {}  # "shelf/plate" → monotonic time it ends
        self._last_grams = np.full(len(layout.plates), np.nan)
        self.state_changed = False
        self.ring = TraceRing(len(layout.plates), rate_hz)

    # ------------------------------------------------------------------ processing

    def process(self, block: SampleBlock) -> list[dict[str, Any]]:
        t0 = time.process_time()
        cond = self.conditioner.process(block)
        self.ring.push(cond.t, cond.grams, cond.available)
        if self.vision is not None and len(block):
            self.vision.pump(float(block.t[-1]))   # data-clocked cameras (sim, replay) catch up
        changes = self.detector.process(cond.t, cond.grams, cond.available)
        if self.maintenance:
            changes = self._drop_maintenance(changes)
        events = self._route(changes)
        if len(block):
            self._last_grams = cond.grams[-1]
            self.last_t = float(block.t[-1])
            self.stats.samples += len(block)
            self.stats.data_seconds += len(block) / self.rate_hz
        self.stats.blocks += 1
        self._estimate_stock()
        self.stats.cpu_seconds += time.process_time() - t0
        return events

    def apply_calibration(self, calibration: CalibrationState) -> list[str]:
        """Use a new calibration from the next block on (a tare or re-calibration while running).

        Plates whose channels changed re-learn their baseline without an event: their weight
        jumps by design, which is not a pick. Returns the keys of those plates."""
        old = self.calibration
        self.conditioner = Conditioner(self.layout, self.channels, "counts", calibration, self.rate_hz,
                                       median_samples=self.conditioner.k,
                                       max_gap_s=self.conditioner.max_gap / self.rate_hz)
        self.calibration = calibration
        changed = []
        for pl in self.layout.plates:
            if old is None or any(old.channels.get(c) != calibration.channels.get(c) for c in pl.channels):
                # back to INIT (as after a data gap): it adopts a new baseline once quiet
                self.detector.rebaseline(pl.index)
                changed.append(pl.key)
        return changed

    def finish(self) -> list[dict[str, Any]]:
        return self._route(self.detector.flush(), wait=True)

    def _route(self, changes: list[WeightChange], wait: bool = False) -> list[dict[str, Any]]:
        """Events in detection order: without a camera at once; with one, each after its vision
        answer or its deadline, whichever comes first."""
        ready = [(c, self._trace(c, t_out))
                 for c, t_out in self._hold([part for c in changes for part in self._split(c)], final=wait)]
        if self.vision is None:
            return [self._event(c, trace=tr) for c, tr in ready]
        now = time.monotonic()
        for c, tr in ready:
            job = None
            if c.kind == "change":
                from .vision.engine import ChangeView
                job = self.vision.submit(ChangeView(c.shelf, list(c.plates), c.t_start, c.t_end, c.delta_g,
                                                    dict(c.plate_deltas)))
            self._waiting.append((c, job, now + self.vision_deadline_s, tr))
        out = []
        while self._waiting:
            c, job, deadline, tr = self._waiting[0]
            if job is not None and not job.done():
                left = deadline - time.monotonic()
                if left > 0 and wait:
                    try:
                        job.result(timeout=left)
                    except Exception:  # noqa: BLE001 - the result is read below
                        pass
                elif left > 0:
                    break
            self._waiting.pop(0)
            out.append(self._event(c, job, tr))
        return out

    def _trace(self, change: WeightChange, t_out: float) -> dict[str, Any] | None:
        """The event's weight trace: its plates from TRACE_PAD_S before ``t_start`` to TRACE_PAD_S
        after ``t_end``, or only to ``t_out`` (the data time of the tick at which it left the
        detector and the press hold, or the stream's end) when that is sooner. Every cutting into
        blocks has passed those samples by then, so the trace is the same however they came.
        At most TRACE_MAX_SPAN_S before ``t_out``: the ring holds TRACE_KEEP_S before the block
        that ``t_out`` lies in."""
        t_to = min(change.t_end + TRACE_PAD_S, t_out)
        t_from = max(change.t_start - TRACE_PAD_S, t_out - TRACE_MAX_SPAN_S)
        cols = [self.layout.plate(change.shelf, p).index for p in change.plates]
        return self.ring.trace(cols, list(change.plates), t_from, t_to)

    def _hold(self, changes: list[WeightChange], final: bool = False) -> list[tuple[WeightChange, float]]:
        """Hold each put-back for ``press_hold_s`` of data time after it settled: a plate pressed
        steadily by a hand (or an item set down and taken straight back) goes back down by the
        same weight within that time. The pair nets zero for the shopper, so both are dropped
        (counted as ``press_cancelled``) instead of reaching the cart as a put-back and a pick.

        Decided at the detector's tick ends (its data clock), so the result never depends on how
        samples were cut into blocks. Each change comes out with the tick it is released at (the
        end of the data for those the stream's end releases): its trace reaches no further."""
        out: list[tuple[WeightChange, float]] = []
        by_tick: dict[float, list[WeightChange]] = {}
        for c in changes:
            by_tick.setdefault(c.t_detect, []).append(c)
        ticks = list(self.detector.tick_log)
        known = {t for t, _ in ticks}
        ticks += [(t, {}) for t in by_tick if t not in known]
        for t_tick, open_since in sorted(ticks, key=lambda x: x[0]):
            for c in by_tick.get(t_tick, ()):
                if c.kind == "change" and c.delta_g < 0 and self._cancels(c):
                    continue
                if c.kind == "change" and c.delta_g > 0 and self.press_hold_s > 0:
                    self._held.append(c)
                else:
                    out.append((c, t_tick))
            for h in list(self._held):
                until = h.t_end + self.press_hold_s
                busy = open_since.get(h.shelf)
                if final or (t_tick >= until and (busy is None or busy > until)):
                    self._held.remove(h)
                    out.append((h, t_tick))
        if final:
            end = self.ring.last_t
            out.extend((h, math.inf if end is None else end) for h in self._held)
            self._held.clear()
        return out

    def _cancels(self, pick: WeightChange) -> bool:
        """A pick that takes back, on the same plates and within the hold, what a held put-back
        added: a press. Drops the pair."""
        for h in self._held:
            if h.shelf == pick.shelf and set(h.plates) & set(pick.plates) \
                    and pick.t_start <= h.t_end + self.press_hold_s \
                    and abs(h.delta_g + pick.delta_g) <= max(5.0, 0.02 * abs(pick.delta_g),
                                                             3 * math.hypot(h.noise_g, pick.noise_g)):
                self._held.remove(h)
                self.stats.count("press_cancelled")
                log.info("shelf %s plates %s: %+.1f g then %+.1f g within %.1f s: a press, not an item",
                         pick.shelf, pick.plates, h.delta_g, pick.delta_g, self.press_hold_s)
                return True
        return False

    def _split(self, change: WeightChange, depth: int = 0) -> list[WeightChange]:
        """One change over several plates that no product explains may be two: two hands on
        adjacent facings at once, or a restock beside a pick (opposite signs). Split it where
        every part is then a product of its own (by sign first, else at the cut between adjacent
        plates that explains best); otherwise keep it whole (an ``unknown_change``)."""
        deltas = change.plate_deltas
        if change.kind != "change" or len(deltas) < 2 or depth > 2:
            return [change]
        whole = self.identifier.identify(change.shelf, change.plates, change.delta_g, change.noise_g,
                                         plate_deltas=deltas, now=change.t_end)
        if whole.best.sku is not None:
            return [change]
        plates = sorted(deltas)
        signs = {p: deltas[p] > 0 for p in plates}
        if len(set(signs.values())) > 1:
            options = [[[p for p in plates if signs[p]], [p for p in plates if not signs[p]]]]
        else:
            options = [[plates[:k], plates[k:]] for k in range(1, len(plates))]
        best, best_ls = None, -math.inf
        for option in options:
            parts = [self._part(change, ps) for ps in option]
            if any(abs(pt.delta_g) < self.detector.p.min_event_g for pt in parts):
                continue
            ids = [self.identifier.identify(pt.shelf, pt.plates, pt.delta_g, pt.noise_g,
                                            plate_deltas=pt.plate_deltas, now=pt.t_end) for pt in parts]
            if len(set(signs.values())) == 1 and any(i.best.sku is None for i in ids):
                continue
            ls = sum(i.best.log_score for i in ids)
            if ls > best_ls:
                best, best_ls = parts, ls
        if best is None:
            return [change]
        self.stats.count("split_changes")
        return [q for pt in best for q in self._split(pt, depth + 1)]

    @staticmethod
    def _part(change: WeightChange, plates: list[int]) -> WeightChange:
        d = {p: change.plate_deltas[p] for p in plates}
        share = math.sqrt(len(plates) / max(1, len(change.plate_deltas)))
        return WeightChange(change.shelf, sorted(plates), d, float(sum(d.values())), change.t_start,
                            change.t_end, change.noise_g * share, change.kind, change.t_detect)

    @property
    def vision_pending(self) -> int:
        return len(self._waiting)

    def _event(self, change: WeightChange, job: Future[VisionResult] | None = None,
               trace: dict[str, Any] | None = None) -> dict[str, Any]:
        ident = weight_ident = None
        vres = None
        if self.vision is not None and change.kind == "change":
            vres = self._vision_result(job)
        if change.kind == "change":
            ev = list(self.evidence(change)) if self.evidence else []
            weight_ident = self.identifier.identify(change.shelf, change.plates, change.delta_g,
                                                    change.noise_g, ev or None,
                                                    plate_deltas=change.plate_deltas, now=change.t_end)
            ident = weight_ident
            if vres is not None and vres.ok:
                from .events.fusion import VisionEvidence
                tau, floor = self.fusion
                ev.append(VisionEvidence(vres, change.delta_g, tau, floor))
                ident = self.identifier.identify(change.shelf, change.plates, change.delta_g,
                                                 change.noise_g, ev,
                                                 plate_deltas=change.plate_deltas, now=change.t_end)
        event = build_event(self.store_id, self.unit_id, change, ident, self.review_below, trace)
        if vres is not None:
            from .events.fusion import vision_block
            event["vision"] = vision_block(vres)
            event["weight_only"] = not (vres.ok and bool(vres.action or vres.skus))
            if vres.ok and self.capture is not None and weight_ident is not None \
                    and weight_ident.best.sku is not None:  # weight_ident: set for every change vision saw
                self.capture.offer(event, weight_ident.confidence, vres)
        if self.observer is not None:
            self.observer(change, weight_ident, ident, vres, event)
        self.stats.events += 1
        self.stats.count(event["type"])
        self._apply_inventory(event)
        strays = self.identifier.known_strays(change.t_end)
        self.identifier.observe(event, now=change.t_end)
        if self.identifier.known_strays(change.t_end) != strays:
            self.state_changed = True   # state.misplaced changed
        self._learn(ident, event, change)
        log.info("%s shelf %s plates %s Δ=%+.1f g → %s ×%s (confidence %.2f)", event["type"],
                 event["shelf"], event["plates"], event["delta_g"], event["sku"], event["quantity"],
                 event["confidence"])
        return event

    def _learn(self, ident: Identification | None, event: dict[str, Any], change: WeightChange) -> None:
        """A confident event of a product on its own facing is a weighing of its unit weight."""
        if ident is None or event["type"] not in ("pick", "put_back") or event.get("misplaced"):
            return
        best = ident.best
        if best.sku is None or best.score < self.learn_confidence or best.arrangement not in ("facing", "straddle"):
            return
        if self.weights.learn(best.sku, best.measured_g, best.quantity, change.noise_g) is not None:
            self.weights.save()
            self.state_changed = True

    # ------------------------------------------------------------------ inventory

    def _apply_inventory(self, event: dict[str, Any]) -> None:
        if event["type"] not in ("pick", "put_back") or event.get("misplaced"):
            return
        for f in self.facings:
            if f.sku == event["sku"] and f.shelf == event["shelf"] and set(f.plates) & set(event["plates"]):
                if f.units is not None:
                    sign = -1 if event["type"] == "pick" else 1
                    f.units = max(0, f.units + sign * int(event["quantity"]))
                    self.state_changed = True
                return

    def _estimate_stock(self) -> None:
        """Units on a facing, from its plates' weight, once they first come to rest.

        Only meaningful with a real tare (a calibrated unit); shared plates are skipped."""
        for f in self.facings:
            if f.units is not None:
                continue
            idx = [self.layout.plate(f.shelf, p).index for p in f.plates]
            if not all(self.detector.state[i] == REST for i in idx):
                continue
            shared = any(o is not f and o.shelf == f.shelf and set(o.plates) & set(f.plates)
                         for o in self.facings)
            unit = self.layout.skus[f.sku].unit_weight_g
            w = float(sum(self.detector.base[i] for i in idx))
            f.source = "unknown" if shared else "weight"
            f.units = None if shared or w < -unit / 2 else max(0, int(round(w / unit)))
            if f.units is not None:
                self.state_changed = True

    # ------------------------------------------------------------------ reports

    @property
    def last_grams(self) -> np.ndarray:
        """Each plate's latest conditioned weight in grams, by plate index (NaN before its first sample)."""
        return self._last_grams

    def inventory(self) -> dict[str, Any]:
        plates = {}
        states = self.detector.plate_states()
        for pl in self.layout.plates:
            g = self._last_grams[pl.index]
            plates[pl.key] = {"weight_g": None if math.isnan(g) else round(float(g), 1),
                              "state": states[pl.index]}
        return {
            "t": rfc3339(self.last_t) if self.last_t else None,
            "plates": plates,
            "facings": [{"sku": f.sku, "shelf": f.shelf, "plates": list(f.plates), "units": f.units,
                         "source": f.source} for f in self.facings],
            "unit_weights": self.weights.snapshot(),   # SKUs it has learned from
            "misplaced": self.misplaced(),
        }

    def misplaced(self) -> list[dict[str, Any]]:
        """Items believed to lie where they do not belong: the identifier's known strays
        (misplaced returns seen on these plates and not taken back, in the last 4 h of data)."""
        return [{"sku": k.sku, "shelf": k.shelf, "plates": list(k.plates), "units": k.units}
                for k in self.identifier.known_strays(self.last_t)]

    def plate_health(self) -> dict[str, Any]:
        states = self.detector.plate_states()
        return {pl.key: {"state": states[pl.index], "noise_g": round(float(self.detector.sigma[pl.index]), 2),
                         "trigger_g": round(float(self.detector.trigger_g()[pl.index]), 1)}
                for pl in self.layout.plates}

    def _vision_result(self, job: Future[VisionResult] | None) -> VisionResult:
        from .vision.engine import VisionResult
        if job is None or self.vision is None:  # a job is only ever the vision engine's
            return VisionResult("unavailable", reason="not analysed")
        if not job.done():
            self.vision.note_timeout()
            return VisionResult("timeout", models=self.vision.model_hashes(),
                                reason=f"no vision answer within {self.vision_deadline_s * 1000:.0f} ms")
        try:
            return job.result()
        except Exception as exc:  # noqa: BLE001 - counted and survived; the event goes weight-only
            return VisionResult("error", reason=f"{type(exc).__name__}: {exc}")

    def degraded_reasons(self) -> list[str]:
        states = self.detector.plate_states()
        bad = [pl.key for pl in self.layout.plates if states[pl.index] == "unavailable"]
        now = time.monotonic()
        held = [k for k, until in self.maintenance.items() if until > now]
        drift = [f"unit weight of {sku} drifts beyond ±{100 * self.weights.drift_limit:.0f} % of the planogram "
                 f"({self.weights.w[sku].mean_g:.1f} g vs {self.weights.w[sku].catalogue_g:.1f} g): check the entry"
                 for sku in self.weights.drifting()]
        return [f"plate {k} has no data" for k in bad] + \
            ([f"plate(s) {', '.join(sorted(held))} in maintenance (shelfcal): no events"] if held else []) + drift

    # ------------------------------------------------------------------ maintenance (shelfcal)

    def set_maintenance(self, keys: list[str], seconds: float) -> dict[str, float]:
        """Weight changes on these plates ("shelf/plate") are not events for ``seconds`` (0 ends
        it): a technician's test masses must not reach the store as picks."""
        now = time.monotonic()
        for k in keys:
            if seconds > 0:
                self.maintenance[k] = now + seconds
            else:
                self.maintenance.pop(k, None)
        return {k: round(u - now, 1) for k, u in self.maintenance.items() if u > now}

    def _drop_maintenance(self, changes: list[WeightChange]) -> list[WeightChange]:
        now = time.monotonic()
        self.maintenance = {k: u for k, u in self.maintenance.items() if u > now}
        kept = []
        for c in changes:
            # a change mostly made on plates under a technician's hands is theirs (a noisy
            # neighbour summed into it does not make it a pick); one made elsewhere still counts
            deltas = c.plate_deltas or {p: c.delta_g / max(1, len(c.plates)) for p in c.plates}
            ours = sum(abs(d) for p, d in deltas.items() if f"{c.shelf}/{p}" in self.maintenance)
            if ours > 0.5 * sum(abs(d) for d in deltas.values()):
                self.stats.count("maintenance_suppressed")
                log.info("shelf %s plates %s Δ=%+.1f g during maintenance: not an event", c.shelf, c.plates, c.delta_g)
                continue
            kept.append(c)
        return kept


def run_offline(cfg: Config | None, source: SampleSource, layout: Layout, emit: Callable[[dict[str, Any]], None],
                calibration: CalibrationState | None = None, evidence: EvidenceProvider | None = None,
                progress: Callable[[PipelineStats], None] | None = None, *,
                vision: dict[str, Any] | None = None) -> PipelineStats:
    """Run a finite source through the pipeline as fast as it delivers; ``emit`` gets each event.

    ``cfg`` is the unit's :class:`~daemon.config.Config` or None (ids default to the recording's).
    ``vision``: Pipeline keyword arguments for the camera path (``vision``, ``fusion``,
    ``vision_deadline_s``, ``capture``), e.g. from ``daemon.vision.setup.build_vision``."""
    store_id = cfg.store_id if cfg else "replay"
    unit_id = cfg.unit_id if cfg else "replay"
    detection = cfg.detection if cfg else None
    if calibration is None and hasattr(source, "factory_calibration") and source.units == "counts":
        calibration = source.factory_calibration()
    pipe = Pipeline(store_id, unit_id, layout, list(source.channels), source.units, source.rate_hz,
                    calibration, detection, evidence, **(vision or {}))
    source.start()
    try:
        while True:
            block = source.read(1.0)
            if block is None:
                break
            for ev in pipe.process(block):
                emit(ev)
            if progress and pipe.stats.blocks % 200 == 0:
                progress(pipe.stats)
        for ev in pipe.finish():
            emit(ev)
    finally:
        source.close()
    return pipe.stats
