"""Data flow one way (docs/ARCHITECTURE.md): no circle of imports inside ``research/``, counting the
imports made inside functions too (a lazy import hides a circle from Python, not from a reader).

``KNOWN`` lists the circles still to break; the test fails on a new one and when a known one is gone
(then take it off the list)."""
import ast
from pathlib import Path

from research.config import REPO_ROOT

#: circles not broken yet: figures imports report's MARK and aggregate, report draws the figures
KNOWN: set = set()


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``TYPE_CHECKING`` blocks aside),
    its own parent packages left out (importing a submodule imports them anyway)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def ours(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {ours(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found |= {ours(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m and m != name and not name.startswith(m + ".")}


def _circles(graph: dict[str, set[str]]) -> set[frozenset]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_circle():
    modules = _modules(REPO_ROOT / "research")
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # the walk sees imports inside functions
    assert graph["research.data.load"] >= {"research.data.sources", "research.data.prepare"}
    assert {sorted(c)[0]: sorted(c) for c in _circles(graph) - KNOWN} == {}, "a new import circle"
    assert KNOWN - _circles(graph) == set(), "a known circle is gone: take it off KNOWN"


def test_circles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == {frozenset("abc")}
