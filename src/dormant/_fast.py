"""The fast paths: factories, views of one lazy tensor and in-place fills, recorded in a few
steps each.

[Note: fast paths]
Model construction is mostly three kinds of op: factories (``empty``, ``ones``, ``randn``),
views of one lazy tensor (``detach`` for every ``nn.Parameter``) and in-place fills of one lazy
tensor (``uniform_``, ``normal_``, ``fill_``, ``zero_``): :class:`~dormant._ops.OpKind`, from
the schema. For each kind, the schema alone tells which steps of the general path (``_record``)
can matter: a fast path runs just those, in the same order, with the same effects (the same
node, flat arguments, spec, writes and random step, made by the same ``_emit.emit``). It answers
``SLOW`` for what it does not cover (a real tensor, no meta kernel), and the general path then
takes the op from the start: nothing was recorded yet. Model code that builds on the meta device
inside the context (transformers' ``from_pretrained`` does) gets plain meta tensors, as eager
does, by the same fast paths: nothing to record and, on meta, nothing drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _draws
from ._emit import covers_storage, emit
from ._factories import FACTORY_CALLS, factory_call, factory_key, real_empty_wanted
from ._flat import leaves_layout
from ._graph import META, LazyStorage, Node, TensorRef
from ._lazy_tensor import LazyTensor, new_lazy
from ._ops import PLAIN, OpFacts, OpKind, bind, output_device
from ._session import normalize_device
from ._shortcuts import eager_arg_check

# What a path answers for a call it does not cover: the general path takes it then.
SLOW: Any = object()

# A recording path: (op, args, kwargs, in_context) -> the op's result, or SLOW.
Path = Callable[[OpFacts, tuple[Any, ...], dict[str, Any], bool], Any]


def _is_plain_meta(x: Any) -> bool:
    return type(x) in PLAIN and x.device.type == "meta"


def record_view(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    """A view of one lazy tensor (``detach``, ``t``, ``view``): a lazy tensor over its storage."""
    x = args[0] if args else None
    if not isinstance(x, LazyTensor):
        # A plain tensor (meta, as model code makes under torch.device("meta"), or real): its
        # view, as eager gives. Other subclasses take the general path.
        return op.call(*args, **kwargs) if type(x) in PLAIN else SLOW
    if op.same_geometry:
        return new_lazy(x._meta, x._lazy_storage)
    try:
        meta_out = op.call(x._meta, *args[1:], **kwargs)
    except NotImplementedError:
        return SLOW
    return new_lazy(meta_out, x._lazy_storage)


def record_fill(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    """An in-place op on one lazy tensor, with no other tensor argument (``uniform_``,
    ``fill_``, ``zero_``): one node that writes its storage."""
    x = args[0] if args else None
    if not isinstance(x, LazyTensor):
        if _is_plain_meta(x) and kwargs.get("generator") is None:
            # A fill of a meta tensor: eager's result, and nothing is drawn on meta.
            return op.meta(bind(op, args, kwargs) if op.meta_shortcut else None, args, kwargs)
        return SLOW
    # Bound arguments are read only by meta shortcuts and random ops (zero_, fill_ need none).
    bound = bind(op, args, kwargs) if op.meta_shortcut or op.is_random else None
    if op.arg_check is not None and bound is not None and op.arg_check(bound):
        eager_arg_check(op.func, x.dtype, args, kwargs)
    meta_kwargs = kwargs
    if kwargs.get("generator") is not None:
        meta_kwargs = {**kwargs, "generator": None}
    try:
        meta_out = op.meta(bound, (x._meta, *args[1:]), meta_kwargs)
    except NotImplementedError:
        return SLOW
    layout = leaves_layout(args, kwargs)  # no lists in the schema (see ``_ops._kind``)
    if layout is None:
        return SLOW
    s = x._lazy_storage
    ref = TensorRef(s, x._meta, s.version, weak=True)
    blind = op.write_only or op.names[0] == "out"
    draw = None
    if op.is_random:
        assert bound is not None
        device = x.device
        draw = (bound.get("generator"), device, _draws.count(op.func, meta_out, bound, device))
    node = Node(op.func, [ref, *args[1:], *kwargs.values()], layout.spec)
    if not blind:
        node.reads = [ref]
    emit(node, ((s, ref, None, not (blind and covers_storage(x._meta, s))),), draw)
    return x


def record_factory(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    """A factory (``empty``, ``ones``, ``randn``) inside the context: one node, one new storage."""
    if not in_context or kwargs.get("pin_memory"):
        return SLOW  # pinned: the general path (on meta, eager's error)
    if args and type(args[0]) is list and 0 in args[0] and real_empty_wanted():
        return op.call(*args, **kwargs)  # no elements, and real (see there)
    if op.device_kw_only:
        device = normalize_device(kwargs.get("device"))  # output_device's, without binding
    else:
        device = output_device(bind(op, args, kwargs), [])
    key = factory_key(op, args, kwargs, device)
    call = FACTORY_CALLS.get(key) if key is not None else None
    if call is not None:
        meta_out = torch.empty_strided(call.size, call.stride, dtype=call.dtype, device=META)
    else:
        made = factory_call(op, args, kwargs, device, key)
        if made is None:
            return SLOW
        call, meta_out = made
    if device.type == "meta":
        return meta_out
    storage = LazyStorage(call.nbytes, device)
    ref = TensorRef(storage, meta_out, 1, weak=True)
    draw = None
    if op.is_random:
        bound = bind(op, args, call.kwargs)
        draw = (bound.get("generator"), device, _draws.count(op.func, meta_out, bound, device))
    emit(Node(op.func, list(call.flat), call.spec), ((storage, ref, 0, False),), draw)
    return new_lazy(meta_out, storage)


FAST_PATHS: dict[OpKind, Path] = {
    OpKind.FACTORY: record_factory,
    OpKind.VIEW: record_view,
    OpKind.FILL: record_fill,
}
