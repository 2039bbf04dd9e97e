"""The house has one direction: no lmtune module imports, directly or through others, a module that imports it.

The graph is read from the source with `ast`, imports inside functions included, so a lazy import cannot hide a
cycle. A package counts as its `__init__` module; `from lmtune.x import y` depends on `lmtune.x.y` when that is a
module, else on `lmtune.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the lmtune modules it imports, anywhere in its body."""
    files = {_module_name(p, src): p for p in (src / "lmtune").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import lmtune.train.model` names a module directly
                    target = target.rpartition(".")[0]
                if target.startswith("lmtune") and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node], _ = 2, stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "lmtune.study" in graph and "lmtune.config" in graph["lmtune.study"]  # the graph was really read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("source, cycle", [
    ({"a.py": "import lmtune.b", "b.py": "def f():\n    from lmtune import a"}, True),  # a lazy import counts
    ({"a.py": "from lmtune.sub import c", "sub/__init__.py": "", "sub/c.py": "from .. import a"}, True),
    ({"a.py": "from lmtune import b", "b.py": "from lmtune.sub import c", "sub/__init__.py": "",
      "sub/c.py": "import os"}, False),
])
def test_the_cycle_check_sees_lazy_and_relative_imports(tmp_path: Path, source: dict[str, str],
                                                         cycle: bool) -> None:
    for rel, text in {"__init__.py": "", **source}.items():
        path = tmp_path / "lmtune" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert (find_cycle(import_graph(tmp_path)) is not None) == cycle


def test_nothing_below_the_pipeline_imports_it() -> None:
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "lmtune.pipeline" in deps)
    assert set(users) <= {"lmtune", "lmtune.cli"}, users
