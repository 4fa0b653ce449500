"""The import graph of `dkdm` and `training` has no cycle.

Built from the source (AST) rather than from `sys.modules`, so an edge counts whether or not a test happened to
import it first. Only module-level imports are edges: an import inside a function runs after every module has
loaded and cannot deadlock a partial import; `if TYPE_CHECKING:` blocks never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"training": REPO / "training", "dkdm": REPO / "platform" / "dkdm"}


def _modules() -> dict[str, Path]:
    found = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the body, and the branches of top-level if/try (not TYPE_CHECKING)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                out += _module_level(node.orelse)
                continue
            out += _module_level(node.body) + _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level(node.body) + _module_level(node.orelse) + _module_level(node.finalbody)
            for handler in node.handlers:
                out += _module_level(handler.body)
        else:
            out.append(node)
    return out


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        # `from pkg import sub` imports the submodule; `from mod import name` only the module.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        return set()
    return {n for n in names if n in known and n != module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in _module_level(tree.body):
            edges |= _targets(node, name, path.name == "__init__.py", known)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with white/grey/black marks)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_the_packages():
    graph = import_graph()
    assert "dkdm.tuning.study" in graph and "training.diffusion.gaussian" in graph
    # A known module-level edge: a broken parser would return an empty graph and pass the cycle test vacuously.
    assert "dkdm.tuning.config" in graph["dkdm.settings"]
    assert "dkdm.tuning.commands" in graph["dkdm.cli"]


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"a"}}, None),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_but_the_entry_points_imports_the_cli():
    # The CLI imports the subcommand modules (tune, reproduce); an import back, even one deferred into a function,
    # would hide which way the dependency runs. What they share with it lives in dkdm.command.
    modules = _modules()
    users = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            is_import = isinstance(node, (ast.Import, ast.ImportFrom))
            if is_import and "dkdm.cli" in _targets(node, name, path.name == "__init__.py", set(modules)):
                users.append(name)
    assert sorted(set(users)) == ["dkdm.__main__"]
