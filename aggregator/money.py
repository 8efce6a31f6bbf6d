"""Money for people: integer minor units → "$20.26", "20.26 EUR", "¥2026"."""
from __future__ import annotations

# ISO 4217 minor-unit exponents that are not 2
_EXPONENT = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "HUF": 2, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3,
             "TND": 3}
_SYMBOL = {"USD": "$", "GBP": "£", "EUR": "€", "JPY": "¥"}


def fmt_money(minor_units: int | None, currency: str) -> str:
    if minor_units is None:
        return "—"
    exp = _EXPONENT.get(currency.upper(), 2)
    sign = "-" if minor_units < 0 else ""
    whole, frac = divmod(abs(int(minor_units)), 10 ** exp) if exp else (abs(int(minor_units)), 0)
    amount = f"{whole:,}" + (f".{frac:0{exp}d}" if exp else "")
    sym = _SYMBOL.get(currency.upper())
    return f"{sign}{sym}{amount}" if sym else f"{sign}{amount} {currency.upper()}"
