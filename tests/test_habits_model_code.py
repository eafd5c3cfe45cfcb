"""Habits in the model code itself (issue 23): inits that need the whole tensor under sharded
placement, init code that fails in eager, ``torch.compile`` and TorchScript, other tensor kinds
and lazy modules. Each ends as eager's behaviour or a clear error, compared bit for bit with an
eager build from one seed (``tests/test_habits.py`` holds the habits around the context)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_same, eager_and_lazy, run_ranks
from torch import nn

from dormant import (
    LazyInitContext,
    LazyTensorError,
    MaterializationError,
    UnsupportedOpError,
    is_lazy,
    materialize,
)
from dormant._placement import fill_local, to_empty, to_meta

# --- whole-tensor inits under sharded placement ---------------------------------------------------


class _Orthogonal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Linear(16, 16)  # <= 65536 elements: once run on a flat window
        nn.init.orthogonal_(self.small.weight)
        self.conv = nn.Conv2d(4, 8, 3)
        nn.init.orthogonal_(self.conv.weight)
        self.trunc = nn.Linear(16, 16)
        nn.init.trunc_normal_(self.trunc.weight, std=0.02, a=-0.04, b=0.04)


def test_shard_fill_computes_shape_dependent_inits_whole() -> None:
    eager, lazy = eager_and_lazy(_Orthogonal)
    sources = to_meta(lazy)
    to_empty(lazy, "cpu")
    whole = fill_local(lazy, sources)  # one rank holding everything: the whole-tensor fallback
    assert_same(eager, lazy)
    assert whole == []  # (small enough to be drawn whole in their own shape, then sliced)


SEED = 1234  # every rank's seed in ``scenario_*`` (tests/distributed/run.py reads it)


def scenario_orthogonal_fsdp() -> dict[str, object]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from dormant.booster import Booster
    from dormant.booster.plugin import TorchFSDPPlugin

    torch.manual_seed(SEED)
    eager = _Orthogonal()
    torch.manual_seed(SEED)
    with LazyInitContext():
        lazy = _Orthogonal()
    model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(lazy)
    state = get_model_state_dict(model)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items()}
    return {
        "not_equal": sorted(k for k, v in eager.state_dict().items() if not torch.equal(v, full[k]))
    }


def test_orthogonal_under_a_sharded_plugin_equals_eager(tmp_path: Path) -> None:
    for result in run_ranks(scenario_orthogonal_fsdp, tmp_path):
        assert result["not_equal"] == []


# --- init code that fails in eager ------------------------------------------------------------

_FAILS_AT_THE_OP: dict[str, Callable[[torch.Tensor], object]] = {
    "uniform_(1, 0)": lambda t: t.uniform_(1, 0),
    "bernoulli_(1.5)": lambda t: t.bernoulli_(1.5),
    "random_(5, 2)": lambda t: t.random_(5, 2),
    "random_(0)": lambda t: t.random_(0),
    "normal_(0, -1)": lambda t: t.normal_(0, -1),
}


def _eager_error(make: Callable[[], object]) -> Exception:
    try:
        make()
    except Exception as e:
        return e
    raise AssertionError("eager accepted it")


@pytest.mark.parametrize("case", sorted(_FAILS_AT_THE_OP))
def test_bad_init_arguments_fail_at_the_op_as_in_eager(case: str) -> None:
    init = _FAILS_AT_THE_OP[case]
    eager = _eager_error(lambda: init(torch.empty(5)))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(type(eager), match=re.escape(str(eager))), LazyInitContext():
        init(torch.empty(5))
    assert torch.equal(torch.get_rng_state(), before)
    with LazyInitContext():
        t = torch.empty(5)
    with pytest.raises(type(eager), match=re.escape(str(eager))):
        init(t)  # outside the context too (an init after building)


_FAILS_ON_VALUES: dict[str, Callable[[], torch.Tensor]] = {
    "index out of range": lambda: torch.zeros(5)[torch.tensor([10])],
    "index_fill_ out of range": lambda: torch.zeros(5).index_fill_(0, torch.tensor([9]), 1.0),
    "gather out of range": lambda: torch.zeros(5).gather(0, torch.tensor([7])),
    "embedding out of range": lambda: nn.functional.embedding(torch.tensor([9]), torch.ones(3, 2)),
    "integer division by zero": lambda: torch.arange(5) // 0,
}


@pytest.mark.parametrize("case", sorted(_FAILS_ON_VALUES))
def test_init_failing_on_values_names_the_tensor_and_the_model_line(case: str) -> None:
    make = _FAILS_ON_VALUES[case]
    _eager_error(make)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", make())

    with LazyInitContext():
        model = Model()
    line = f"{__file__}:{make.__code__.co_firstlineno}"
    with pytest.raises(
        MaterializationError, match=rf"'table'.*recorded at {re.escape(line)}"
    ) as info:
        materialize(model)
    assert info.value.name == "table"
    assert is_lazy(model)  # nothing was installed


# --- torch.compile before materialize ----------------------------------------------------------


def test_compile_before_materialize_then_materialize_works() -> None:
    def ctor() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    eager, lazy = eager_and_lazy(ctor)
    compiled = torch.compile(lazy, backend="eager")
    with pytest.raises(LazyTensorError, match="materialize"):
        compiled(torch.ones(1, 4))  # its frames, in the traceback, hold the lazy weights
    materialize(lazy)
    assert_same(eager, lazy)
    assert torch.equal(compiled(torch.ones(1, 4)), eager(torch.ones(1, 4)))


# --- TorchScript submodules ----------------------------------------------------------------------


class _Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = torch.jit.script(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torch_jit_script_submodule_materializes() -> None:
    eager, lazy = eager_and_lazy(_Scripted)
    materialize(lazy)
    assert not is_lazy(lazy)
    assert_same(eager, lazy)
    assert torch.equal(lazy(torch.ones(2, 3)), eager(torch.ones(2, 3)))


# --- tensor kinds --------------------------------------------------------------------------------

_OTHER_KINDS: dict[str, Callable[[], torch.Tensor]] = {
    "quantized": lambda: torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint8),
    "quantized empty": lambda: torch._empty_affine_quantized(
        [4], scale=0.1, zero_point=0, dtype=torch.quint8
    ),
    "sparse coo": lambda: torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.ones(2), (3,)),
    "to_sparse": lambda: torch.eye(3).to_sparse(),
    "sparse csr": lambda: torch.eye(3).to_sparse_csr(),
    "nested": lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
}


@pytest.mark.parametrize("case", sorted(_OTHER_KINDS))
def test_sparse_quantized_and_nested_tensors_are_refused_at_the_op(case: str) -> None:
    make = _OTHER_KINDS[case]
    line = f"{__file__}:{make.__code__.co_firstlineno}"
    refused = rf"at {re.escape(line)} makes a .*materialize"
    with pytest.raises(UnsupportedOpError, match=refused), LazyInitContext():
        make()
    with LazyInitContext():  # usable again
        assert is_lazy(torch.ones(1))


class _WithLazyLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 5)
        self.second = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_lazy_linear_infers_its_shape_at_the_first_forward_as_in_eager() -> None:
    eager, lazy = eager_and_lazy(_WithLazyLinear)
    materialize(lazy)
    assert_same(eager, lazy)  # (the uninitialized parameters hold nothing to compare)
    outputs = []
    for model in (eager, lazy):
        torch.manual_seed(1)
        outputs.append(model(torch.ones(2, 4)))
    assert torch.equal(outputs[0], outputs[1])
    assert_same(eager, lazy)
