"""Flat argument lists: the same leaves and spec as pytree, whatever structures came before."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from dormant._flat import flatten, unflatten

T = torch.zeros(2)
Pair = namedtuple("Pair", "a b")

CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (([4096, 4096],), {"device": torch.device("cpu"), "pin_memory": False}),
    (([4096],), {"device": torch.device("cpu"), "pin_memory": False}),  # shorter list
    (([4096, 4096],), {"pin_memory": False, "device": torch.device("cpu")}),  # keyword order
    (([4096, 4096],), {"device": None}),  # a None leaf
    (([],), {}),  # an empty list: no leaf, still a list
    ((T, 0.5, 1.0), {}),
    ((T, None, 1.0), {}),  # None where a tensor was
    (([T, T], 0), {}),  # Tensor[]
    (((4, 4),), {}),  # a tuple: pytree's own walk
    ((torch.Size([4, 4]),), {}),
    (([(1, 2)],), {}),  # nested
    ((Pair(T, 1),), {}),
    ((), {"size": [3, 3], "dtype": torch.float16}),
    (({"a": T},), {}),
]


@pytest.mark.parametrize("call", CALLS, ids=[str(i) for i in range(len(CALLS))])
def test_flatten_gives_pytrees_leaves_and_spec(call: tuple[Any, Any]) -> None:
    args, kwargs = call
    expected, expected_spec = tree_flatten((args, kwargs))
    for _ in range(2):  # the first call builds the layout, the second reuses it
        flat, layout = flatten(args, kwargs)
        assert len(flat) == len(expected) and all(a is b for a, b in zip(flat, expected))
        assert layout.spec == expected_spec
        assert unflatten(flat, layout) == tree_unflatten(expected, expected_spec)


def test_layouts_of_other_structures_are_not_reused() -> None:
    # Every call above, in turn and again: each still gets its own spec.
    for args, kwargs in CALLS + CALLS[::-1]:
        _, layout = flatten(args, kwargs)
        assert layout.spec == tree_flatten((args, kwargs))[1]


def test_unflatten_makes_new_lists() -> None:
    size = [2, 3]
    flat, layout = flatten((size,), {})
    args, _ = unflatten(flat, layout)
    assert args[0] == size and args[0] is not size
