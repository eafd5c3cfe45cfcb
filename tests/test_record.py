"""Recording: every tensor made inside the context is lazy, reports the right metadata, and
costs no storage."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from helpers import assert_same, build_pair
from models import Factories, WritesThroughViews
from torch import nn

from dormant import (
    LazyInitContext,
    LazyTensor,
    LazyTensorError,
    UnsupportedOpError,
    is_lazy,
    materialize,
)
from dormant._fast import FAST_PATHS
from dormant._ops import OpFacts, bind
from dormant._record import fresh_facts, general_path_only


def test_every_factory_spelling_is_lazy() -> None:
    with LazyInitContext():
        m = Factories()
    lazy = {name: type(b) for name, b in m.named_buffers()}
    assert all(t is LazyTensor for t in lazy.values()), lazy
    materialize(m)
    assert not is_lazy(m)


def test_factories_equal_eager() -> None:
    assert_same(*build_pair(Factories))


def test_from_numpy_keeps_the_data_without_copying_at_build() -> None:
    import numpy as np

    array = np.arange(6.0)
    with LazyInitContext():
        t = torch.from_numpy(array)
    assert isinstance(t, LazyTensor)
    holder = nn.Module()
    holder.register_buffer("t", t)
    materialize(holder)
    assert torch.equal(holder.t, torch.arange(6.0, dtype=torch.float64))


def test_tensors_over_existing_storage_stay_lazy(tmp_path: Path) -> None:
    # torch.asarray(storage) is how safetensors hands out memory-mapped tensors.
    data = torch.arange(8, dtype=torch.float32)
    data.numpy().tofile(tmp_path / "data.bin")
    storage = torch.UntypedStorage.from_file(str(tmp_path / "data.bin"), shared=False, nbytes=32)
    with LazyInitContext():
        t = torch.asarray(storage, dtype=torch.uint8).view(torch.float32).reshape(2, 4)
    assert isinstance(t, LazyTensor) and t.shape == (2, 4)
    holder = nn.Module()
    holder.register_buffer("t", t)
    materialize(holder)
    assert torch.equal(holder.t, data.reshape(2, 4))


def test_values_read_from_existing_storage_inside_the_context_are_its_bytes(
    tmp_path: Path,
) -> None:
    # safetensors reads ``storage[0]`` of each tensor it maps; a view's values must be its own.
    data = torch.arange(8, dtype=torch.float32)
    data.numpy().tofile(tmp_path / "data.bin")
    storage = torch.UntypedStorage.from_file(str(tmp_path / "data.bin"), shared=False, nbytes=32)
    with LazyInitContext():
        first_byte, fifth_byte = storage[0], storage[20]
        t = torch.asarray(storage, dtype=torch.uint8).view(torch.float32).reshape(2, 4)
        row, third = t[1].tolist(), t[0, 2].item()
        # The temporary tensor of ``storage[i]`` runs for real; the same calls in model code
        # (an empty tensor set over a storage) stay lazy.
        by_hand = torch.empty(0, dtype=torch.uint8).set_(storage)
        empty = torch.empty(0, dtype=torch.uint8)
    assert (first_byte, fifth_byte) == (data.numpy().tobytes()[0], data.numpy().tobytes()[20])
    assert row == [4.0, 5.0, 6.0, 7.0] and third == 2.0
    assert isinstance(by_hand, LazyTensor) and isinstance(empty, LazyTensor)


def test_like_factories_from_meta_onto_a_device_are_lazy() -> None:
    # Libraries build on meta, then give keys a checkpoint lacks real storage this way.
    meta = torch.empty(3, 4, device="meta")
    with LazyInitContext():
        t = torch.empty_like(meta, device="cpu")
        still_meta = torch.empty_like(meta)
    assert isinstance(t, LazyTensor) and t.device.type == "cpu"
    assert type(still_meta) is torch.Tensor and still_meta.is_meta


def test_parameter_remade_from_its_own_class_keeps_user_attributes() -> None:
    # accelerate's init_empty_weights: ``type(param)(tensor, **param.__dict__)``
    with LazyInitContext():
        layer = nn.Linear(2, 3)
        layer.weight.tag = "mine"
        old = layer.weight
        remade = type(old)(old.to("meta"), **old.__dict__)
    assert isinstance(remade, nn.Parameter) and remade.tag == "mine"
    assert remade.shape == (3, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_metadata_is_reported_without_storage(dtype: torch.dtype) -> None:
    with LazyInitContext():
        p = nn.Parameter(torch.zeros(6, 4, dtype=dtype), requires_grad=dtype.is_floating_point)
        t = torch.empty(3, 8, dtype=dtype).t()
        sliced = p.data[1:4, ::2]
    assert isinstance(p, nn.Parameter) and isinstance(p, LazyTensor)
    assert (p.shape, p.dtype, p.device, p.is_meta) == ((6, 4), dtype, torch.device("cpu"), False)
    assert p.requires_grad == dtype.is_floating_point
    real = torch.zeros(6, 4, dtype=dtype)[1:4, ::2]
    assert t.shape == (8, 3) and t.stride() == (1, 8)
    assert (sliced.shape, sliced.stride(), sliced.storage_offset()) == (
        real.shape,
        real.stride(),
        real.storage_offset(),
    )


def test_dtype_changes_show_at_once() -> None:
    with LazyInitContext():
        m = nn.Linear(4, 4)
        m.half()
        assert m.weight.dtype == torch.float16
        assert m.bias.to(torch.float64).dtype == torch.float64
    m.to(torch.bfloat16)  # edits after the context are recorded too
    assert m.weight.dtype == torch.bfloat16


def test_edits_after_building_are_kept() -> None:
    def build() -> nn.Module:
        m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        return m

    torch.manual_seed(0)
    eager = build()
    eager.half()
    eager[1].weight.requires_grad_(False)
    with torch.no_grad():
        eager[0].bias.zero_()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = build()
    lazy.half()
    lazy[1].weight.requires_grad_(False)
    with torch.no_grad():
        lazy[0].bias.zero_()
    materialize(lazy)
    assert_same(eager, lazy)


def test_building_allocates_no_storage() -> None:
    gc.collect()
    rss = psutil.Process().memory_info().rss
    with LazyInitContext():
        m = nn.Sequential(*[nn.Linear(16384, 16384) for _ in range(8)])  # 8.6 GB in float32
    grown = psutil.Process().memory_info().rss - rss
    assert sum(p.numel() for p in m.parameters()) * 4 > 8 * 2**30
    assert grown < 64 * 2**20, f"building grew resident memory by {grown / 2**20:.0f} MiB"


def test_70b_llama_builds_in_little_memory() -> None:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
    )
    gc.collect()
    rss = psutil.Process().memory_info().rss
    with LazyInitContext():
        model = transformers.LlamaForCausalLM(config)
    grown = psutil.Process().memory_info().rss - rss
    assert sum(p.numel() for p in model.parameters()) > 68e9
    assert grown < 1 * 2**30, f"building grew resident memory by {grown / 2**20:.0f} MiB"
    assert is_lazy(model)


def test_inplace_metadata_change_is_refused_with_the_op_named() -> None:
    with LazyInitContext():
        t = torch.randn(2, 3)
        with pytest.raises(UnsupportedOpError, match=r"aten\.t_.*use the out-of-place form"):
            t.t_()
        u = t.t()  # the out-of-place form works
    assert u.shape == (3, 2)


def test_meta_tensors_inside_the_context_stay_meta() -> None:
    with LazyInitContext():
        t = torch.empty(4, device="meta")
    assert type(t) is torch.Tensor and t.is_meta


class _PartlyOnMeta(nn.Module):
    """A skeleton built under ``torch.device("meta")`` (as transformers' ``from_pretrained``
    builds), then a layer of real values: random inits, factories and views on meta."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device("meta"):
            self.skeleton = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Embedding(5, 8))
            self.skeleton[0].weight.data.normal_(generator=torch.Generator())
            self.transposed = nn.Parameter(self.skeleton[0].weight.detach().t())
        self.head = nn.Linear(16, 4)


def test_modules_built_on_meta_inside_the_context_stay_meta_and_draw_nothing() -> None:
    # build_pair checks the generator: eager draws nothing on meta, and neither does recording.
    eager, lazy = build_pair(_PartlyOnMeta)

    def geometry(m: nn.Module) -> list[tuple[object, ...]]:
        return [
            (n, type(p), p.shape, p.stride(), p.dtype, p.is_meta) for n, p in m.named_parameters()
        ]

    assert geometry(lazy) == geometry(eager)
    assert all(p.is_meta for n, p in lazy.named_parameters() if not n.startswith("head."))
    assert torch.equal(lazy.head.weight, eager.head.weight)
    assert torch.equal(lazy.head.bias, eager.head.bias)


def test_real_tensors_made_before_the_context_stay_real() -> None:
    real = torch.ones(3)
    with LazyInitContext():
        doubled = real * 2  # ops on real tensors only run for real
        lazy = torch.ones(3) + real
    assert type(doubled) is torch.Tensor and torch.equal(doubled, torch.full((3,), 2.0))
    assert isinstance(lazy, LazyTensor)


def test_invalid_random_init_raises_at_build_as_eager_does() -> None:
    with LazyInitContext():
        t = torch.empty(3)
        with pytest.raises(RuntimeError, match=r"normal expects std >= 0\.0"):
            t.normal_(0.0, -1.0)
        with pytest.raises(RuntimeError, match="floating-point"):
            torch.empty(3, dtype=torch.long).normal_()


def test_moving_a_lazy_model_to_meta_gives_meta_tensors_as_eager_does() -> None:
    with LazyInitContext():
        m = nn.Linear(4, 4)
    assert m.weight.to("meta").is_meta
    m.to("meta")
    assert m.weight.is_meta and m.weight.device.type == "meta"
    assert not is_lazy(m)


def test_forward_pass_before_materialize_is_a_clear_error() -> None:
    with LazyInitContext():
        m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(LazyTensorError, match=r"forward pass.*dormant\.materialize\(model\)"):
        m(torch.ones(2, 4))
    with torch.no_grad(), pytest.raises(LazyTensorError, match="forward pass"):
        m(torch.ones(2, 4))
    nn.init.zeros_(m[0].bias)  # edits after building still record
    materialize(m)
    assert m(torch.ones(2, 4)).shape == (2, 4)


def _geometry(t: torch.Tensor) -> tuple[object, ...]:
    return (t.shape, t.stride(), t.storage_offset(), t.dtype, t.untyped_storage().nbytes())


_SHAPES = [(), (0,), (3,), (2, 0, 3), (1, 5), (16,), (4, 3)]
_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64]
_INPLACE_SHORTCUTS = [
    (torch.ops.aten.normal_.default, [(0.0, 0.02), (1.0, 0.0), (0.0, -1.0), (0, 1)]),
    (torch.ops.aten.uniform_.default, [(-0.1, 0.1), (0, 1), (1.0, -1.0), (True, 2.0)]),
]


@pytest.mark.parametrize("func,params", _INPLACE_SHORTCUTS, ids=["normal_", "uniform_"])
def test_meta_shortcuts_of_inplace_fills_agree_with_the_meta_kernels(
    func: torch._ops.OpOverload, params: list[tuple[object, object]]
) -> None:
    op = OpFacts(func)
    assert op.meta_shortcut is not None
    bases = [torch.empty(s, dtype=d, device="meta") for s in _SHAPES for d in _DTYPES]
    views = [torch.empty(4, 3, device="meta").t(), torch.empty(4, 6, device="meta")[:, ::2]]
    for self in bases + views:
        for args in params:
            meta_args = (self, *args)
            before = _geometry(self)
            got = op.meta_shortcut(bind(op, meta_args, {}), meta_args, {})
            if got is None:
                continue  # the kernel runs, and raises what it raises
            out = func(*meta_args)  # the shortcut must not hide an error
            assert got is self and _geometry(out) == before == _geometry(self)


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_meta_shortcut_of_randn_agrees_with_the_meta_kernel(default: torch.dtype) -> None:
    meta = torch.device("meta")
    dtypes = [None, *_DTYPES, torch.complex64]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        for func in (torch.ops.aten.randn.default, torch.ops.aten.randn.generator):
            op = OpFacts(func)
            assert op.meta_shortcut is not None
            for shape in _SHAPES:
                for dtype in dtypes:
                    kwargs: dict[str, object] = {"dtype": dtype, "device": meta}
                    if func is torch.ops.aten.randn.generator:
                        kwargs["generator"] = None
                    args = (list(shape),)
                    got = op.meta_shortcut(bind(op, args, kwargs), args, kwargs)
                    if got is None:
                        continue
                    assert _geometry(got) == _geometry(func(*args, **kwargs)), (shape, dtype)
    finally:
        torch.set_default_dtype(saved)


class _RandomShapes(nn.Module):
    """randn, normal_ and uniform_ over shapes, dtypes and strides the shortcuts see."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(16))
        self.b = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(0, 4))
        self.d = nn.Parameter(torch.empty(4, 6).t())
        self.e = nn.Parameter(torch.empty(8, 3, dtype=torch.bfloat16))
        with torch.no_grad():
            self.d.uniform_(-0.5, 0.5)
            self.d[:, ::2].uniform_(2, 3)  # not dense: the kernel's path
            self.e.normal_(0.0, 0.02)
            self.e.uniform_()


def test_random_ops_with_meta_shortcuts_equal_eager() -> None:
    assert_same(*build_pair(_RandomShapes))
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # randn without a dtype: the default is pinned
    try:
        assert_same(*build_pair(_RandomShapes))
    finally:
        torch.set_default_dtype(saved)


class _EveryFastKind(nn.Module):
    """Factories, views of one lazy tensor and in-place fills, with the variants each fast path
    must treat as the general path does (generators, dtypes, out-of-place edits, meta device)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.lin = nn.Linear(6, 4)
        self.emb = nn.Embedding(10, 4, padding_idx=2)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(2, 3, 3)
        self.full = nn.Parameter(torch.full((2, 3), 7.0))
        self.ints = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
        self.ranged = nn.Parameter(torch.arange(0, 6, 2.0))
        self.gen = nn.Parameter(torch.randn(17, generator=g))
        self.gen_fill = nn.Parameter(torch.empty(20).uniform_(-2, 2, generator=g))
        self.rand = nn.Parameter(torch.rand(5, dtype=torch.float64))
        self.bits = nn.Parameter(torch.empty(9).random_(0, 5), requires_grad=False)
        self.bern = nn.Parameter(torch.empty(8).bernoulli_(0.25), requires_grad=False)
        self.exp = nn.Parameter(torch.empty(16).exponential_())
        self.small = nn.Parameter(torch.empty(3).normal_())  # uncounted: runs for its draws
        with torch.no_grad():
            self.lin.weight.t()[1:3].zero_()
            self.lin.weight.view(-1)[:5].fill_(0.5)
            self.lin.weight.clamp_(-0.3, 0.3)  # reads its target
            self.full.sqrt_()
            self.full.data.expand(4, 2, 3)  # a view thrown away
            self.conv.weight.transpose(0, 1).normal_(0.0, 0.1)
        self.meta_shape = torch.empty(3, device="meta").shape  # stays meta, unrecorded
        self.half = self.lin.weight.detach().half()


def _describe_graph(module: nn.Module) -> list[object]:
    """Every node that built the module's tensors, as plain data: storages by first appearance."""
    from dormant._graph import TensorRef

    ids: dict[int, int] = {}

    def sid(s: object) -> int:
        return ids.setdefault(id(s), len(ids))

    def arg(x: object) -> object:
        if isinstance(x, TensorRef):
            meta = x.meta
            return ("ref", sid(x.storage), x.version, isinstance(x._storage, weakref.ref),
                    x.shape_only, _geometry(meta))  # fmt: skip
        if isinstance(x, torch.Generator):
            return ("generator", x.initial_seed())
        return (type(x).__name__, x if not isinstance(x, torch.Tensor) else tuple(x.shape))

    out: list[object] = []
    seen: set[int] = set()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        storage = t._lazy_storage
        out.append((name, sid(storage), storage.nbytes, storage.device))
        for node in storage.writers:
            if id(node) in seen:
                continue
            seen.add(id(node))
            rng = node.rng
            out.append((
                node.label, [arg(x) for x in node.flat_args], node.spec,
                [(sid(r.storage), r.version) for r in node.reads],
                [(sid(w.storage), w.version, w.keeps_base, w.output_index, arg(w.ref))
                 for w in node.writes],
                None if rng is None else (rng.draws, rng.device,
                                          None if rng.start is None else rng.start.draws),
            ))  # fmt: skip
    return out


@pytest.mark.parametrize("model", [_EveryFastKind, _RandomShapes, WritesThroughViews, Factories])
def test_fast_paths_record_what_the_general_path_records(
    model: type[nn.Module],
) -> None:
    def build(fast: bool) -> tuple[nn.Module, list[object], torch.Tensor]:
        # Facts of every op made again, with the fast paths on or off.
        with fresh_facts() if fast else general_path_only() as ops:
            torch.manual_seed(0)
            with LazyInitContext():
                module = model()
            kinds = {op.kind for op in ops.values() if op.path in FAST_PATHS.values()}
            all_kinds = set(FAST_PATHS)
            assert kinds == (all_kinds if fast and model is _EveryFastKind else kinds & all_kinds)
            assert bool(kinds) == fast
            return module, _describe_graph(module), torch.get_rng_state()

    general, general_graph, general_rng = build(fast=False)
    fast, fast_graph, fast_rng = build(fast=True)
    assert fast_graph == general_graph
    assert torch.equal(fast_rng, general_rng)
    materialize(general)
    materialize(fast)
    assert_same(general, fast)


def test_factory_metadata_is_never_reused_for_other_arguments() -> None:
    # Each pair differs in one argument (or the default dtype) that what is remembered of the
    # first (metadata, recorded arguments) must not answer for the second (see [Note: factory
    # calls]).
    calls: list[Callable[[], torch.Tensor]] = [
        lambda: torch.empty(2, 3),
        lambda: torch.empty(3, 2),
        lambda: torch.empty(2, 3, dtype=torch.float64),
        lambda: torch.empty(6),
        lambda: torch.empty(2, 3, 4, 5, memory_format=torch.channels_last),
        lambda: torch.empty_strided((2, 3), (1, 2)),
        lambda: torch.empty_strided((2, 3), (3, 1)),
        lambda: torch.full((2,), 1),
        lambda: torch.full((2,), 1.0),
        lambda: torch.full((2,), 2.0),  # same metadata, other values
        lambda: torch.full((2,), True),
        lambda: torch.arange(0, 6, 2),
        lambda: torch.arange(0, 6, 3),
        lambda: torch.arange(0.0, 1.0, 0.25),
        lambda: torch.ones(4),
        lambda: torch.randn(4),
        lambda: torch.zeros(0, 3),
    ]

    def geometry(t: torch.Tensor) -> tuple[object, ...]:
        return (t.shape, t.stride(), t.storage_offset(), t.dtype, t.is_contiguous())

    saved = torch.get_default_dtype()
    try:
        for default in (torch.float32, torch.float64, torch.float32):
            torch.set_default_dtype(default)
            eager = [geometry(call()) for call in calls]
            for _ in range(2):  # the second time, from what the first remembered
                torch.manual_seed(0)
                with LazyInitContext():
                    lazy = [call() for call in calls]
                assert [geometry(t._meta) for t in lazy] == eager
                assert [geometry(t) for t in lazy] == eager
                assert [t._lazy_storage.nbytes for t in lazy] == [
                    t.untyped_storage().nbytes() for t in (call() for call in calls)
                ]
                # Values too (``empty`` aside): the recorded arguments are each call's own.
                holder = nn.Module()
                for i, t in enumerate(lazy):
                    holder.register_buffer(f"t{i}", t)
                torch.manual_seed(0)
                expected = [call() for call in calls]
                materialize(holder)
                for i, (call, want) in enumerate(zip(calls, expected)):
                    got = getattr(holder, f"t{i}")
                    assert got.dtype == want.dtype and got.shape == want.shape
                    if not any(name.startswith("empty") for name in call.__code__.co_names):
                        assert torch.equal(got, want), i
    finally:
        torch.set_default_dtype(saved)
