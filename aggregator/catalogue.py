"""Prices: a catalogue file (YAML ``items: [{sku, name, price, currency}]`` or CSV with the header
``sku,name,price,currency``). ``price`` is an integer in minor units (cents): money is never a float.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

from daemon.config import ConfigError
from daemon.exitcodes import EX_NOINPUT


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: int
    currency: str


class Catalogue:
    def __init__(self, products: dict[str, Product] | None = None):
        self.products = products or {}

    def get(self, sku: str | None) -> Product | None:
        return self.products.get(sku) if sku is not None else None

    def __len__(self) -> int:
        return len(self.products)

    @classmethod
    def load(cls, path: Path | None, currency: str = "USD") -> Catalogue:
        """Read and check the file; every problem is a ``file:row: message`` line in ConfigError."""
        if path is None:
            return cls()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read catalogue: {exc.strerror}"], str(path), EX_NOINPUT) from None
        rows: list[tuple[str, object]] = []  # (where, the row as read: checked below)
        if str(path).lower().endswith(".csv"):
            reader = csv.DictReader(text.splitlines())
            missing = {"sku", "name", "price"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(
                    [f"{path}:1: CSV header lacks {', '.join(sorted(missing))} (need sku,name,price[,currency])"]
                )
            rows = [(f"{path}:{i + 2}", r) for i, r in enumerate(reader)]
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError([f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ConfigError([f"{path}: expected a mapping with a list 'items'"])
            rows = [(f"{path}: items item {i + 1}", r) for i, r in enumerate(items)]  # counted as people do
        problems: list[str] = []
        products: dict[str, Product] = {}
        for where, r in rows:
            if not isinstance(r, dict):
                problems.append(f"{where}: expected a mapping")
                continue
            sku = str(r.get("sku") or "").strip()
            name = str(r.get("name") or "").strip()
            price = r.get("price")
            try:
                if price is None or isinstance(price, float) or (isinstance(price, str) and "." in price):
                    raise ValueError
                price_i = int(price)
                if price_i < 0:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"{where}: price must be a non-negative integer in minor units (cents), got {price!r}")
                continue
            if not sku:
                problems.append(f"{where}: sku is missing")
                continue
            if sku in products:
                problems.append(f"{where}: sku {sku} is listed twice")
                continue
            cur = str(r.get("currency") or currency).strip().upper()
            if cur != currency.upper():
                problems.append(f"{where}: currency {cur} differs from the store's {currency}")
                continue
            products[sku] = Product(sku, name or sku, price_i, cur)
        if problems:
            raise ConfigError(problems)
        return cls(products)
