"""The package's shape: imports run one way, and no private name crosses a module boundary."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
assert spec is not None and spec.loader is not None
import_graph = importlib.util.module_from_spec(spec)
sys.modules["import_graph"] = import_graph
spec.loader.exec_module(import_graph)


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    edges = import_graph.graph()
    assert "dormant._record" in edges["dormant._context"]  # the graph sees real edges
    assert import_graph.cycle(edges) is None


def test_core_layers_import_downwards_only() -> None:
    edges = import_graph.graph()
    # Leaves: the session, the graph, the generator math import nothing of dormant but errors
    # (and the graph: which file mapped bytes come from).
    leaves = ("dormant._session", "dormant._graph", "dormant._mt19937", "dormant._mapped")
    for leaf in (*leaves, "dormant.errors"):
        assert edges[leaf] <= {"dormant.errors", "dormant._mapped"}, (leaf, edges[leaf])
    # Replay never reaches back into recording or the context.
    for lower in ("dormant._plan", "dormant._replay", "dormant._rng"):
        assert not edges[lower] & {"dormant._record", "dormant._context", "dormant._lazy_tensor"}


def test_no_private_name_is_imported_across_modules() -> None:
    found = []
    for path in (ROOT / "src" / "dormant").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found += [
                    f"{path.name}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and node.module is not None
                ]
    assert found == []


def test_readme_picture_is_the_import_graph() -> None:
    readme = (ROOT / "README.md").read_text()
    drawn = readme.split("<!-- import-picture -->\n```\n", 1)[1].split("\n```", 1)[0]
    assert drawn == import_graph.picture(), "run: python tools/import_graph.py --picture"
