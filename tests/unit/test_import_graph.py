"""ebbtide's modules import each other without a cycle, lazy imports (inside functions) included: read from
the source (ast), so an import that only runs on some path counts too. An import of `a.b.c` also runs the
packages `a.b` on the way; imports under `if TYPE_CHECKING:` never run and do not count (issue 28: manifest.py
and broker/partitions.py imported each other lazily; rollout and pool did)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "platform" / "ebbtide"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_by(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ebbtide modules `name` imports, at the top or anywhere below it, with the packages they run."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            base = base if node.level else (node.module or "")
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    runs = {".".join(t.split(".")[:k]) for t in targets for k in range(2, len(t.split(".")) + 1)}
    return {m for m in runs if m in modules and m != name and not name.startswith(f"{m}.")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_lazy_imports_included() -> None:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imported_by(name, path, set(paths)) for name, path in paths.items()}
    assert sum(len(deps) for deps in graph.values()) > 100  # the graph was read
    assert cycles(graph) == []


def test_the_check_finds_a_lazy_cycle() -> None:
    graph = {
        "ebbtide.manifest": {"ebbtide.broker.partitions"},
        "ebbtide.broker.partitions": {"ebbtide.manifest"},
        "ebbtide.x": set(),
    }
    assert cycles(graph) == [["ebbtide.broker.partitions", "ebbtide.manifest"]]


def test_a_lazy_import_counts_and_a_type_checking_one_does_not(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .pool import FunctionPool\n"
        "def f() -> None:\n    from .broker import partitions\n"
    )
    modules = {"ebbtide", "ebbtide.x", "ebbtide.pool", "ebbtide.broker", "ebbtide.broker.partitions"}
    assert imported_by("ebbtide.x", source, modules) == {"ebbtide.broker", "ebbtide.broker.partitions"}
