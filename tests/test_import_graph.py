"""The layering of `retouch.serving` and `retouch.pipelines`, read from the source with `ast`.

Every import counts: module level, inside functions (lazy imports), under `TYPE_CHECKING`,
relative and absolute. An import of `a.b.c` also runs the `__init__` of every package on the way
that the importing module is not already inside, so it is an edge to those packages too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"retouch.serving": REPO / "serving", "retouch.pipelines": REPO / "pipelines"}
SURFACES = ("wixma", "aixpose", "mcp", "dashboard")


def module_files() -> dict[str, Path]:
    """Every module of the checked packages, by dotted name (a package by its own name)."""
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_names(name: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """`(absolute module or attribute path, line)` for every import statement in the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                drop = node.level - 1 if is_package(name) else node.level
                base = ".".join(parts[:len(parts) - drop] if drop else parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield base, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                yield f"{base}.{alias.name}", node.lineno


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, int]]:
    """`{module: {imported module: first line}}` restricted to the checked packages."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        inside = set(ancestors(name)) | ({name} if is_package(name) else set())
        for target, line in imported_names(name, ast.parse(path.read_text(), str(path))):
            for candidate in [*ancestors(target), target]:
                if candidate in MODULES and candidate != name and candidate not in inside:
                    edges.setdefault(candidate, line)
        graph[name] = edges
    return graph


GRAPH = import_graph()


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(cycle: list[str]) -> str:
    return "\n".join(f"  {a}  --line {GRAPH[a][b]}-->  {b}" for a, b in zip(cycle, cycle[1:]))


def test_the_graph_sees_lazy_and_relative_imports():
    # A check that found nothing would pass on any code: it must see the imports it judges.
    assert len(MODULES) > 40
    assert "retouch.serving.core.db" in GRAPH["retouch.serving.core.jobs"]  # relative
    assert "retouch.serving.tasks" in GRAPH["retouch.serving.core.jobs"]  # `..tasks`
    assert "retouch.serving.requests" in GRAPH["retouch.serving.tasks"]
    lazy = ast.parse("def f():\n    from .db import utcnow\n")
    assert [t for t, _ in imported_names("retouch.serving.core.jobs", lazy)][0] == \
        "retouch.serving.core.db"


def test_find_cycle_reports_a_cycle_in_order():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle:\n" + describe(cycle)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offending(package: str, forbidden: str) -> list[str]:
    return [f"{source} imports {target} (line {line})"
            for source, edges in sorted(GRAPH.items()) if within(source, package)
            for target, line in sorted(edges.items()) if within(target, forbidden)]


def test_pipelines_import_nothing_from_serving():
    assert offending("retouch.pipelines", "retouch.serving") == []


@pytest.mark.parametrize("surface", SURFACES)
def test_core_imports_no_surface(surface):
    assert offending("retouch.serving.core", f"retouch.serving.{surface}") == []


def test_surfaces_share_through_serving_deps_not_each_other():
    assert offending("retouch.serving.aixpose", "retouch.serving.wixma") == []
    assert "retouch.serving.deps" in GRAPH["retouch.serving.aixpose.deps"]


def test_jobs_reach_webhooks_only_through_job_events():
    direct = set(GRAPH["retouch.serving.core.jobs"])
    assert "retouch.serving.core.job_events" in direct
    assert not {name for name in direct if name.startswith("retouch.serving.core.webhook")}
