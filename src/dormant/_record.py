"""Recording: how tensors stay lazy.

Every aten op that model code runs inside :class:`~dormant.LazyInitContext` reaches
:func:`record_op`, through a ``TorchDispatchMode`` (factories, however they are spelled) or
through ``LazyTensor.__torch_dispatch__`` (any op on a lazy tensor, inside the context or not).
``record_op`` takes the op's path (:class:`~dormant._ops.OpKind`): a fast path (``_fast``), a
special op (``_special``), or the general path here, which runs the op's meta kernel to learn
the outputs' metadata, wraps them as lazy tensors, and emits a :class:`~dormant._graph.Node`
(``_emit``). What an op does to its arguments comes from its schema (``_ops``).

Values are never faked: an op that must see data (``.item()``, an op with no meta kernel)
computes it exactly through replay and marks what it forced as materialized early.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import _draws, _lazy_tensor
from ._deferred import defer_library_init
from ._emit import (
    NodeWrite,
    as_lazy,
    covers_storage,
    emit,
    held,
    keep_forced,
    new_output,
    user_frame,
)
from ._factories import for_meta_kernel, pinned_defaults
from ._fast import FAST_PATHS, SLOW
from ._flat import ArgLayout, unflatten
from ._graph import Node, TensorRef, meta_like
from ._lazy_tensor import LazyTensor, describe, new_lazy
from ._ops import Call, OpFacts, OpKind
from ._placement import install
from ._replay import compute, run_for_draws
from ._rng import place_for_real_draw
from ._special import SPECIAL_PATHS, evaluate, run_forced, set_data
from .errors import LazyTensorError, UnsupportedOpError

aten = torch.ops.aten

# Keyed by ``id``: OpOverload hashes in Python, and every op would pay for it. The facts hold
# their OpOverload, so the id stays its own.
_OPS: dict[int, OpFacts] = {}
_fast_paths_on = True


def _facts(func: torch._ops.OpOverload) -> OpFacts:
    op = _OPS.get(id(func))
    if op is None:
        op = _OPS[id(func)] = OpFacts(func)
        if op.kind is OpKind.SPECIAL:
            op.path = SPECIAL_PATHS[func.overloadpacket]
        elif _fast_paths_on:
            op.path = FAST_PATHS.get(op.kind)
    return op


@contextlib.contextmanager
def general_path_only() -> Iterator[dict[int, OpFacts]]:
    """Record with the fast paths off (facts of every op made again inside the block, and
    yielded): tests compare what the fast paths record against the general path."""
    with _fresh_facts(fast=False) as ops:
        yield ops


@contextlib.contextmanager
def fresh_facts() -> Iterator[dict[int, OpFacts]]:
    """Facts of every op made again inside the block, and yielded (for tests)."""
    with _fresh_facts(fast=True) as ops:
        yield ops


@contextlib.contextmanager
def _fresh_facts(*, fast: bool) -> Iterator[dict[int, OpFacts]]:
    global _fast_paths_on
    saved = dict(_OPS)
    _OPS.clear()
    _fast_paths_on = fast
    try:
        yield _OPS
    finally:
        _fast_paths_on = True
        _OPS.clear()
        _OPS.update(saved)


# --- entry -------------------------------------------------------------------------------------


def record_op(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], *, in_context: bool
) -> Any:
    """Record ``func(*args, **kwargs)`` lazily, or run it for real when it touches nothing lazy."""
    op = _OPS.get(id(func)) or _facts(func)
    if op.path is not None:
        out = op.path(op, args, kwargs, in_context)
        if out is not SLOW:
            return out
    call = Call(op, args, kwargs)
    if not call.lazy:
        # Real inputs only: a factory inside the context is lazy, anything else runs for real.
        device = kwargs.get("device")
        to_meta = device is not None and torch.device(device).type == "meta"
        if to_meta or not (in_context and _creates_tensor(call, device)):
            if in_context and not to_meta and op.is_random:
                _draw_for_real(call)
            return func(*args, **kwargs)
    if not in_context:
        _refuse_outside(call)
    if op.metadata_inplace:
        raise UnsupportedOpError(
            f"{func} changes the metadata of a lazy {describe(call.lazy[0])} in place, which "
            "dormant cannot record; use the out-of-place form (for example .t() instead of .t_())",
            op=str(func),
        )
    if op.returns_values and not op.metadata_query:
        return run_forced(call)
    if op.mutated and _writes_real_tensor(call):
        # ``real.copy_(lazy)``: the real tensor must hold the value now.
        return run_forced(call)
    return _record(call)


_EMPTY_LIKE = aten.empty_like.default
_TO_EMPTY = torch.nn.Module.to_empty.__code__


def _refuse_outside(call: Call) -> None:
    """Ops on lazy tensors outside the context that mean the model is used unmaterialized."""
    op, first = call.op, describe(call.lazy[0])
    if op.forward:
        raise LazyTensorError(
            f"{op.func} on a lazy {first} outside LazyInitContext: this looks like a "
            "forward pass (or a training step) on a model that was never materialized; call "
            "dormant.materialize(model) or booster.boost(model) first",
            tensor=first,
            op=str(op.func),
        )
    if op.func is _EMPTY_LIKE and _called_from(_TO_EMPTY):
        raise UnsupportedOpError(
            f"module.to_empty() on a lazy {first}: it would replace the recorded "
            "values with uninitialized memory. A lazy model needs no to_empty: call "
            "dormant.materialize(model) (it computes on the context's default_device: build "
            "under LazyInitContext(default_device=...) for another device), or "
            "booster.boost(model)",
            op="torch.nn.Module.to_empty",
        )


def _called_from(code: Any) -> bool:
    """Whether a caller runs ``code`` (the whole stack: ``_apply`` recurses once per level of
    modules; asked only of ops that are rare outside the context)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _creates_tensor(call: Call, device: Any) -> bool:
    """A factory: plain, or one that reads only the shape of real tensors
    (``torch.randn_like(real)``), or a ``*_like`` factory that moves a meta tensor's shape to a
    real device (``torch.empty_like(meta_param, device="cpu")``, as libraries do for keys a
    checkpoint lacks)."""
    op, tensors = call.op, call.tensors
    if not tensors:
        return op.factory_schema
    on_meta = [t.device.type == "meta" for t in tensors]
    if op.shape_only and not any(on_meta):
        return True
    return device is not None and op.is_like and all(on_meta)


def _draw_for_real(call: Call) -> None:
    """A random op on real tensors inside the context draws now, from where eager's generator
    would stand after the random ops recorded so far."""
    device = call.device()
    if device.type != "meta":  # meta tensors draw nothing
        place_for_real_draw(call.bound.get("generator"), device, run_for_draws)


def _writes_real_tensor(call: Call) -> bool:
    bound = call.bound
    for name in call.op.mutated:
        value = bound.get(name)
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(t, torch.Tensor) and not isinstance(t, LazyTensor):
                return True
    return False


# --- the general path --------------------------------------------------------------------------


def _to_meta(x: Any) -> Any:
    if isinstance(x, LazyTensor):
        return x._meta
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    return x


def _record(call: Call) -> Any:
    """Record one op by the general path: its meta result, then a node (or views, or nothing
    for an op on meta)."""
    op = call.op
    device = call.device()
    meta_args, meta_kwargs = unflatten([_to_meta(x) for x in call.flat], call.layout)
    to_meta = not call.tensors or meta_kwargs.get("device") is not None
    for_meta_kernel(op, meta_kwargs, to_meta=to_meta)
    forced_out = None
    try:
        meta_out = op.meta(call.bound, meta_args, meta_kwargs)
    except NotImplementedError:
        # No meta kernel: compute the op for real (exactly, through replay) and keep its result.
        forced_out = run_forced(call)
        _refuse_kinds(op, forced_out)
        meta_out = tree_unflatten(*_map_flat(_meta_of_output, forced_out))
    _refuse_kinds(op, meta_out)
    if op.is_view:
        return _wrap_views(op, call.bound, meta_out)
    if device.type == "meta" and not op.mutated:
        return meta_out  # ``lazy.to("meta")``: a meta tensor, as eager gives; nothing to compute
    if not call.tensors:
        first = meta_out if isinstance(meta_out, torch.Tensor) else tree_flatten(meta_out)[0][0]
        call = call.with_kwargs(pinned_defaults(op, call.kwargs, first.dtype, device))
    return _add_node(call, meta_out, device, forced_out)


def _refuse_kinds(op: OpFacts, out: Any) -> None:
    """Lazy tensors are strided and dense: an op that makes a sparse, quantized or nested tensor
    is refused at the op (replay would give another kind of tensor, or none)."""
    for t in [out] if isinstance(out, torch.Tensor) else tree_flatten(out)[0]:
        if not isinstance(t, torch.Tensor):
            continue
        kind = (
            "quantized"
            if t.is_quantized or op.quantizes
            else "nested"
            if t.is_nested
            else f"{t.layout}"
            if t.layout is not torch.strided
            else None
        )
        if kind is not None:
            raise UnsupportedOpError(
                f"{op.func} at {user_frame()} makes a {kind} tensor, which dormant cannot record "
                "lazily (lazy tensors are dense and strided): make it after "
                "dormant.materialize(model), from the dense values then",
                op=str(op.func),
            )


def _map_flat(fn: Callable[[Any], Any], tree: Any) -> tuple[list[Any], Any]:
    flat, spec = tree_flatten(tree)
    return [fn(x) for x in flat], spec


def _meta_of_output(x: Any) -> Any:
    return meta_like(x) if isinstance(x, torch.Tensor) else x


def _wrap_views(op: OpFacts, bound: dict[str, Any], meta_out: Any) -> Any:
    """Outputs of view ops share their input's lazy storage; nothing is recorded."""
    storage = bound[op.view_source]._lazy_storage
    if isinstance(meta_out, torch.Tensor):
        return new_lazy(meta_out, storage)

    def wrap(m: Any) -> Any:
        return new_lazy(m, storage) if isinstance(m, torch.Tensor) else m

    return tree_unflatten(*_map_flat(wrap, meta_out))


def _add_node(call: Call, meta_out: Any, device: torch.device, forced_out: Any) -> Any:
    """Emit the call's node; the lazy outputs."""
    op = call.op
    written = _written(call)
    flat_args, reads = _node_args(call, written)
    writes: list[NodeWrite] = []
    for i, (t, blind) in written.items():
        s = t._lazy_storage
        writes.append((s, flat_args[i], None, not (blind and covers_storage(t._meta, s))))
    wrapped, out_flat = _outputs(call, meta_out, device, forced_out, writes)
    draw = None
    if op.is_random:
        target = next(m for m in out_flat if isinstance(m, torch.Tensor))
        draw = (
            call.bound.get("generator"),
            device,
            _draws.count(op.func, target, call.bound, device),
        )
    node = Node(op.func, flat_args, call.layout.spec)
    if reads:
        node.reads = reads
    if (default_dtype := torch.get_default_dtype()) is not torch.float32:
        # Type promotion (``int_tensor / 3``) reads it; replay runs each op under the one it was
        # recorded under, not the caller's. Ops of the fast paths never promote.
        node.default_dtype = default_dtype
    if op.fails_on_values:
        node.where = user_frame()
    emit(node, writes, draw)
    if forced_out is not None:
        # The op already ran for real on early values: their caches now include this write.
        for t, _ in written.values():
            s = t._lazy_storage
            if s.cache is not None:
                s.cache_version = s.version
    return wrapped


def _written(call: Call) -> dict[int, tuple[LazyTensor, bool]]:
    """The lazy tensors the call writes in place: flat position -> (tensor, write-only)."""
    op = call.op
    written: dict[int, tuple[LazyTensor, bool]] = {}
    if op.mutated:
        # Writes are per argument, not per tensor (``x.copy_(x)`` writes its first argument and
        # reads its second).
        names = _flat_arg_names(op, call.flat, call.layout)
        for i, (x, name) in enumerate(zip(call.flat, names)):
            if isinstance(x, LazyTensor) and name in op.mutated:
                written[i] = (x, op.write_only or name == "out")
    return written


def _node_args(
    call: Call, written: dict[int, tuple[LazyTensor, bool]]
) -> tuple[list[Any], list[TensorRef]]:
    """The node's flat arguments (lazy tensors as references, real ones held) and its reads."""
    shape_only = call.op.shape_only
    written_storages = {id(t._lazy_storage) for t, _ in written.values()}
    flat_args: list[Any] = []
    reads: list[TensorRef] = []
    for i, x in enumerate(call.flat):
        if not isinstance(x, LazyTensor):
            flat_args.append(held(x) if not shape_only else x)
            continue
        s = x._lazy_storage
        weak = shape_only or id(s) in written_storages
        ref = TensorRef(s, x._meta, s.version, weak=weak, shape_only=shape_only)
        entry = written.get(i)
        if not shape_only and (entry is None or not entry[1]):
            reads.append(ref)
        flat_args.append(ref)
    return flat_args, reads


def _outputs(
    call: Call, meta_out: Any, device: torch.device, forced_out: Any, writes: list[NodeWrite]
) -> tuple[Any, list[Any]]:
    """The call's lazy outputs: aliases of mutated arguments are the argument itself; fresh ones
    get storages (appended to ``writes``). Also the flat meta outputs."""
    op = call.op
    if isinstance(meta_out, torch.Tensor):
        out_flat, out_spec, out_returns = [meta_out], None, [0]
    else:
        out_flat, out_spec = tree_flatten(meta_out)
        out_returns = _return_per_leaf(meta_out, op.returns)
    forced_flat = tree_flatten(forced_out)[0] if forced_out is not None else None
    wrapped: list[Any] = []
    for index, (m, r) in enumerate(zip(out_flat, out_returns)):
        if not isinstance(m, torch.Tensor):
            wrapped.append(m)
            continue
        alias = op.returns[r]
        if alias is not None:
            arg_name = op.alias_args[r]
            source = call.bound.get(arg_name) if arg_name is not None else None
            if isinstance(source, (list, tuple)):
                source = source[index] if index < len(source) else None
            if isinstance(source, LazyTensor):
                wrapped.append(source if alias.is_write else new_lazy(m, source._lazy_storage))
                continue
        storage, ref = new_output(m, device)
        writes.append((storage, ref, index, False))
        if forced_flat is not None:
            keep_forced(storage, forced_flat[index], str(op.func))
        wrapped.append(new_lazy(m, storage))
    out = wrapped[0] if out_spec is None else tree_unflatten(wrapped, out_spec)
    return out, out_flat


def _flat_arg_names(op: OpFacts, flat: list[Any], layout: ArgLayout) -> list[str]:
    """The name of the argument each leaf belongs to (the same for every call of ``op`` with
    this layout: kept on the layout when it is shared)."""
    cache = layout.per_op
    names = cache.get(id(op)) if cache is not None else None
    if names is None:
        args, kwargs = unflatten(flat, layout)
        tree = (
            tuple(tree_map(lambda _, n=n: n, a) for n, a in zip(op.names, args)),
            {k: tree_map(lambda _, k=k: k, v) for k, v in kwargs.items()},
        )
        names = tree_flatten(tree)[0]
        if cache is not None:
            cache[id(op)] = names
    return names


def _return_per_leaf(meta_out: Any, returns: list[Any]) -> list[int]:
    """For each leaf of the outputs, the index of the schema return it comes from."""
    if len(returns) == 1:
        return [0] * len(tree_flatten(meta_out)[0])
    leaves: list[int] = []
    for r, value in enumerate(meta_out):
        leaves.extend([r] * len(tree_flatten(value)[0]))
    return leaves


class _Recorder:
    """What LazyTensor asks of recording (see [Note: the recorder hook] in ``_lazy_tensor``)."""

    record_op = staticmethod(record_op)
    evaluate = staticmethod(evaluate)
    defer_library_init = staticmethod(defer_library_init)

    @staticmethod
    def materialize(target: LazyTensor) -> None:
        storage = target._lazy_storage
        install({id(target): (describe(target), target)}, compute([storage]))

    @staticmethod
    def assign_data(target: LazyTensor, value: torch.Tensor) -> None:
        set_data(target, as_lazy(value))


_lazy_tensor.recorder = _Recorder()
