"""The package's import graph: no cycle between its modules, and the layering of docs/python_api.md
(options below everything; the pipeline never imports the API; distributed/ never imports cli/).

The graph is read from the source (ast), so imports inside functions count as much as module-level
ones; only ``if TYPE_CHECKING:`` blocks are left out (they never run). Importing ``a.b.c`` also runs
the ``__init__`` of ``a.b``, so that is an edge too, unless it is a package of the importer itself
(already imported by then)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "steadydancer"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def _imported(name: str) -> set[str]:
    """Every steadydancer module that ``name`` imports, at any level of its code."""
    path, is_package = MODULES[name]
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # "from pkg import submodule" imports the submodule
                targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    parts = name.split(".")
    own_packages = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    edges = set()
    for target in targets:
        pieces = target.split(".")
        for i in range(1, len(pieces) + 1):
            module = ".".join(pieces[:i])
            if module in MODULES and module not in own_packages:
                edges.add(module)
    return edges


GRAPH = {name: _imported(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_function_level_imports() -> None:
    # api.py imports the pipeline only inside functions: the graph must still have those edges
    assert "steadydancer.pipeline.run" in GRAPH["steadydancer.api"]
    assert "steadydancer.pipeline.i2v" in GRAPH["steadydancer.api"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    described = ["; ".join(f"{a} -> {b}" for a in cycle for b in sorted(GRAPH[a]) if b in cycle) for cycle in cycles]
    assert not cycles, "import cycles: " + " | ".join(described)


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in GRAPH[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


@pytest.mark.parametrize("importer, forbidden", [
    ("steadydancer.options", "steadydancer.pipeline.i2v"),
    ("steadydancer.options", "steadydancer.api"),
    ("steadydancer.options", "steadydancer.cli"),
])
def test_options_sit_below_everything(importer: str, forbidden: str) -> None:
    assert not any(m == forbidden or m.startswith(forbidden + ".") for m in _reachable(importer))


def test_layers() -> None:
    for name, targets in GRAPH.items():
        if name.startswith("steadydancer.pipeline"):
            assert "steadydancer.api" not in targets and "steadydancer.ui" not in targets, name
        if name.startswith("steadydancer.distributed"):
            assert not any(t.startswith("steadydancer.cli") for t in targets), name
    # the option dataclasses are defined once, in steadydancer.options
    for name in ("pipeline.i2v", "pipeline.long_video", "models.memory", "checks"):
        source = MODULES[f"steadydancer.{name}"][0].read_text(encoding="utf-8")
        assert "class SamplingOptions" not in source and "class LongVideoOptions" not in source
        assert "class MemoryOptions" not in source
    # the command line generates through the Python API
    assert "steadydancer.api" in GRAPH["steadydancer.cli.generate"]
