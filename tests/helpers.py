"""Small helpers shared by the daemon-level tests."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "sim-unit.yaml"


def shelfd(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kw)


def write_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@lru_cache(maxsize=1)
def event_schema() -> dict:
    return json.loads((REPO / "daemon" / "schemas" / "item-event.schema.json").read_text())


def validate_event(ev: dict) -> None:
    import jsonschema
    jsonschema.validate(ev, event_schema())
