"""The association rule itself (aggregator/associate.py), pure: who stood at the shelf, judged
against how the tracker fails (drops, identity swaps of 1-3 s, passers-by, position noise)."""
from __future__ import annotations

import random

import pytest

from aggregator import associate as A

KW = dict(min_confidence=0.5, ambiguity_margin=0.2, not_holding_factor=0.2)


def seen(sid: str, shelf: str, times: list[float], conf: float = 0.8) -> list[A.Sighting]:
    return [A.Sighting(sid, shelf, t, conf) for t in times]


def decide(obs: list[A.Sighting], shelf: str = "1", **kw) -> A.Decision:
    args = {"put_back": False, "holding": None, "quantity": 1, **KW, **kw}
    d = A.decide(A.presence(obs, shelf), **args)
    assert d is not None
    return d


def test_a_presence_longer_than_any_swap_beats_a_denser_burst():
    # S1 seen 4 times over 4 s (no swap lasts that long); S2 seen 5 times within 2 s (one swap)
    obs = seen("S1", "1", [0.0, 1.5, 2.5, 4.0]) + seen("S2", "1", [0.5, 1.0, 2.0, 2.25, 3.0], conf=0.95)
    d = decide(obs)
    assert d.session_id == "S1" and d.reasons == []
    post = dict(d.candidates)
    assert post["S1"] > 0.9 and sum(post.values()) == pytest.approx(1.0)


def test_two_bursts_that_a_swap_explains_alike_are_a_tie_for_review():
    # each seen for 1 s only: either could be the swap; the posterior says so, the larger
    # presence-over-time sum takes the line and it is queued
    obs = seen("S1", "1", [0.0, 0.5, 1.0], conf=0.9) + seen("S2", "1", [3.0, 3.5, 4.0], conf=0.6)
    d = decide(obs)
    assert d.session_id == "S1" and d.reasons == ["ambiguous"]
    assert dict(d.candidates)["S1"] == pytest.approx(0.5)


def test_a_passer_by_below_min_confidence_is_not_seen_at_the_shelf():
    obs = seen("ghost", "1", [0.0, 0.5, 1.0, 1.5], conf=0.4) + seen("S1", "1", [2.0], conf=0.7)
    d = decide(obs)
    assert d.session_id == "S1" and d.reasons == []


def test_unknown_shelf_reports_name_candidates_but_do_not_place_them():
    obs = seen("S1", "1", [0.0, 1.0, 2.0, 3.5]) + seen("S2", "", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], conf=0.95)
    d = decide(obs)
    assert d.session_id == "S1" and [s for s, _ in d.candidates] == ["S1", "S2"]


def test_put_back_goes_to_a_holder_and_factor_zero_excludes_the_others():
    obs = seen("S1", "1", [0.0, 0.5]) + seen("S2", "1", [3.0, 3.5])
    d = decide(obs, put_back=True, holding={"S2": 1})
    assert d.session_id == "S2" and dict(d.candidates)["S2"] == pytest.approx(1 / 1.2)
    d = decide(obs, put_back=True, holding={"S2": 1}, not_holding_factor=0.0)
    assert d.candidates == [("S2", 1.0), ("S1", 0.0)]
    d = decide(obs, put_back=True, holding={}, not_holding_factor=0.0)  # nobody holds it
    assert "put_back_not_in_cart" in d.reasons and "ambiguous" in d.reasons


def test_a_shopper_busy_at_another_shelf_gives_way():
    obs = seen("S1", "1", [0.0, 0.5, 1.0, 1.5]) + seen("S2", "1", [2.5, 3.0])
    assert decide(obs).session_id == "S1"
    d = decide(obs, busy={"S1": 0.99})  # S1's line at another shelf then is sure
    assert d.session_id == "S2"
    d = decide(obs, busy={"S1": 0.2})   # ... or doubtful: S1 keeps it, flagged
    assert d.session_id == "S1" and "busy_elsewhere" in d.reasons


def test_one_candidate_and_its_flags():
    d = decide(seen("S1", "", [0.0], conf=0.8))
    assert d.candidates == [("S1", 1.0)] and d.reasons == ["weak_evidence"]  # 0.4 at half weight
    d = decide(seen("S1", "1", [0.0, 0.5]), put_back=True, holding={}, quantity=1)
    assert d.reasons == ["put_back_not_in_cart"]
    assert A.decide({}, put_back=False, holding=None, quantity=1, **KW) is None
    only = A.decide({"S1": A.Presence(1.0, 1.0, 1)}, put_back=False, holding=None, quantity=1, **KW)
    assert only is not None and only.session_id == "S1" and only.reasons == []


def test_order_and_repeats_of_observations_change_nothing():
    obs = (seen("S1", "1", [0.0, 1.0, 2.0, 3.5]) + seen("S2", "1", [0.5, 1.5], conf=0.9)
           + seen("S1", "", [0.0, 0.5]) + seen("S3", "", [1.0]))
    ref = decide(obs)
    rnd = random.Random(7)
    for _ in range(20):
        shuffled = obs + rnd.sample(obs, 5)
        rnd.shuffle(shuffled)
        d = decide(shuffled)
        assert (d.session_id, d.reasons) == (ref.session_id, ref.reasons)
        assert [s for s, _ in d.candidates] == [s for s, _ in ref.candidates]
        assert [p for _, p in d.candidates] == pytest.approx([p for _, p in ref.candidates])


def test_stood_there_is_the_swap_length_rule():
    assert A.stood_there([]) == 0.0
    one_burst = A.stood_there([0.0, 0.5, 1.0])          # fits a swap: mildly for "stood there"
    too_long = A.stood_there([0.0, 1.0, 2.0, 3.0])       # spans SWAP_MAX_S: no single swap does
    assert 0.0 < one_burst < too_long
    assert too_long > 3.0  # at least one sighting no swap explains: stray, STRAY_P
