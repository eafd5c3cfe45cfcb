"""Property test: random programs of factories, views, in-place and random ops, lazy == eager."""

from __future__ import annotations

import torch
from helpers import differences
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dormant import LazyInitContext, materialize

FACTORIES = [
    lambda: torch.randn(4, 6),
    lambda: torch.rand(4, 6),
    lambda: torch.zeros(4, 6),
    lambda: torch.empty(4, 6).normal_(0, 2),
    lambda: torch.arange(24.0).view(4, 6),
    lambda: torch.full((4, 6), 3.0),
    lambda: torch.empty(6, 4).uniform_(-1, 1).t(),
]
VIEWS = [
    lambda t: t,
    lambda t: t.t(),
    lambda t: t[1:3],
    lambda t: t[:, ::2],
    lambda t: t.flatten(),  # a view when contiguous, a copy otherwise (as in eager)
    lambda t: t.diagonal(),
    lambda t: t[2],
    lambda t: t.data,
]
INPLACE = [
    lambda v: v.zero_(),
    lambda v: v.normal_(),
    lambda v: v.uniform_(-2, 2),
    lambda v: v.mul_(2),
    lambda v: v.add_(1),
    lambda v: v.fill_(0.25),
    lambda v: v.exponential_(),
    lambda v: v.bernoulli_(0.3),
]


def run(program: list[tuple[int, int, int, int]]) -> nn.Module:
    """Interpret ``program``: each step is (kind, a, b, c) over a pool of (4, 6) tensors."""
    m = nn.Module()
    pool = [FACTORIES[0]()]
    values: list[float] = []
    with torch.no_grad():
        for kind, a, b, c in program:
            x = pool[a % len(pool)]
            y = pool[b % len(pool)]
            if kind == 0:
                pool.append(FACTORIES[c % len(FACTORIES)]())
            elif kind == 1:
                INPLACE[c % len(INPLACE)](VIEWS[a % len(VIEWS)](x))
            elif kind == 2:
                x.copy_(y if c % 2 else y.flip(0))
            elif kind == 3:
                pool.append(x * y + c)
            elif kind == 4:
                x.data = (y.sin() * c).contiguous()
            elif kind == 5:
                torch.randn(c % 40 + 1)  # thrown away
            elif kind == 6:
                values.append(float(x.sum()))
            elif kind == 7:
                x.add_(y, alpha=0.5)
    m.pool = pool
    m.values = values
    return m


program_strategy = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=program_strategy, seed=st.integers(0, 2**16), materialize_order=st.randoms())
def test_random_programs_equal_eager(program, seed, materialize_order) -> None:
    torch.manual_seed(seed)
    eager = run(program)
    torch.manual_seed(seed)
    with LazyInitContext():
        lazy = run(program)
    assert lazy.values == eager.values
    # Materialize a random subset of tensors first, through small holder modules.
    for t in materialize_order.sample(lazy.pool, len(lazy.pool) // 2):
        holder = nn.Module()
        holder.t = t
        materialize(holder)
    materialize(lazy)
    assert not differences(eager, lazy)
