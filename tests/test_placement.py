"""Placement: where values go. Every tensor a module holds is found, and values land in the
module's own tensor objects."""

from __future__ import annotations

import torch
from torch import nn

from dormant import LazyInitContext, materialize
from dormant._placement import SlotKind, fill_local, module_tensors, to_empty, to_meta


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("steps", torch.zeros(2))
        self.plain = torch.ones(4)
        self.listed = [torch.zeros(1), 5]
        self.keyed = {"a": torch.ones(2)}


def test_every_tensor_a_module_holds_is_found_with_its_kind() -> None:
    with LazyInitContext():
        m = Holder()
    kinds = {slot.name: slot.kind for slot in module_tensors(m)}
    assert kinds == {
        "lin.weight": SlotKind.PARAMETER,
        "lin.bias": SlotKind.PARAMETER,
        "steps": SlotKind.BUFFER,
        "plain": SlotKind.ATTRIBUTE,
        "listed[0]": SlotKind.ATTRIBUTE,
        "keyed['a']": SlotKind.ATTRIBUTE,
    }


def test_values_land_in_the_same_tensor_objects() -> None:
    with LazyInitContext():
        m = Holder()
    before = {slot.name: slot.tensor for slot in module_tensors(m)}
    materialize(m)
    after = {slot.name: slot.tensor for slot in module_tensors(m)}
    assert all(after[name] is before[name] for name in before)
    assert type(m.lin.weight) is nn.Parameter and torch.equal(m.keyed["a"], torch.ones(2))


def test_meta_then_empty_then_fill_gives_the_values_back() -> None:
    # The sequence sharding plugins use, here without sharding: one rank holds everything.
    torch.manual_seed(0)
    eager = Holder()
    torch.manual_seed(0)
    with LazyInitContext():
        m = Holder()
    sources = to_meta(m)
    assert m.lin.weight.is_meta
    to_empty(m, "cpu")
    fill_local(m, sources)
    for name, t in eager.state_dict().items():
        assert torch.equal(m.state_dict()[name], t), name
