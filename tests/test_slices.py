"""Windows of lazy tensors: any range of elements, computed alone, equals the eager tensor's."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from dormant import LazyInitContext
from dormant._lazy_tensor import LazyTensor
from dormant._placement import module_tensors
from dormant._slices import Unsliceable, Window, random_rule

from .helpers import rng_unchanged

aten = torch.ops.aten
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def eager_and_lazy(ctor: Callable[[], nn.Module], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    eager = ctor()
    torch.manual_seed(seed)
    with LazyInitContext():
        lazy = ctor()
    return eager, lazy


def shard_rows(n: int, world: int) -> list[tuple[int, int]]:
    """FSDP2's split of ``n`` rows over ``world`` ranks (``torch.chunk``; trailing ranks may be
    empty)."""
    size = math.ceil(n / world)
    return [(min(n, r * size), min(n, (r + 1) * size)) for r in range(world)]


def check_windows(eager: nn.Module, lazy: nn.Module, whole: frozenset[str] = frozenset()) -> None:
    """Every rank's row range of every tensor, computed alone, equals the eager rows; only the
    tensors named in ``whole`` have no window rule."""
    real = {s.name: s.tensor for s in module_tensors(eager)}
    window = Window()
    checked = 0
    refused = set()
    with rng_unchanged():
        for slot in module_tensors(lazy):
            t = slot.tensor
            if not isinstance(t, LazyTensor) or t.dim() == 0:
                continue
            expected = real[slot.name].detach().reshape(t.shape[0], -1)
            row = expected.shape[1]
            offset = t._meta.storage_offset()
            for world in (2, 3, 4):
                for lo, hi in shard_rows(t.shape[0], world):
                    try:
                        values = window.values(
                            t._lazy_storage, t.dtype, offset + lo * row, offset + hi * row
                        )
                    except Unsliceable:
                        refused.add(slot.name)
                        continue
                    assert torch.equal(values, expected[lo:hi].reshape(-1)), (slot.name, lo, hi)
                    checked += 1
    assert checked > 0
    assert refused == whole


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [7, 16, 1003, 70_001, 70_000 * 16 + 5])
def test_random_windows_equal_the_whole_tensor(dtype: torch.dtype, n: int) -> None:
    for op in ("normal_", "uniform_"):
        torch.manual_seed(1)
        eager = getattr(torch.empty(n, dtype=dtype), op)()
        torch.manual_seed(1)
        with LazyInitContext():
            lazy = getattr(torch.empty(n, dtype=dtype), op)()
        window = Window()
        s = lazy._lazy_storage
        for lo, hi in [(0, n), (0, 1), (3, min(n, 29)), (n // 2, n), (n // 3, n - 1), (n - 5, n)]:
            if lo < hi:
                assert torch.equal(window.values(s, dtype, lo, hi), eager[lo:hi]), (op, lo, hi)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_float_dtype_has_a_checked_rule(dtype: torch.dtype) -> None:
    # The rules are probed against the installed torch; these are the ones 2.13/2.14 follow.
    assert random_rule(aten.uniform_.default, dtype) is not None
    assert random_rule(aten.normal_.default, dtype) is not None
    assert random_rule(aten.bernoulli_.float, dtype) is None  # no rule: computed whole


def test_transformers_llama_rows() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=96,
        intermediate_size=200,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1001,
        tie_word_embeddings=False,
    )
    # The rotary tables come from arange (no window rule: computed whole, they are tiny).
    rotary = frozenset({"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"})
    check_windows(*eager_and_lazy(lambda: LlamaForCausalLM(config)), rotary)


def test_bert_rows_with_padding_row_and_layernorm() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=3001,
        pad_token_id=5,
    )
    check_windows(
        *eager_and_lazy(lambda: BertModel(config)), frozenset({"embeddings.position_ids"})
    )


REAL = torch.arange(10_000.0).reshape(100, 100)  # a real tensor, made outside the context


class Chains(nn.Module):
    """The elementwise chains model code writes around random init."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(300, 301)  # kaiming_uniform_ -> uniform_
        self.emb = nn.Embedding(5000, 33, padding_idx=7)  # normal_, then one row filled
        self.old_trunc = nn.Parameter(torch.empty(4097, 9))
        # trunc_normal_ as older code wrote it: uniform_, erfinv_, mul_, add_, clamp_
        with torch.no_grad():
            self.old_trunc.uniform_(-0.9, 0.9).erfinv_().mul_(0.02 * math.sqrt(2.0))
            self.old_trunc.add_(0.1).clamp_(-0.05, 0.2)
        self.scaled = nn.Parameter(torch.randn(2000, 40) * 0.5 + 1)  # out-of-place chain
        self.bf16 = nn.Parameter(torch.empty(1000, 50).normal_(0, 0.3).to(torch.bfloat16))
        self.copied = nn.Parameter(torch.empty(301, 300))
        self.transposed = nn.Parameter(torch.empty(300, 301))
        with torch.no_grad():
            self.copied.copy_(self.linear.weight * 2)
            self.transposed.copy_(self.linear.weight.T)  # strided: the span of its rows
        self.from_real = nn.Parameter(torch.empty(100, 100))
        with torch.no_grad():
            self.from_real.copy_(REAL)
        self.full = nn.Parameter(torch.full((5000, 3), 0.25))
        self.register_buffer("ones", torch.ones(3000, 7))
        self.linear.weight.data.mul_(0.5)  # .data: a view of the same storage


def test_elementwise_chains_rows() -> None:
    check_windows(*eager_and_lazy(Chains))


def test_value_computed_early_then_changed() -> None:
    def ctor() -> nn.Module:
        m = nn.Linear(500, 200)
        float(m.weight.sum())  # forces the value during construction
        m.weight.data.mul_(3)
        return m

    check_windows(*eager_and_lazy(ctor))


def test_ops_without_a_rule_are_refused_by_name() -> None:
    with LazyInitContext():
        w = nn.Parameter(torch.empty(600, 500))
        nn.init.orthogonal_(w)
    with pytest.raises(Unsliceable, match="orthogonal_"):
        Window().values(w._lazy_storage, w.dtype, 0, 500 * 300)


def test_windows_of_a_column_slice_equal_eager() -> None:
    # tensor parallelism's row-wise layout: a column half of a weight, copied contiguous
    torch.manual_seed(0)
    eager = torch.empty(400, 300).normal_()
    torch.manual_seed(0)
    with LazyInitContext():
        full = torch.empty(400, 300).normal_()
        half = full[:, 150:].contiguous()
    window = Window()
    for lo, hi in ((0, 150), (150 * 7 + 3, 150 * 9 + 100), (150 * 399, 150 * 400)):
        values = window.values(half._lazy_storage, half.dtype, lo, hi)
        assert torch.equal(values, eager[:, 150:].reshape(-1)[lo:hi])


def test_rows_padded_at_the_end_have_windows_and_other_pads_are_refused() -> None:
    # DTensor pads the last chunk of an uneven Shard(0) with rows of zeros
    torch.manual_seed(0)
    eager = torch.nn.functional.pad(torch.empty(37, 300).normal_()[19:], [0, 0, 0, 1])
    torch.manual_seed(0)
    with LazyInitContext():
        full = torch.empty(37, 300).normal_()
        rows = torch.nn.functional.pad(full[19:], [0, 0, 0, 1])
        columns = torch.nn.functional.pad(full[19:], [0, 1])
    window = Window()
    for lo, hi in ((0, 19 * 300), (17 * 300 + 5, 19 * 300), (18 * 300 - 7, 18 * 300 + 9)):
        assert torch.equal(
            window.values(rows._lazy_storage, rows.dtype, lo, hi), eager.view(-1)[lo:hi]
        )
    with pytest.raises(Unsliceable, match="constant_pad_nd"):
        window.values(columns._lazy_storage, columns.dtype, 0, 301)


def test_a_small_init_recorded_whole_is_drawn_in_its_shape() -> None:
    # orthogonal_ at or below the size drawn whole: its rows from a draw in the tensor's shape
    torch.manual_seed(0)
    eager = nn.init.orthogonal_(torch.empty(40, 30))
    torch.manual_seed(0)
    with LazyInitContext():
        w = nn.init.orthogonal_(torch.empty(40, 30))
    values = Window().values(w._lazy_storage, w.dtype, 20 * 30, 40 * 30)
    assert torch.equal(values, eager[20:].reshape(-1))


class TruncatedInits(nn.Module):
    """torchtitan's and timm's linear init: ``trunc_normal_`` on matrices above the size a window
    draws whole."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.wide = nn.Parameter(torch.empty(300, 301, dtype=dtype))  # +-2 at std 0.02: unreached
        nn.init.trunc_normal_(self.wide, std=0.02)
        self.shifted = nn.Parameter(torch.empty(257, 300, dtype=dtype))
        nn.init.trunc_normal_(self.shifted, mean=1.0, std=0.5, a=-4.0, b=6.0)
        # bounds inside normal_'s reach: how many rounds it draws depends on the values
        self.narrow = nn.Parameter(torch.empty(300, 300, dtype=dtype))
        nn.init.trunc_normal_(self.narrow, std=0.02, a=-0.03, b=0.03)


@pytest.mark.parametrize("dtype", DTYPES)
def test_trunc_normal_with_bounds_out_of_reach_is_computed_window_by_window(
    dtype: torch.dtype,
) -> None:
    # Each rank's rows of a wide-bounded trunc_normal_ are drawn alone, as normal_'s would be;
    # a narrow-bounded one has no window rule and is named as computed whole.
    check_windows(*eager_and_lazy(lambda: TruncatedInits(dtype)), frozenset({"narrow"}))
