"""Habits users bring from eager PyTorch and other tools (issue 23): each ends as eager's
behaviour or a clear error. Every case builds eagerly and lazily from one seed and compares
every tensor and the generator state bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import assert_same
from torch import nn

from dormant import LazyInitContext, materialize


def _pair(
    ctor: Callable[[], nn.Module], after: Callable[[nn.Module], object] = lambda m: None
) -> tuple[nn.Module, nn.Module]:
    """``ctor()`` then ``after(model)``, eagerly and lazily from seed 0; the generator must stand
    where eager leaves it after both steps. Returns (eager, lazy), lazy not yet materialized."""
    torch.manual_seed(0)
    eager = ctor()
    after(eager)
    eager_rng = torch.get_rng_state()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = ctor()
    after(lazy)
    assert torch.equal(torch.get_rng_state(), eager_rng), "generator not where eager leaves it"
    return eager, lazy


# --- inits applied after the context -------------------------------------------------------------

_INITS_AFTER: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], object]]] = {
    # ops whose draw count is only known by running them
    "trunc_normal_ default bounds": (
        lambda: nn.Linear(4, 4),
        lambda m: nn.init.trunc_normal_(m.weight),
    ),
    "normal_ on few elements": (lambda: nn.Linear(4, 4), lambda m: m.weight.data[:2, :2].normal_()),
    "normal_ on a strided view": (lambda: nn.Linear(4, 4), lambda m: m.weight.data[:, 0].normal_()),
    "Embedding.reset_parameters": (lambda: nn.Embedding(3, 4), lambda m: m.reset_parameters()),
}


@pytest.mark.parametrize("case", sorted(_INITS_AFTER))
def test_inits_after_the_context_equal_eager(case: str) -> None:
    ctor, init = _INITS_AFTER[case]
    eager, lazy = _pair(ctor, init)
    materialize(lazy)
    assert_same(eager, lazy)
