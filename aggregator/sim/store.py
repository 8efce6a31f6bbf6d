"""The simulated store's layout: shelf units (one Pi each), their shelves and plates, the
planogram, and the catalogue prices. Everything is derived from a few numbers, so a 2-unit quick
demo and a 4-unit bench store are the same code.

Products and unit weights are AIM3S-style retail items (weighed units, a few % spread); within a
shelf, neighbouring facings differ in weight so the weight pipeline can tell them apart, as a
planogram designer for a weight-sensing store would arrange them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# (sku, name, unit weight g, sd g, price in cents); AIM3S / common retail weights
PRODUCTS: list[tuple[str, str, float, float, int]] = [
    ("049000028911", "Coca-Cola 20 oz", 640.0, 8.0, 229),
    ("028400090858", "Lay's Classic 1 oz", 38.0, 1.2, 129),
    ("040000424314", "M&M's Peanut", 62.0, 1.5, 149),
    ("071142008582", "Arrowhead Spring Water", 622.0, 7.0, 189),
    ("012000161155", "Pepsi 12 oz can", 368.0, 4.0, 119),
    ("034000002467", "Reese's Cups", 46.0, 1.2, 139),
    ("044600008899", "409 Multi-Surface", 1028.0, 10.0, 549),
    ("052548575496", "Toilet bowl cleaner", 799.0, 8.0, 399),
    ("035000530639", "Fabuloso Cleaner", 684.5, 6.8, 449),
    ("046500216121", "Raid", 439.3, 4.4, 699),
    ("019800001230", "Windex Original", 409.0, 5.2, 479),
    ("037000973782", "Dawn dish liquid", 272.1, 2.7, 329),
    ("037000197430", "Fabric Febreze", 575.5, 5.8, 599),
    ("046500733321", "Glade Clean Linen", 306.1, 3.1, 379),
    ("037000762300", "Bounty Paper Towels", 152.5, 5.0, 249),
    ("052548570682", "Ultra Premium Paper Towel", 264.0, 2.6, 299),
    ("640562023941", "Sanitex Vinyl Gloves", 565.5, 7.8, 899),
    ("052548605148", "Quart Freezer Bags", 141.5, 4.4, 359),
    ("012587000106", "Glad Cling Wrap", 168.8, 1.7, 429),
    ("040000000327", "Peanut M&M's share size", 93.5, 1.0, 249),
    ("03422900", "Kit Kat King Size", 89.3, 1.8, 229),
    ("04010508", "Snickers Almond", 52.7, 1.1, 159),
    ("078000113464", "Dr Pepper 20 oz", 650.0, 8.0, 229),
    ("012000001291", "Aquafina 1 L", 1040.0, 10.0, 199),
    ("028400047685", "Doritos Nacho 9.25 oz", 290.0, 4.0, 479),
    ("038000138416", "Pringles Original", 185.0, 3.0, 299),
    ("044000032029", "Oreo Cookies", 432.0, 5.0, 449),
    ("030000010204", "Quaker Oats", 510.0, 6.0, 529),
    ("016000275287", "Cheerios", 340.0, 4.0, 479),
    ("051500255162", "Jif Peanut Butter", 454.0, 5.0, 399),
    ("041196910759", "Progresso Soup", 539.0, 6.0, 279),
    ("024000167099", "Del Monte Corn", 432.0, 5.0, 159),
]


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    unit_weight_g: float
    sd_g: float
    price: int


@dataclass
class Facing:
    sku: str
    unit_id: str
    shelf: str
    plates: list[int]
    stock: int


@dataclass
class Unit:
    unit_id: str
    shelves: dict[str, list[int]]            # shelf id → plate ids
    facings: list[Facing] = field(default_factory=list)

    def shelf_keys(self) -> list[tuple[str, str]]:
        return [(self.unit_id, s) for s in self.shelves]


@dataclass
class Store:
    store_id: str
    units: list[Unit]
    products: dict[str, Product]
    rate_hz: float = 60.0

    @property
    def shelves(self) -> list[tuple[str, str]]:
        """Every (unit_id, shelf), in walking order."""
        return [k for u in self.units for k in u.shelf_keys()]

    def unit(self, unit_id: str) -> Unit:
        return next(u for u in self.units if u.unit_id == unit_id)

    def facings(self) -> list[Facing]:
        return [f for u in self.units for f in u.facings]

    # ------------------------------------------------------------ files for the processes

    def unit_config(self, unit: Unit, *, port: int, state_dir: Path, script: Path, t0: float,
                    seed: int, ground_truth: Path | None = None) -> dict[str, Any]:
        """``shelfd`` YAML (as a dict) for one unit: sim backend in scripted mode on the store clock."""
        sensing: dict[str, Any] = {"backend": "sim", "seed": seed, "rate_hz": self.rate_hz, "speed": 1.0,
                   "noise_g": 0.7, "script": str(script), "t0": t0}
        if ground_truth is not None:
            sensing["ground_truth"] = str(ground_truth)
        return {
            "version": 1, "unit_id": unit.unit_id, "store_id": self.store_id, "state_dir": str(state_dir),
            "mqtt": {"host": "127.0.0.1", "port": port, "health_interval_s": 2.0},
            "sensing": sensing,
            "shelves": [{"id": s, "plates": [{"id": p} for p in plates]} for s, plates in unit.shelves.items()],
            "planogram": [{"sku": f.sku, "name": self.products[f.sku].name, "shelf": f.shelf,
                           "plates": f.plates, "unit_weight_g": self.products[f.sku].unit_weight_g,
                           "unit_weight_sd_g": self.products[f.sku].sd_g, "stock": f.stock}
                          for f in unit.facings],
        }

    def catalogue(self) -> dict[str, Any]:
        """cartd's catalogue file (YAML ``items``; prices in cents)."""
        skus = [f.sku for f in self.facings()]
        return {"items": [{"sku": s, "name": self.products[s].name, "price": self.products[s].price,
                           "currency": "USD"} for s in dict.fromkeys(skus)]}

    def write_catalogue(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.catalogue(), sort_keys=False))
        return path


def build_store(n_units: int = 4, shelves_per_unit: int = 3, plates_per_shelf: int = 4,
                store_id: str = "sim-store") -> Store:
    """A store of ``n_units`` units; facings one plate wide except the last plate pair of every
    unit's top shelf (a two-plate facing, as for bottles lying across). Products are dealt out so
    that no shelf holds two with unit weights within 15 % of each other."""
    products = {p[0]: Product(*p) for p in PRODUCTS}
    pool = list(products.values())
    units: list[Unit] = []
    k = 0
    for u in range(n_units):
        uid = f"unit-{chr(ord('a') + u)}"
        unit = Unit(uid, {str(s + 1): list(range(1, plates_per_shelf + 1)) for s in range(shelves_per_unit)})
        for shelf in unit.shelves:
            placed: list[Product] = []
            plate = 1
            while plate <= plates_per_shelf:
                # the next product (round robin) whose weight is distinct from the shelf's others
                for j in range(len(pool)):
                    cand = pool[(k + j) % len(pool)]
                    if any(f.sku == cand.sku for f in unit.facings):
                        continue  # one facing per SKU and unit (a SKU may recur on other units)
                    if all(abs(cand.unit_weight_g - p.unit_weight_g) > 0.15 * max(cand.unit_weight_g, p.unit_weight_g)
                           for p in placed):
                        break
                else:
                    raise ValueError(f"cannot fill shelf {shelf} of {uid} with distinct weights")
                k = (k + j + 1) % len(pool)
                two = shelf == "1" and plate == plates_per_shelf - 1 and plates_per_shelf >= 3
                plates = [plate, plate + 1] if two else [plate]
                # a stocker fills a facing to a few kg; never more than a plate carries
                stock = int(min(40, max(12, 5000.0 / cand.unit_weight_g)) * len(plates))
                stock = min(stock, int(15000 * len(plates) / cand.unit_weight_g))
                unit.facings.append(Facing(cand.sku, uid, shelf, plates, stock))
                placed.append(cand)
                plate += len(plates)
        units.append(unit)
    return Store(store_id, units, products)
