"""Planning: only the nodes the requested values need, dead writes skipped, early values reused."""

from __future__ import annotations

import torch
from torch import nn

from dormant import LazyInitContext
from dormant._plan import plan


def labels(storages: list) -> list[str]:
    return [node.label for node, real in plan(storages).nodes if real]


def test_overwritten_init_is_not_planned() -> None:
    with LazyInitContext():
        layer = nn.Linear(16, 16)  # kaiming uniform_ ...
        nn.init.normal_(layer.weight)  # ... overwritten
    weight = layer.weight._lazy_storage
    assert labels([weight]) == ["aten.normal_.default"]  # not even the empty it overwrites
    assert plan([weight]).fresh == [weight]  # fills new memory: faulted in ahead of time


def test_partial_writes_keep_the_older_version() -> None:
    with LazyInitContext():
        w = torch.zeros(8)
        w[:2].fill_(3.0)
    assert labels([w._lazy_storage]) == ["aten.zeros.default", "aten.fill_.Scalar"]


def test_only_the_requested_storage_and_its_inputs() -> None:
    with LazyInitContext():
        a = torch.randn(4)
        b = torch.randn(4)
        c = a + 1
    assert labels([c._lazy_storage]) == ["aten.randn.default", "aten.add.Tensor"]
    assert labels([b._lazy_storage]) == ["aten.randn.default"]


def test_nodes_run_in_recorded_order_and_inputs_are_counted() -> None:
    with LazyInitContext():
        a = torch.ones(4)
        b = a * 2
        c = a + b
    p = plan([c._lazy_storage])
    seqs = [node.seq for node, _ in p.nodes]
    assert seqs == sorted(seqs)
    assert p.uses[id(a._lazy_storage)] == 2  # read by b and by c
    assert p.fresh == []  # c is an op's output, not an in-place fill of fresh memory


def test_an_early_value_is_reused_not_recomputed() -> None:
    with LazyInitContext():
        w = torch.randn(4)
        float(w[0])  # computes w early
        v = w * 2
    p = plan([v._lazy_storage])
    assert id(w._lazy_storage) in p.usable
    assert [node.label for node, _ in p.nodes] == ["aten.mul.Tensor"]
