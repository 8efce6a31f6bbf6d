"""constraints.txt pins what every install uses (fleet, CI, `make venv`): each dependency, and this venv agrees."""
from __future__ import annotations

import re
import tomllib
from importlib import metadata

from helpers import REPO
from packaging.markers import default_environment
from packaging.requirements import Requirement

EXTRAS = ("pi", "test", "bench", "cartd", "usb-camera")  # `train` is a workstation's business


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            out[norm(name)] = version.split(";")[0].strip()
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_dependency_is_pinned_within_what_pyproject_allows():
    p = pins()
    for req in requirements():
        name = norm(req.name)
        assert name in p, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(p[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={p[name]}, outside pyproject's {req.specifier}"


def test_this_venv_runs_the_pinned_versions():
    p = pins()
    env = default_environment()
    wrong = []
    for req in requirements():
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this venv does not have
        if have != p[norm(req.name)]:
            wrong.append(f"{req.name} {have} (pinned {p[norm(req.name)]})")
    assert not wrong, "installed without -c constraints.txt? " + ", ".join(wrong)
