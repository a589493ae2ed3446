"""The package import graph of criproxy/: acyclic, and every layer calls only downward.

Imports under `if TYPE_CHECKING:` are not counted: they are type hints, not calls.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "criproxy"

API = {"cri"}
DOMAIN = {"images", "sandbox", "containers", "stats", "recovery"}
BELOW_DOMAIN = {
    "store",
    "network",
    "oci",
    "containerd",
    "records",
    "errors",
    "host",
    "steps",
    "criu",
}
TOP = {"server", "cli", "__main__"}


def _unit(path: Path) -> str:
    """A module's unit in the graph: its top-level package, or itself at the root."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _runtime_imports(tree: ast.Module) -> list[str]:
    hinted = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in hinted:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("criproxy"):
            if node.module == "criproxy":
                found += [f"criproxy.{a.name}" for a in node.names]
            else:
                found.append(str(node.module))
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("criproxy.")]
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        if "_generated" in path.parts:
            continue
        source = _unit(path)
        for name in _runtime_imports(ast.parse(path.read_text())):
            target = name.split(".")[1]
            if target not in (source, "_generated", "__version__"):
                edges[source].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        *((unit, API | TOP) for unit in DOMAIN),
        *((unit, API | TOP | DOMAIN) for unit in BELOW_DOMAIN),
        ("cri", {"containerd", "server", "recovery"}),
    ],
)
def test_layers_call_only_downward(layer: str, forbidden: set[str]) -> None:
    assert _graph().get(layer, set()) & forbidden == set()
