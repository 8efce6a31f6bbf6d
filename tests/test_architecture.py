"""The shape of the code, checked: no import cycles, no private names across modules, layers one way.

The import graph is read with ``ast`` from the source of daemon/, calibration/ and aggregator/
(nothing is imported, so a broken module cannot hide an edge). Every import counts, also those
inside functions (they run too, only later), except those under ``if TYPE_CHECKING:``, which
never run.

* A cycle between modules fails: each module of the cycle is listed with the line of its import.
* ``from x import _name`` across modules fails: a private name is private to its module. Share
  it under a public name, or move it to a module both can import. So does ``obj._name`` where no
  ``_name`` is defined in the module that reads it (another module's object's insides).
* The sample path's layers (README, "How a sample travels"): sensing → signal → events → publish.
  A lower layer imports nothing of a higher one; drivers know nothing of events or MQTT.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "calibration", "aggregator")


@dataclass(frozen=True)
class Import:
    source: str      # the importing module
    target: str      # the imported module (or the package's name when a name is not a module)
    names: tuple[str, ...]  # names taken with ``from target import ...``
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            mods[module_name(path)] = path
    return mods


MODULES = all_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (its ``else:`` runs, so it counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(mod: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Import(mod, a.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            # ``from pkg import submodule`` imports the submodule
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            for n in subs:
                out.append(Import(mod, f"{target}.{n}", (), node.lineno))
            rest = tuple(n for n in names if n not in subs)
            if rest or not subs:
                out.append(Import(mod, target, rest, node.lineno))
    return out


IMPORTS = [imp for mod, path in MODULES.items() for imp in imports_of(mod, path)]


def internal_target(target: str) -> str | None:
    """The project module ``target`` names (a package's ``__init__``), else None (third party, stdlib)."""
    return target if target in MODULES else None


def test_the_graph_is_read():
    # guard against a walker that silently finds nothing
    assert len(MODULES) > 60
    edges = {(i.source, i.target) for i in IMPORTS if internal_target(i.target)}
    assert ("daemon.service", "daemon.publish.outbox") in edges
    assert ("calibration.cli", "calibration.context") in edges
    assert len(edges) > 150


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
    return sccs


def test_find_cycles_finds_a_cycle_and_only_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], int] = {}
    for i in IMPORTS:
        t = internal_target(i.target)
        if t and t != i.source:
            edges.setdefault(i.source, set()).add(t)
            where.setdefault((i.source, t), i.line)
    cycles = find_cycles(edges)
    lines = []
    for comp in cycles:
        members = set(comp)
        lines.append(" ↔ ".join(comp) + ": " + "; ".join(
            f"{MODULES[s].relative_to(REPO)}:{where[(s, t)]} imports {t}"
            for s in comp for t in sorted(edges.get(s, ())) if t in members))
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_no_private_names_imported_across_modules():
    bad = [f"{MODULES[i.source].relative_to(REPO)}:{i.line}: from {i.target} import {n}"
           for i in IMPORTS if internal_target(i.target)
           for n in i.names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# public API spelled with an underscore so it cannot clash with a field or a user's name
PUBLIC_UNDERSCORED = {"_make", "_replace", "_asdict", "_fields", "_field_defaults",  # collections.namedtuple
                      "_exit"}  # os._exit: leave a forked child without running the parent's cleanups


def private_reaches(path: Path) -> list[str]:
    """``obj._x`` where the module defines no ``_x`` itself (no def, class, assignment, self._x, slot)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own: set[str] = set()
    reads: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
            own.add(node.value)  # __slots__, getattr(obj, "_x")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            v = node.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls") or isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            else:
                reads.append((node.lineno, ast.unparse(node)))
    return [
        f"{path.relative_to(REPO)}:{line}: {text}"
        for line, text in reads
        if text.rsplit(".", 1)[1] not in own | PUBLIC_UNDERSCORED
    ]


def test_no_private_attributes_of_other_modules_objects():
    bad = [r for path in MODULES.values() for r in private_reaches(path)]
    assert not bad, "private attributes read from outside their module:\n" + "\n".join(bad)


# a layer never imports these (the README's "How a sample travels": sensing → signal → events → publish)
FORBIDDEN = {
    "daemon.sensing": ("daemon.signal", "daemon.events", "daemon.publish", "daemon.pipeline", "daemon.service", "paho"),
    "daemon.signal": ("daemon.events", "daemon.publish", "daemon.pipeline", "daemon.service", "paho"),
    "daemon.events": ("daemon.publish", "daemon.pipeline", "daemon.service", "paho"),
}


def _within(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_one_way(layer):
    bad = [f"{MODULES[i.source].relative_to(REPO)}:{i.line}: imports {i.target}"
           for i in IMPORTS if _within(i.source, layer)
           for f in FORBIDDEN[layer] if _within(i.target, f)]
    assert not bad, f"{layer} reaches up the sample path:\n" + "\n".join(bad)


def test_the_checks_see_a_planted_cycle_and_a_private_import(tmp_path):
    """The walker on two planted modules: the cycle, the private import and the private reach are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _helper\n")
    (pkg / "b.py").write_text("def f(o):\n    from pkg import a\n    return o._secret\n")
    global REPO, MODULES
    saved = REPO, MODULES
    try:
        REPO = tmp_path
        MODULES = {module_name(p): p for p in sorted(pkg.rglob("*.py"))}
        imps = [imp for mod, path in MODULES.items() for imp in imports_of(mod, path)]
        edges: dict[str, set[str]] = {}
        for i in imps:
            if i.target in MODULES and i.target != i.source:
                edges.setdefault(i.source, set()).add(i.target)
        assert find_cycles(edges) == [["pkg.a", "pkg.b"]]
        assert [(i.source, n) for i in imps for n in i.names if n.startswith("_")] == [("pkg.a", "_helper")]
        assert private_reaches(pkg / "b.py") == ["pkg/b.py:3: o._secret"]
    finally:
        REPO, MODULES = saved
