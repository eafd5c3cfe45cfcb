"""Run the model-zoo cases and write the coverage table.

Usage::

    python tests/zoo/make_table.py [tests/zoo/test_timm.py ...]
    python tests/zoo/make_table.py --render-only

Imports each given test module (all ``tests/zoo/test_*.py`` when none is given), runs every case
of its module-level ``CASES`` with :func:`helpers.run_zoo_case`, and writes one JSON file per
library, ``docs/zoo/<library>.json`` (a list of rows, one per model). A module whose library is
not installed (``pytest.importorskip``) is skipped with a note. Then ``docs/zoo.md`` is rendered
from *all* JSON files present in ``docs/zoo/``, so libraries run in different environments (the
torch 2.13 venv and the torch 2.14 zoo venv) end up in one table.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # for ``helpers``, as pytest's ``pythonpath`` does

import torch  # noqa: E402
from helpers import ZooCase, run_zoo_case  # noqa: E402


def load_module(path: Path) -> ModuleType | None:
    """Import a test module by path; None when it skips itself (its library is missing)."""
    name = f"_zoo_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # pytest.skip raises an exception outside Exception
        if type(e).__name__ == "Skipped":
            print(f"skip {path.name}: {e}", file=sys.stderr)
            return None
        raise
    return module


def library_version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(library)
        return str(getattr(module, "__version__", "unknown"))


def run_case(case: ZooCase) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": case.name,
        "library": case.library,
        "library_version": library_version(case.library),
        "torch": torch.__version__,
    }
    start = time.perf_counter()
    try:
        result = run_zoo_case(case.name, case.library, case.build, case.forward, case.seed)
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        row.update(
            parameters=None,
            exact=False,
            forward_exact=None,
            rng_exact=None,
            lazy_rate=None,
            early=[],
            mismatches=[f"error: {type(e).__name__}: {_first_line(e)}"],
            error_at=f"{last.filename}:{last.lineno}",
        )
    else:
        row.update(
            parameters=result.parameters,
            exact=result.exact,
            forward_exact=result.forward_exact,
            rng_exact=result.rng_exact,
            lazy_rate=result.lazy_rate,
            early=result.early,
            mismatches=result.mismatches,
        )
    row["seconds"] = round(time.perf_counter() - start, 2)
    gc.collect()
    return row


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def run_modules(paths: list[Path], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        module = load_module(path)
        if module is None:
            continue
        cases: list[ZooCase] = list(module.CASES)
        rows: dict[str, list[dict[str, Any]]] = {}
        print(f"{path.name}: {len(cases)} cases", file=sys.stderr)
        for case in cases:
            row = run_case(case)
            rows.setdefault(case.library, []).append(row)
            status = "ok" if _passed(row) and row["rng_exact"] else "FAIL"
            rng = "" if row["rng_exact"] is not False else ", generator not where eager leaves it"
            print(f"  {status:4s} {case.name} ({row['seconds']:.1f} s{rng})", file=sys.stderr)
        for library, lib_rows in rows.items():
            target = out_dir / f"{library}.json"
            target.write_text(json.dumps(lib_rows, indent=1) + "\n")
            print(f"wrote {target}", file=sys.stderr)


# --- rendering ---------------------------------------------------------------------------------


def _passed(row: dict[str, Any]) -> bool:
    return bool(row["exact"]) and row["forward_exact"] is not False


def _rng_exact(row: dict[str, Any]) -> bool | None:
    return row.get("rng_exact")  # absent from rows written before it was measured


def _fully_lazy(row: dict[str, Any]) -> bool:
    return row["lazy_rate"] == 1.0


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _rate(rate: float | None) -> str:
    if rate is None:
        return "?"
    return "100%" if rate == 1.0 else f"{rate:.2%}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _list(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"`{_cell(i)}`" for i in items[:limit])
    if len(items) > limit:
        shown += f" (+{len(items) - limit} more)"
    return shown


def render(out_dir: Path, target: Path) -> None:
    libraries: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out_dir.glob("*.json")):
        rows = json.loads(path.read_text())
        libraries[path.stem] = rows
    lines = [
        "# Model zoo",
        "",
        "Every model is built twice from the same seed: eagerly, and under `LazyInitContext`",
        "followed by `materialize`. **exact**: every parameter and buffer is bit-identical",
        "(`torch.equal`, and dtype, device, `requires_grad`, `Parameter`-ness and weight tying).",
        "**forward**: one forward pass in eval mode under `no_grad` on a small input gives",
        "bit-identical outputs. **lazy**: share of parameter and buffer elements that stayed lazy",
        "until `materialize` (below 100%: values model code read while building were computed",
        "early, exactly; *early* names the op that forced it). **RNG state as eager**: after the",
        "`LazyInitContext` exits, the global CPU generator's state (`torch.get_rng_state()`) is",
        "identical to its state after the eager build.",
        "",
        "Generated by `python tests/zoo/make_table.py` from `docs/zoo/*.json`; the cases are the",
        "`CASES` of `tests/zoo/test_*.py`, which the test suite runs too.",
        "",
        "| library | version | torch | models | exact | forward exact | RNG state as eager "
        "| 100% lazy |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    total = passed = lazy = forward = rng = 0
    for library, rows in libraries.items():
        versions = sorted({r["library_version"] for r in rows})
        torches = sorted({r["torch"] for r in rows})
        n_exact = sum(_passed(r) for r in rows)
        n_fwd = sum(r["forward_exact"] is True for r in rows)
        n_rng = sum(_rng_exact(r) is True for r in rows)
        n_lazy = sum(_fully_lazy(r) for r in rows)
        lines.append(
            f"| {library} | {', '.join(versions)} | {', '.join(torches)} | {len(rows)} "
            f"| {n_exact} | {n_fwd} | {n_rng} | {n_lazy} |"
        )
        total += len(rows)
        passed += n_exact
        forward += n_fwd
        rng += n_rng
        lazy += n_lazy
    lines.append(
        f"| **total** | | | **{total}** | **{passed}** | **{forward}** | **{rng}** | **{lazy}** |"
    )
    lines += [
        "",
        "| library | model | parameters | exact | forward | RNG state as eager | lazy "
        "| materialized early | mismatches |",
        "|---|---|---:|:-:|:-:|:-:|---:|---|---|",
    ]
    for library, rows in libraries.items():
        for r in rows:
            fwd = {True: "yes", False: "**no**", None: "n/a"}[r["forward_exact"]]
            rng_cell = {True: "yes", False: "**no**", None: "?"}[_rng_exact(r)]
            lines.append(
                f"| {library} | {_cell(r['name'])} | {_params(r['parameters'])} "
                f"| {'yes' if r['exact'] else '**no**'} | {fwd} | {rng_cell} "
                f"| {_rate(r['lazy_rate'])} | {_list(r['early'])} | {_list(r['mismatches'])} |"
            )
    lines.append(
        f"| **total** | **{total} models** | | **{passed} exact** | | **{rng} as eager** "
        f"| **{lazy} 100% lazy** | | |"
    )
    lines.append("")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))
    print(
        f"wrote {target} ({total} models, {passed} exact, {rng} with the RNG state as eager)",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", type=Path, help="test modules (default: all)")
    parser.add_argument("--render-only", action="store_true", help="only render docs/zoo.md")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="docs folder")
    args = parser.parse_args(argv)
    out_dir = args.docs / "zoo"
    if not args.render_only:
        paths = args.modules or sorted(HERE.glob("test_*.py"))
        run_modules([p.resolve() for p in paths], out_dir)
    render(out_dir, args.docs / "zoo.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
