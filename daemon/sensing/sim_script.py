"""Scripted shelf interactions for the simulator (``sensing.script``).

A store simulation (``aggregator/sim``) plans which shopper touches which shelf when; each unit's
simulator then performs exactly those interactions, with its usual physics (hand transients,
shelf flex, ringing, noise), and nothing else. One JSON object per line:

```json
{"t": 12.5, "type": "pick", "shelf": "1", "sku": "049000028911", "quantity": 1, "dur": 2.1,
 "id": "s0003-2", "session_id": "s0003"}
{"t": 40.0, "type": "put_back", "shelf": "2", "sku": "049000028911", "plates": [3],
 "unit_weight_g": 640, "unit_weight_sd_g": 16}
{"t": 55.0, "type": "lean", "shelf": "1"}
```

``t`` is seconds after the unit's sample 0 (``sensing.t0``), when the hand first touches the shelf;
``dur`` the hand's contact time (default: drawn 1–3.5 s). A ``put_back`` whose ``plates`` lie off
the SKU's own facing (or whose SKU has no facing on that shelf) is a misplaced return onto
``plates[0]``; its weight is a unit the unit's shoppers took, else drawn from ``unit_weight_g`` /
``unit_weight_sd_g`` (needed for products from another unit). Nothing here imports the simulator:
``daemon.config`` uses it to check a script when the config is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ScriptError(ValueError):
    """``path:line: message``."""


class ScriptedInteraction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float = Field(ge=0)
    type: Literal["pick", "put_back", "lean", "press"]
    shelf: str
    sku: str | None = None
    quantity: int = Field(1, ge=1, le=50)
    plates: list[int] | None = None
    dur: float | None = Field(None, ge=0.5, le=10.0)
    unit_weight_g: float | None = Field(None, gt=0)
    unit_weight_sd_g: float | None = Field(None, gt=0)
    # informational: carried into the simulator's ground truth so a store bench can join on it
    id: str | None = None
    session_id: str | None = None


def load_script(path: str | Path) -> list[ScriptedInteraction]:
    """Parse a script; entries sorted by ``t``. Raises :class:`ScriptError` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read script: {exc.strerror}") from None
    out: list[ScriptedInteraction] = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = ScriptedInteraction.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ScriptError(f"{path}:{no}: not JSON: {exc.msg}") from None
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "(line)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ScriptError(f"{path}:{no}: {where}: {msg}") from None
        if entry.type in ("pick", "put_back") and entry.sku is None:
            raise ScriptError(f"{path}:{no}: sku: required for a {entry.type}")
        out.append(entry)
    out.sort(key=lambda e: e.t)
    return out


def script_problems(path: str | Path, plates_of: dict[str, set[int]],
                    weights: dict[str, float]) -> list[str]:
    """Problems of a script against a unit's shelves (``{shelf: {plate ids}}``) and planogram
    (``{sku: unit weight}``); an empty list when it is fine."""
    try:
        entries = load_script(path)
    except ScriptError as exc:
        return [str(exc)]
    problems: list[str] = []
    for e in entries:
        if e.shelf not in plates_of:
            problems.append(f"{path}: entry at t={e.t}: unknown shelf {e.shelf!r}")
            continue
        bad = [p for p in e.plates or [] if p not in plates_of[e.shelf]]
        if bad:
            problems.append(f"{path}: entry at t={e.t}: shelf {e.shelf!r} has no plate {bad[0]}")
        if e.type == "pick" and e.sku not in weights:
            problems.append(f"{path}: entry at t={e.t}: pick of {e.sku!r}, which is not in the planogram")
        if e.type == "put_back" and e.sku not in weights and e.unit_weight_g is None:
            problems.append(f"{path}: entry at t={e.t}: put_back of {e.sku!r} from another unit "
                            "needs unit_weight_g")
        if len(problems) >= 5:
            break
    return problems
