"""The layering rule of docs/architecture.md, checked on the source: lower floors never import higher ones,
Qt only in ``widgets/``, and no import cycles between the rooms (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_sscce"
LOWER = ("io", "models", "metrics", "divergence")
HIGHER = ("training", "loop", "widgets", "cli", "workspace", "demo")
QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "napari.qt", "napari._qt")
#: known violations waiting for their move (issue 23, part 2); each must still exist, so the list only shrinks
ALLOWED_LAYER = {
    ("io.datasets", "workspace"): "opens a workspace folder as a dataset; moves when the workspace owns it",
}
ALLOWED_QT: dict[str, str] = {}


def _imports() -> list[tuple[str, str, bool]]:
    """(importing module, imported module, at module level) for every import in the package."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            out += [(module, n, id(node) in top_level) for n in names]
    return out


def _room(module: str) -> str:
    return module.split(".")[0]


def _internal(name: str) -> str | None:
    return name[len("napari_sscce."):] if name.startswith("napari_sscce.") else None


def test_lower_floors_never_import_higher_ones():
    found = {}
    for module, name, _ in _imports():
        target = _internal(name)
        if target and _room(module) in LOWER and _room(target) in HIGHER:
            found[(module, _room(target))] = f"{module} imports {name}"
    unexpected = {k: v for k, v in found.items() if k not in ALLOWED_LAYER}
    assert not unexpected, "\n".join(unexpected.values())
    stale = set(ALLOWED_LAYER) - set(found)
    assert not stale, f"allowed violations that are gone (remove them from the list): {stale}"


MIDDLE = ("training", "inference", "methods", "precision", "uncertainty")
FACES_AND_LOOP = ("loop", "widgets", "cli", "workspace", "demo")


def test_training_and_inference_know_nothing_of_the_loop_or_the_faces():
    """``training/`` trains a model from a config; inference and methods serve every face alike."""
    found = [
        f"{module} imports {name}"
        for module, name, _ in _imports()
        if _internal(name) and _room(module) in MIDDLE and _room(_internal(name)) in FACES_AND_LOOP
    ]
    assert not found, "\n".join(found)


def test_qt_only_in_widgets():
    found = {}
    for module, name, _ in _imports():
        if name.startswith(QT) and _room(module) != "widgets":
            found[module] = f"{module} imports {name}"
    unexpected = {k: v for k, v in found.items() if k not in ALLOWED_QT}
    assert not unexpected, "\n".join(unexpected.values())
    assert not set(ALLOWED_QT) - set(found), "an allowed Qt import is gone: remove it from the list"


def test_no_import_cycles_between_rooms_at_module_level():
    """Rooms (top-level modules and packages) form no cycle through module-level imports."""
    graph: dict[str, set[str]] = {}
    for module, name, top in _imports():
        target = _internal(name)
        if top and target and _room(target) != _room(module):
            graph.setdefault(_room(module), set()).add(_room(target))
    cycles = []

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(sorted(set(cycles))[:5])


@pytest.mark.parametrize("room", LOWER)
def test_the_rule_sees_the_lower_rooms(room):
    assert any(_room(m) == room for m, _, _ in _imports())  # the rule is not vacuous
