"""``audit``: every staff action that writes (sign-in, review decision and its outcome, restock
acknowledgement, maintenance toggle, account change), with who and when. Append-only."""
from __future__ import annotations

import json
from typing import Any

from ..store import Store


def add(store: Store, t: float, actor: str, action: str, target: str | None = None,
        detail: dict[str, Any] | None = None) -> None:
    store.ex("INSERT INTO audit (t, actor, action, target, detail) VALUES (?,?,?,?,?)",
             (t, actor, action, target, json.dumps(detail, sort_keys=True) if detail else None))


def recent(store: Store, limit: int = 100) -> list[tuple[int, float, str, str, str | None, str | None]]:
    """(id, t, actor, action, target, detail JSON), newest first."""
    return store.q("SELECT id, t, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
