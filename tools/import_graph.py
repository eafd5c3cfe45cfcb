"""Print dormant's internal import graph and fail if it has a cycle (imports inside functions
count too). Used by tests/test_layout.py."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dormant"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of dormant that ``path`` imports, at any nesting level."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import a, b
                found |= {f"{target}.{alias.name}" for alias in node.names}
            else:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in mods.items():
        edges[name] = {m for m in imports(path) if m in mods and m != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None. Package ``__init__`` files re-export: they are leaves."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if m.count(".") < n.count(".") and n.startswith(m + "."):
                continue  # a module importing its own package's __init__
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


if __name__ == "__main__":
    edges = graph()
    for name in sorted(edges):
        print(f"{name} <- {', '.join(sorted(edges[name])) or '-'}")
    found = cycle(edges)
    if found:
        print("cycle:", " -> ".join(found))
        sys.exit(1)
