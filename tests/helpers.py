"""Shared test helpers: build a module eagerly and lazily from one seed, and compare them."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dormant import LazyInitContext, materialize
from dormant._placement import module_tensors


def build_pair(
    ctor: Callable[[], nn.Module], seed: int = 0, *, verbose: bool = False
) -> tuple[nn.Module, nn.Module]:
    """``ctor()`` built eagerly and built lazily then materialized, both after ``manual_seed``;
    the global generator must stand where eager construction leaves it."""
    eager, lazy = eager_and_lazy(ctor, seed=seed)
    materialize(lazy, verbose=verbose)
    return eager, lazy


def eager_and_lazy(
    ctor: Callable[[], nn.Module],
    after: Callable[[nn.Module], object] = lambda m: None,
    *,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """``ctor()`` then ``after(model)``, eagerly and lazily from ``seed``; the generator must
    stand where eager leaves it after both steps. Returns (eager, lazy), lazy not yet
    materialized."""
    torch.manual_seed(seed)
    eager = ctor()
    after(eager)
    eager_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    with LazyInitContext():
        lazy = ctor()
    after(lazy)
    assert torch.equal(torch.get_rng_state(), eager_rng), "generator not where eager leaves it"
    return eager, lazy


def differences(eager: nn.Module, lazy: nn.Module) -> list[str]:
    """Names of tensors that are not bit-identical (values, dtype, device, requires_grad, ties)."""
    bad: list[str] = []
    e_slots = {s.name: s.tensor for s in module_tensors(eager)}
    l_slots = {s.name: s.tensor for s in module_tensors(lazy)}
    if e_slots.keys() != l_slots.keys():
        bad.append(f"<names differ: {sorted(e_slots.keys() ^ l_slots.keys())[:5]}>")
    for name in e_slots.keys() & l_slots.keys():
        e, x = e_slots[name], l_slots[name]
        if type(x).__name__ == "LazyTensor":
            bad.append(f"{name} (still lazy)")
        elif (
            e.dtype != x.dtype
            or e.shape != x.shape
            or e.device != x.device
            or e.requires_grad != x.requires_grad
            or isinstance(e, nn.Parameter) != isinstance(x, nn.Parameter)
            or not torch.equal(e, x)
        ):
            bad.append(name)
    if _tie_groups(eager) != _tie_groups(lazy):
        bad.append("<tying differs>")
    return sorted(bad)


def _tie_groups(module: nn.Module) -> set[tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for slot in module_tensors(module):
        groups.setdefault(id(slot.tensor), []).append(slot.name)
    return {tuple(sorted(names)) for names in groups.values() if len(names) > 1}


def assert_same(eager: nn.Module, lazy: nn.Module) -> None:
    bad = differences(eager, lazy)
    assert not bad, f"not bit-identical to eager: {bad[:10]} ({len(bad)} in all)"


@contextlib.contextmanager
def rng_unchanged() -> Iterator[None]:
    """Assert that the default CPU generator's state is the same after the block."""
    before = torch.get_rng_state()
    yield
    assert torch.equal(before, torch.get_rng_state()), "the global RNG state changed"


@dataclass
class ZooResult:
    """One row of the zoo table."""

    name: str
    library: str
    parameters: int
    exact: bool
    forward_exact: bool | None
    rng_exact: bool
    lazy_rate: float
    early: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def run_zoo_case(
    name: str,
    library: str,
    ctor: Callable[[], nn.Module],
    forward: Callable[[nn.Module], object] | None = None,
    seed: int = 0,
) -> ZooResult:
    """Build eagerly and lazily, compare every tensor and (optionally) one forward output."""
    torch.manual_seed(seed)
    eager = ctor()
    eager_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    with LazyInitContext():
        lazy = ctor()
    rng_exact = torch.equal(torch.get_rng_state(), eager_rng)
    report = materialize(lazy, report=True)
    mismatches = differences(eager, lazy)
    forward_exact = None
    if forward is not None:
        eager.eval()
        lazy.eval()
        with torch.no_grad():
            torch.manual_seed(seed + 1)
            out_e = forward(eager)
            torch.manual_seed(seed + 1)
            out_l = forward(lazy)
        forward_exact = _outputs_equal(out_e, out_l)
    return ZooResult(
        name=name,
        library=library,
        parameters=sum(p.numel() for p in eager.parameters()),
        exact=not mismatches,
        forward_exact=forward_exact,
        rng_exact=rng_exact,
        lazy_rate=report.lazy_rate,
        early=[f"{e.name}: {e.op}" for e in report.early],
        mismatches=mismatches,
    )


def _outputs_equal(a: object, b: object) -> bool:
    from torch.utils._pytree import tree_flatten

    fa, fb = tree_flatten(_plain(a))[0], tree_flatten(_plain(b))[0]
    if len(fa) != len(fb):
        return False
    for x, y in zip(fa, fb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and not torch.equal(x, y):
            return False
    return True


def _plain(out: object) -> object:
    # transformers ModelOutput and diffusers BaseOutput are dict-like.
    if hasattr(out, "to_tuple"):
        return out.to_tuple()  # type: ignore[union-attr]
    return out


@dataclass(frozen=True)
class ZooCase:
    """A model of a zoo: how to build it and how to run one forward pass on it."""

    name: str
    library: str
    build: Callable[[], nn.Module]
    forward: Callable[[nn.Module], object] | None = None
    seed: int = 0


def check_zoo_case(case: ZooCase) -> ZooResult:
    """Run a zoo case and fail with the names of the tensors that differ from eager."""
    result = run_zoo_case(case.name, case.library, case.build, case.forward, case.seed)
    assert result.exact, f"{case.name}: differs from eager: {result.mismatches[:10]}"
    assert result.rng_exact, f"{case.name}: the generator is not where eager construction leaves it"
    assert result.forward_exact is not False, f"{case.name}: forward output differs from eager"
    return result


TESTS = Path(__file__).resolve().parent


def run_ranks(
    scenario: Callable[[], dict[str, Any]], tmp_path: Path, nproc: int = 2
) -> list[dict[str, Any]]:
    """Run ``scenario`` (a module-level function of a test module whose ``SEED`` every rank is
    launched with) on ``nproc`` gloo ranks under torchrun; each rank's result comes back as
    JSON. Fail with every rank's output if one fails."""
    env = {**os.environ, "DORMANT_TEST_TMP": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(nproc), str(TESTS / "distributed" / "run.py"),
        Path(inspect.getfile(scenario)).stem, scenario.__name__, str(tmp_path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{scenario.__name__}: ranks hung for {e.timeout} s\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(
            f"{scenario.__name__}: a rank failed (exit {proc.returncode})\n{proc.stderr[-8000:]}"
        )
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nproc)]
