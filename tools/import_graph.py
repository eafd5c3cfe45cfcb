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


# What each module is for, one line each: the README's picture prints it beside the imports.
ROLES = {
    "booster": "Booster and plugins (DDP, FSDP2, TP, pipelines)",
    "cli": "the dormant command",
    "launch": "launch(): the process group",
    "checkpoint": "load_checkpoint(): keys matched, lazy copies",
    "_checkpoint_files": "checkpoint formats, entries read on demand",
    "_materialize": "materialize(), is_lazy()",
    "_report": "what materialize did",
    "_context": "LazyInitContext",
    "_record": "recording: each op's path, the general path",
    "_fast": "fast paths: factories, views, fills",
    "_special": "ops that need values; set_, lift_fresh",
    "_deferred": "init functions recorded whole",
    "_factories": "factory calls: remembered meta results",
    "_emit": "the one place a node joins the graph",
    "_ops": "op facts, OpKind, one call's record",
    "_shortcuts": "meta results without the kernel",
    "_placement": "where values go: in place, local shards",
    "_slices": "a shard's part of a recorded program",
    "_lazy_tensor": "the LazyTensor subclass",
    "_replay": "runs a plan's nodes on real tensors",
    "_parallel": "a pass cut into batches, run on threads",
    "_values": "a pass's memory: kept, freed, handed out",
    "_lanes": "a replay thread's generators and scratch",
    "_plan": "which nodes a value needs",
    "_rng": "positions on random streams",
    "_draws": "draw counts of random ops",
    "_flat": "flat arguments of a call",
    "_graph": "storages, nodes, versions",
    "_mapped": "which file mapped bytes come from",
    "_mt19937": "generator jumps",
    "_session": "who records, where, which RNG mode",
    "_spmd": "ranks agree on a program, not send values",
    "errors": "the exceptions",
}


def _short(name: str) -> str:
    """``dormant.booster.plugin.base`` -> ``booster``; ``dormant._graph`` -> ``_graph``."""
    return name.split(".")[1] if "." in name else name


def picture() -> str:
    """The package as layers: each module imports only modules of the lines below it.

    Subpackages are drawn as one box (``booster``); the package ``__init__`` is left out.
    """
    deps: dict[str, set[str]] = {}
    for name, targets in graph().items():
        if name == "dormant":
            continue
        short = _short(name)
        deps.setdefault(short, set()).update(
            t for t in map(_short, targets) if t not in (short, "dormant")
        )
    depth: dict[str, int] = {}

    def level(n: str) -> int:
        if n not in depth:
            depth[n] = 0  # (no cycle: checked by cycle())
            depth[n] = 1 + max((level(m) for m in deps[n]), default=-1)
        return depth[n]

    rows = sorted(deps, key=lambda n: (-level(n), n))
    width = max(len(n) for n in rows)
    lines = []
    for n in rows:
        uses = ", ".join(sorted(deps[n], key=lambda m: (-level(m), m))) or "-"
        lines.append(f"{n:<{width}}  {ROLES.get(n, ''):<45}  imports {uses}")
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--picture"]:
        print(picture())
        sys.exit(0)
    edges = graph()
    for name in sorted(edges):
        print(f"{name} <- {', '.join(sorted(edges[name])) or '-'}")
    found = cycle(edges)
    if found:
        print("cycle:", " -> ".join(found))
        sys.exit(1)
