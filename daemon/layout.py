"""The physical layout every stage agrees on: shelves, plates, their channels, and the planogram.

Built from the YAML config, or from a recording's own description (AiFi ships its planogram and
products). Plates are numbered in column order (``Plate.index``) so per-plate arrays line up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config


def default_unit_sd(unit_weight_g: float) -> float:
    """Spread of one unit's weight when the planogram does not say: AIM3S weighings show a few %."""
    return max(1.5, 0.025 * unit_weight_g)


@dataclass(frozen=True)
class Plate:
    shelf: str
    id: int
    index: int                  # column in per-plate arrays
    channels: tuple[str, ...]   # load-cell channels summed into this plate
    capacity_g: float = 20000.0

    @property
    def key(self) -> str:
        return f"{self.shelf}/{self.id}"


@dataclass(frozen=True)
class Placement:
    sku: str
    shelf: str
    plates: tuple[int, ...]
    unit_weight_g: float
    unit_weight_sd_g: float
    name: str | None = None
    stock: int | None = None
    # the unit weight was weighed (the planogram gives its spread), not taken from a catalogue:
    # its mean is trusted to ~1 % instead of ~3 % until the unit has learned it (unit_weights.py)
    weighed: bool = False


@dataclass
class Layout:
    plates: list[Plate]
    placements: list[Placement] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.channels: list[str] = [c for p in self.plates for c in p.channels]
        self.shelves: list[str] = list(dict.fromkeys(p.shelf for p in self.plates))
        self._by_key = {(p.shelf, p.id): p for p in self.plates}
        self.skus: dict[str, Placement] = {}
        for pl in self.placements:
            self.skus.setdefault(pl.sku, pl)

    def plate(self, shelf: str, plate_id: int) -> Plate:
        return self._by_key[(shelf, plate_id)]

    def has_plate(self, shelf: str, plate_id: int) -> bool:
        return (shelf, plate_id) in self._by_key

    def shelf_plates(self, shelf: str) -> list[Plate]:
        return [p for p in self.plates if p.shelf == shelf]

    def placements_on(self, shelf: str, plate_ids: set[int] | None = None) -> list[Placement]:
        return [pl for pl in self.placements
                if pl.shelf == shelf and (plate_ids is None or plate_ids & set(pl.plates))]

    @classmethod
    def from_config(cls, cfg: Config) -> Layout:
        plates: list[Plate] = []
        for shelf in cfg.shelves:
            for pc in sorted(shelf.plates, key=lambda p: p.id):
                chans = tuple(pc.channels)
                # The simulator names its own channels, and a recording of a simulated unit
                # carries those names, so the same config (backend switched to replay) must map
                # plates the same way: the backend says so (``names_plate_channels``).
                if not chans and cfg.sensing.names_plate_channels:
                    chans = (sim_channel_name(shelf.id, pc.id),)
                plates.append(Plate(shelf.id, pc.id, len(plates), chans, pc.capacity_g))
        placements = [
            Placement(p.sku, p.shelf, tuple(p.plates), p.unit_weight_g,
                      p.unit_weight_sd_g or default_unit_sd(p.unit_weight_g), p.name, p.stock,
                      weighed=p.unit_weight_sd_g is not None)
            for p in cfg.planogram
        ]
        return cls(plates, placements)


def sim_channel_name(shelf: str, plate_id: int) -> str:
    """Channel name the simulator gives a plate whose config lists no channels."""
    return f"sim-{shelf}-{plate_id}"
