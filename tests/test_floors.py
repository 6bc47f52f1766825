"""The floors of turbo_ds import only downwards and never in a circle (runtime imports, function-level ones
included; ``if TYPE_CHECKING:`` blocks are annotations only and do not count). README "Code map" draws them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit

PACKAGE = REPO / "turbo_ds"

# Floor of each part, from the ground up: a module imports its own floor or lower. prep/ (offline tools) sits
# beside engine/: it uses the data and model floors, and a task's `prepare` calls it to write the demo.
FLOORS = {
    "config": 0, "fileio": 0, "memory": 0,
    "turbo": 1, "data": 1, "models": 1,
    "engine": 2, "prep": 2,
    "tasks": 3,
    "plan": 4,
    "trainer": 5,
    "train": 6, "export": 6, "predict": 6, "zeroshot": 6, "plot": 6,
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


class _Imports(ast.NodeVisitor):
    """The turbo_ds modules one file imports at run time (anywhere in it, TYPE_CHECKING blocks aside)."""

    def __init__(self, module: str, is_package: bool):
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names if a.name.split(".")[0] == "turbo_ds")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = ".".join(self.package[:len(self.package) - node.level + 1] + [node.module or ""]) if node.level \
            else node.module or ""
        if base.split(".")[0] == "turbo_ds":
            self.found.update(f"{base.rstrip('.')}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the turbo_ds modules it imports (``from pkg import name`` counts as pkg.name when that is a
    module, else as pkg)."""
    names = module_names()
    graph = {}
    for module, path in names.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        targets = set()
        for name in visitor.found:
            while name not in names:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on_stack.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else "turbo_ds"
    assert part in FLOORS, f"{module}: a new part of turbo_ds; give it a floor in FLOORS (and the README code map)"
    return FLOORS[part]


def test_the_graph_reader_sees_imports():
    graph = import_graph()
    assert "turbo_ds.config.schema" in graph["turbo_ds.config"]  # the reader cannot silently find nothing
    assert "turbo_ds.tasks" in graph["turbo_ds.trainer"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_every_import_goes_down_or_stays_on_its_floor():
    climbs = [f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
              for m, targets in sorted(import_graph().items()) for t in sorted(targets) if floor(t) > floor(m)]
    assert climbs == []


def test_config_is_the_ground_floor_and_engine_knows_no_task():
    graph = import_graph()
    outside = {t for m, ts in graph.items() if m.startswith("turbo_ds.config") for t in ts
               if not t.startswith("turbo_ds.config")}
    assert outside == set()
    upward = {t for m, ts in graph.items() if m.startswith("turbo_ds.engine") for t in ts
              if t.startswith(("turbo_ds.tasks", "turbo_ds.trainer", "turbo_ds.plan"))}
    assert upward == set()
