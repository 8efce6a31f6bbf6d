"""Money printed for people: integer minor units with the currency's own exponent (cartd's log
lines, the demo's receipts)."""
from __future__ import annotations

import pytest

from aggregator.demo import format_receipt
from aggregator.money import fmt_money


@pytest.mark.parametrize("minor, currency, text", [
    (2026, "USD", "$20.26"),
    (2026, "usd", "$20.26"),
    (5, "USD", "$0.05"),
    (-240, "USD", "-$2.40"),
    (123456, "USD", "$1,234.56"),
    (2026, "EUR", "€20.26"),
    (2026, "CHF", "20.26 CHF"),
    (2026, "JPY", "¥2,026"),       # no minor unit
    (2026, "KRW", "2,026 KRW"),
    (20265, "KWD", "20.265 KWD"),  # three decimals
    (None, "USD", "—"),
])
def test_fmt_money_uses_the_currencys_exponent(minor, currency, text):
    assert fmt_money(minor, currency) == text


def test_the_demo_prints_receipts_in_their_currency():
    r = {"receipt_id": "s1/1", "session_id": "s1", "currency": "USD", "total": 2026, "complete": True,
         "lines": [{"sku": "A", "name": "Cola", "quantity": 2, "amount": 1626},
                   {"sku": "B", "name": "Chips", "quantity": 1, "amount": 400, "needs_review": True}]}
    text = format_receipt(r, {"A": 2, "B": 1})
    assert "$16.26" in text and "$4.00  ⚑ review" in text
    assert text.splitlines()[-1] == "  └ total $20.26   — matches what they took"
    yen = format_receipt({**r, "currency": "JPY", "total": 2026}, {"A": 2})
    assert "total ¥2,026" in yen and "DIFFERS" in yen and "2026 " not in yen.replace("¥2,026", "")
