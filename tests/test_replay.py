"""Replay: lazily built modules equal eager ones bit for bit, whatever the order and RNG use."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import assert_same, build_pair, differences, rng_unchanged
from models import PATTERNS, DataDependent, RandomOrder
from torch import nn

from dormant import LazyInitContext, MaterializationError, materialize


@pytest.mark.parametrize("ctor", PATTERNS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 7])
def test_pattern_equals_eager(ctor: type[nn.Module], seed: int) -> None:
    eager, lazy = build_pair(ctor, seed)
    assert_same(eager, lazy)


def test_plain_attributes_keep_their_python_values() -> None:
    eager, lazy = build_pair(DataDependent)
    assert lazy.rates == eager.rates
    assert lazy.positive == eager.positive
    assert lazy.listed == eager.listed
    assert (lazy.as_numpy == eager.as_numpy).all()
    assert lazy.text == eager.text
    assert lazy.int_value == eager.int_value == 42


def test_other_rng_use_between_build_and_materialize() -> None:
    torch.manual_seed(0)
    eager = RandomOrder()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = RandomOrder()
    torch.randn(1000)  # the user draws before materializing
    torch.manual_seed(5)
    materialize(lazy)
    assert_same(eager, lazy)


SUBMODULES = ["first", "second", "after_seed"]


@pytest.mark.parametrize("order", list(itertools.permutations(SUBMODULES)), ids="-".join)
def test_submodules_materialized_in_any_order(order: tuple[str, ...]) -> None:
    torch.manual_seed(3)
    eager = RandomOrder()
    torch.manual_seed(3)
    with LazyInitContext():
        lazy = RandomOrder()
    for name in order:
        materialize(getattr(lazy, name))
        torch.rand(3)
    materialize(lazy)
    assert_same(eager, lazy)


def test_materialize_leaves_rng_state_alone() -> None:
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = RandomOrder()
    g = torch.Generator().manual_seed(1)
    g_before = g.get_state()
    with rng_unchanged():
        materialize(lazy)
    assert torch.equal(g.get_state(), g_before)


def test_explicit_generator_is_advanced_as_eager_advances_it() -> None:
    g = torch.Generator().manual_seed(42)
    with LazyInitContext():
        t = nn.Parameter(torch.randn(10, generator=g))
    eager = torch.Generator().manual_seed(42)
    expected = torch.randn(10, generator=eager)
    assert torch.equal(g.get_state(), eager.get_state())
    holder = nn.Module()
    holder.t = t
    materialize(holder)
    assert torch.equal(holder.t, expected)


def test_one_context_many_models_continue_one_stream() -> None:
    torch.manual_seed(0)
    ea, eb = nn.Linear(4, 4), nn.Linear(4, 4)
    torch.manual_seed(0)
    with LazyInitContext():
        la, lb = nn.Linear(4, 4), nn.Linear(4, 4)
    materialize(lb)
    materialize(la)
    assert_same(ea, la)
    assert_same(eb, lb)


def test_early_values_then_later_writes() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))
            self.first = float(self.w[0, 0])  # forces w early
            self.w.data.mul_(2).add_(torch.randn(4, 4))  # later lazy writes on an early value
            self.second = self.w.sum().item()

    eager, lazy = build_pair(M)
    assert_same(eager, lazy)
    assert (lazy.first, lazy.second) == (eager.first, eager.second)


def test_old_version_of_a_storage_needed_after_it_changed() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight.data.copy_(self.a.weight.data)  # reads a at version k
            self.a.weight.data.zero_()  # then a changes

    torch.manual_seed(0)
    eager = M()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = M()
    materialize(lazy.a)  # a first: its final version
    materialize(lazy.b)  # b still needs a's old version
    assert not differences(eager, lazy)
    assert lazy.b.weight.abs().sum() > 0


def test_recurrent_layers_run_after_materializing() -> None:
    from models import Recurrent

    eager, lazy = build_pair(Recurrent)
    x = torch.randn(5, 2, 4)
    assert torch.equal(eager.gru(eager.lstm(x)[0])[0], lazy.gru(lazy.lstm(x)[0])[0])


def test_ops_that_check_values_run_and_raise_as_in_eager() -> None:
    class Chol(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            a = torch.randn(4, 4)
            self.register_buffer("chol", torch.linalg.cholesky(a @ a.T + torch.eye(4)))

    assert_same(*build_pair(Chol))
    with LazyInitContext(), pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(-torch.eye(3))  # not positive-definite: raises at once, as eager


def test_parametrizations_stay_lazy() -> None:
    from models import Reparametrized

    from dormant import materialize

    with LazyInitContext():
        m = Reparametrized()
    report = materialize(m, report=True)
    assert report.early == [] and report.lazy_rate == 1.0


def test_fast_rng_is_deterministic_in_any_order() -> None:
    def build(order: list[str]) -> nn.Module:
        torch.manual_seed(0)
        with LazyInitContext(rng="fast"):
            m = RandomOrder()
        for name in order:
            materialize(getattr(m, name))
        return materialize(m)

    first, second = build([]), build(["after_seed", "second", "first"])
    assert_same(first, second)
    torch.manual_seed(0)
    eager = RandomOrder()
    # Non-random tensors match eager; random ones come from their own derived streams.
    assert torch.equal(first.perm.sort().values, eager.perm.sort().values)  # a permutation
    assert not torch.equal(first.first.weight, eager.first.weight)
    assert not torch.equal(first.first.weight, first.second.weight)


def test_rng_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="'exact' or 'fast'"):
        LazyInitContext(rng="quick")


def test_a_real_source_changed_after_the_copy_is_an_error_not_new_values() -> None:
    policy = nn.Linear(4, 4)
    with LazyInitContext():
        lazy = nn.Linear(4, 4)
    lazy.load_state_dict(policy.state_dict())
    expected = policy.weight.detach().clone()
    with torch.no_grad():
        policy.weight.add_(1.0)  # the policy keeps training
    with pytest.raises(MaterializationError, match=r"modified in place afterwards.*clone\(\)"):
        materialize(lazy)
    lazy.load_state_dict({k: v.clone() for k, v in policy.state_dict().items()})  # usable again
    materialize(lazy)
    assert torch.equal(lazy.weight, expected + 1.0)


def test_a_real_table_changed_inside_model_code_is_an_error() -> None:
    class Scaled(nn.Module):
        def __init__(self, table: torch.Tensor) -> None:
            super().__init__()
            self.raw = nn.Parameter(torch.empty(3))
            self.raw.data.copy_(table)
            table.div_(2)  # eager copied before this

    table = torch.ones(3)  # real: made before the context
    with LazyInitContext():
        m = Scaled(table)
    with pytest.raises(MaterializationError, match="modified in place"):
        materialize(m)
