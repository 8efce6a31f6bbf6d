"""`make demo DEMO_ARGS=--unit`: one line per item event, in columns that stay put."""
from __future__ import annotations

from daemon.demo import format_event


def test_unit_demo_columns_do_not_shift():
    base = {"seq": 1, "t_end": "2026-01-01T00:00:06.883Z", "shelf": "1", "plates": [2], "type": "pick",
            "quantity": 1, "sku": "A", "delta_g": -36.7, "confidence": 1.0}
    events = [base,
              {**base, "seq": 12, "plates": [2, 3], "type": "put_back", "delta_g": 447.0},   # two plates
              {**base, "seq": 1234, "plates": [1, 2, 3], "quantity": 12, "sku": "B", "shelf": "12",
               "type": "unknown_change", "delta_g": -1234.5, "confidence": 0.42}]
    names = {"A": "Lay's Classic 1 oz", "B": "A product name far longer than the column is wide"}
    lines = [format_event(e, names) for e in events]
    for col in (" × ", "Δ", "confidence"):
        assert len({ln.index(col) for ln in lines}) == 1, (col, lines)
    assert len({len(ln) for ln in lines}) == 1, lines
    assert "plates 2,3 " in lines[1] and "A product name far longer…" in lines[2]
