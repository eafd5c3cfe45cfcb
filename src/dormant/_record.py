"""Recording: how tensors stay lazy.

Every aten op that model code runs inside :class:`~dormant.LazyInitContext` reaches
:func:`record_op`, through a ``TorchDispatchMode`` (factories, however they are spelled) or
through ``LazyTensor.__torch_dispatch__`` (any op on a lazy tensor, inside the context or not).
``record_op`` runs the op's meta kernel to learn the outputs' metadata, wraps them as lazy
tensors, and appends a :class:`~dormant._graph.Node` to the op graph. What an op does to its
arguments (view, in-place write, fresh output) comes from its schema; the few ops that need more
are in small tables here.

Values are never faked: an op that must see data (``.item()``, an op with no meta kernel)
computes it exactly through replay and marks what it forced as materialized early.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import _draws, _lazy_tensor, _rng
from ._flat import ArgLayout, flatten, leaves_layout, unflatten
from ._graph import (
    META,
    Constant,
    DeferredCall,
    EarlyRecord,
    LazyStorage,
    Node,
    TensorRef,
    meta_like,
    source,
    view_of,
)
from ._lazy_tensor import LazyTensor, describe, new_lazy
from ._mapped import mapped_file
from ._placement import install
from ._replay import compute, constant_value, run_for_draws
from ._session import RngMode, normalize_device, recording_active, session
from ._spmd import replace_collective
from .errors import LazyTensorError, UnsupportedOpError

aten = torch.ops.aten

# In-place ops that overwrite their target without reading it: a full overwrite makes the old
# contents dead, so replay can skip computing them.
_WRITE_ONLY = {
    aten.fill_,
    aten.zero_,
    aten.normal_,
    aten.uniform_,
    aten.random_,
    aten.bernoulli_,  # reads p (float or tensor), never self
    aten.exponential_,
    aten.cauchy_,
    aten.log_normal_,
    aten.geometric_,
    aten.copy_,
}

# Ops that read only the metadata of their tensor arguments.
_SHAPE_ONLY = {
    aten.empty_like,
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.randint_like,
    aten.new_empty,
    aten.new_empty_strided,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
}

# In-place ops that change a tensor's metadata rather than its values.
_METADATA_INPLACE = {
    aten.t_,
    aten.transpose_,
    aten.squeeze_,
    aten.unsqueeze_,
    aten.as_strided_,
    aten.resize_,
    aten.resize_as_,
    aten.swapdims_,
    aten.swapaxes_,
    aten.set_,  # except set_(Tensor source): see _set_source
}

# Ops returning Python values that depend only on metadata.
_METADATA_QUERIES = {
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
    aten.sym_storage_offset,
    aten.is_same_size,
    aten.size,
    aten.stride,
    aten.numel,
    aten.dim,
    aten.is_contiguous,
    aten._has_compatible_shallow_copy_type,
}

_RANDOM_EXTRA = {aten.native_dropout, aten.rrelu_with_noise}

# Ops that can fail on their inputs' values (an index out of range, an integer division by
# zero), which meta kernels cannot see: eager fails at the op, replay only at materialize, so
# these remember the model line to name it then. By name: each ``aten.x`` made here would load
# its overloads when dormant is imported.
_FAILS_ON_VALUES = frozenset(
    {
        "index",
        "index_put",
        "index_put_",
        "_index_put_impl_",
        "index_fill",
        "index_fill_",
        "index_copy",
        "index_copy_",
        "index_add",
        "index_add_",
        "index_select",
        "gather",
        "scatter",
        "scatter_",
        "scatter_add",
        "scatter_add_",
        "scatter_reduce",
        "scatter_reduce_",
        "embedding",
        "take",
        "take_along_dim",
        "floor_divide",
        "floor_divide_",
        "remainder",
        "remainder_",
        "div",
        "div_",
        "fmod",
        "fmod_",
        "multinomial",
        "one_hot",
    }
)

# Ops of a forward pass. Outside the context they mean a model is used before it was
# materialized: an error then, rather than a lazy loss with no gradients.
_FORWARD_OPS = {
    aten.mm,
    aten.addmm,
    aten.bmm,
    aten.baddbmm,
    aten.convolution,
    aten.embedding,
    aten.native_layer_norm,
    aten.native_group_norm,
    aten.native_batch_norm,
    aten._native_batch_norm_legit,
    aten._softmax,
    aten._log_softmax,
    aten._scaled_dot_product_flash_attention_for_cpu,
}


@functools.cache
def _is_random(packet: torch._ops.OpOverloadPacket) -> bool:
    if packet in _RANDOM_EXTRA:
        return True
    for name in packet.overloads():
        schema = getattr(packet, name)._schema
        if any("Generator" in str(arg.type) for arg in schema.arguments):
            return True
    return False


def _aliased_arg(func: torch._ops.OpOverload, alias_info: Any) -> str | None:
    for arg in func._schema.arguments:
        if arg.alias_info is not None and arg.alias_info.before_set & alias_info.before_set:
            return arg.name
    return None


def _returns_values(schema: torch._C.FunctionSchema) -> bool:
    """Whether the op returns Python values (``.item()``, ``equal``) rather than tensors, or
    nothing at all while mutating nothing: a check on values (``_linalg_check_errors``) that
    must run now to raise where eager raises."""
    if not schema.returns:
        return not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    return any("Tensor" not in str(r.type) for r in schema.returns)


# Meta results known without running the meta kernel: see [Note: meta shortcuts]. Each takes the
# bound arguments and the meta arguments, and returns the meta output, or None to run the kernel.
_MetaShortcut = Callable[[dict[str, Any], tuple[Any, ...], dict[str, Any]], Any]


class _Op:
    """What recording needs to know about one ``OpOverload``, read from its schema once."""

    __slots__ = (
        "alias_args",
        "arg_check",
        "call",
        "device_kw_only",
        "factory_schema",
        "fails_on_values",
        "fast",
        "forward",
        "func",
        "has_device",
        "has_dtype",
        "is_like",
        "is_random",
        "is_view",
        "meta_shortcut",
        "metadata_inplace",
        "metadata_query",
        "mutated",
        "names",
        "quantizes",
        "returns",
        "returns_values",
        "same_geometry",
        "shape_only",
        "special",
        "view_source",
        "write_only",
    )

    def __init__(self, func: torch._ops.OpOverload) -> None:
        packet = func.overloadpacket
        schema = func._schema
        self.func = func
        # What ``func(...)`` calls: OpOverload.__call__ is a Python frame that only calls ``_op``.
        self.call: Callable[..., Any] = func._op if type(func) is torch._ops.OpOverload else func
        self.special = _SPECIAL.get(packet)
        self.names = [a.name for a in schema.arguments]
        # Names of mutated arguments, and alias sets of the returns (with the argument each
        # aliases).
        self.mutated = {
            a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
        }
        self.returns = [r.alias_info for r in schema.returns]
        self.alias_args = [_aliased_arg(func, r) if r is not None else None for r in self.returns]
        self.returns_values = _returns_values(schema)
        self.factory_schema = bool(schema.returns) and not self.returns_values
        self.is_view = (
            not self.mutated and bool(self.returns) and all(r is not None for r in self.returns)
        )
        # Views share the storage of the argument their first output aliases.
        self.view_source: str = (self.alias_args[0] if self.returns else None) or (
            self.names[0] if self.names else ""
        )
        self.is_random = _is_random(packet)
        self.write_only = packet in _WRITE_ONLY
        self.shape_only = packet in _SHAPE_ONLY
        self.metadata_inplace = packet in _METADATA_INPLACE
        self.metadata_query = packet in _METADATA_QUERIES
        self.forward = packet in _FORWARD_OPS
        self.fails_on_values = packet.__name__ in _FAILS_ON_VALUES
        # (their meta kernels give float tensors: known by name)
        self.quantizes = packet.__name__.startswith(_QUANTIZING)
        self.is_like = packet.__name__.endswith("_like")
        # A view with its input's geometry (``nn.Parameter`` detaches every tensor it wraps):
        # the lazy result can share the input's meta tensor instead of asking the kernel.
        self.same_geometry = packet in (aten.detach, aten.alias)
        self.has_device = "device" in self.names
        self.device_kw_only = all(a.kwarg_only for a in schema.arguments if a.name == "device")
        self.has_dtype = "dtype" in self.names
        self.meta_shortcut: _MetaShortcut | None = _META_SHORTCUTS.get(func)
        self.arg_check: Callable[[dict[str, Any]], bool] | None = _ARG_CHECKS.get(func)
        self.fast: _FastPath | None = _fast_path(self, schema)

    def meta(self, bound: Any, meta_args: Any, meta_kwargs: dict[str, Any]) -> Any:
        """The op's result on meta arguments: its shortcut's, if it has one that answers, else
        the meta kernel's (which may raise NotImplementedError)."""
        if self.meta_shortcut is not None:
            out = self.meta_shortcut(bound, meta_args, meta_kwargs)
            if out is not None:
                return out
        return self.call(*meta_args, **meta_kwargs)


# Keyed by ``id``: OpOverload hashes in Python, and every op would pay for it. The _Op holds its
# OpOverload, so the id stays its own.
_OPS: dict[int, _Op] = {}


def _op(func: torch._ops.OpOverload) -> _Op:
    op = _OPS.get(id(func))
    if op is None:
        op = _OPS[id(func)] = _Op(func)
    return op


def _bind(op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(op.names, args))
    bound.update(kwargs)
    return bound


def _to_meta(x: Any) -> Any:
    if isinstance(x, LazyTensor):
        return x._meta
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    return x


def _is_dense(meta: torch.Tensor) -> bool:
    """Whether the elements of ``meta`` fill a contiguous block, each exactly once."""
    if meta.numel() and meta.is_contiguous():
        return True  # the common case, without sorting the strides (empty tensors: below)
    expected = 1
    for size, stride in sorted(zip(meta.shape, meta.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _covers_storage(meta: torch.Tensor, storage: LazyStorage) -> bool:
    """Whether writing every element of ``meta`` overwrites every byte of ``storage``."""
    return meta.numel() * meta.element_size() == storage.nbytes and _is_dense(meta)


_LIBRARY_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


def user_frame() -> str:
    """``file:line`` of the innermost caller outside torch and dormant, for reports."""
    frame = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


def _output_device(bound: dict[str, Any], tensors: list[torch.Tensor]) -> torch.device:
    device = bound.get("device")
    if device is not None:
        return normalize_device(device)
    for t in tensors:
        if t.device.type != "cpu" or t.dim() > 0:
            return t.device
    return tensors[0].device if tensors else torch.device("cpu")


# --- entry points ------------------------------------------------------------------------------


def record_op(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], *, in_context: bool
) -> Any:
    """Record ``func(*args, **kwargs)`` lazily, or run it for real when it touches nothing lazy."""
    op = _OPS.get(id(func)) or _op(func)
    if op.fast is not None:
        out = op.fast(op, args, kwargs, in_context)
        if out is not _SLOW:
            return out
    if op.special is not None:
        return op.special(func, args, kwargs, in_context)
    flat, layout = flatten(args, kwargs)
    tensors = [x for x in flat if isinstance(x, torch.Tensor)]
    lazy = [x for x in tensors if isinstance(x, LazyTensor)]
    if not lazy:
        # Real inputs only: a factory inside the context is lazy, anything else runs for real.
        device = kwargs.get("device")
        to_meta = device is not None and torch.device(device).type == "meta"
        if to_meta or not (in_context and _creates_tensor(op, tensors, device)):
            if in_context and not to_meta and op.is_random:
                _draw_for_real(op, args, kwargs, tensors)
            return func(*args, **kwargs)
    if not in_context and op.forward:
        raise LazyTensorError(
            f"{func} on a lazy {describe(lazy[0])} outside LazyInitContext: this looks like a "
            "forward pass (or a training step) on a model that was never materialized; call "
            "dormant.materialize(model) or booster.boost(model) first",
            tensor=describe(lazy[0]),
            op=str(func),
        )
    if not in_context and func is _EMPTY_LIKE and _called_from(_TO_EMPTY):
        raise UnsupportedOpError(
            f"module.to_empty() on a lazy {describe(lazy[0])}: it would replace the recorded "
            "values with uninitialized memory. A lazy model needs no to_empty: call "
            "dormant.materialize(model) (it computes on the context's default_device: build "
            "under LazyInitContext(default_device=...) for another device), or "
            "booster.boost(model)",
            op="torch.nn.Module.to_empty",
        )
    if op.metadata_inplace:
        raise UnsupportedOpError(
            f"{func} changes the metadata of a lazy {describe(lazy[0])} in place, which dormant "
            "cannot record; use the out-of-place form (for example .t() instead of .t_())",
            op=str(func),
        )
    if op.returns_values and not op.metadata_query:
        return _run_forced(func, args, kwargs, in_context)
    if op.mutated and _writes_real_tensor(op, args, kwargs):
        # ``real.copy_(lazy)``: the real tensor must hold the value now.
        return _run_forced(func, args, kwargs, in_context)
    return _record(op, args, kwargs, flat, layout, tensors)


_EMPTY_LIKE = aten.empty_like.default
_TO_EMPTY = torch.nn.Module.to_empty.__code__


def _called_from(code: Any) -> bool:
    """Whether a caller runs ``code`` (the whole stack: ``_apply`` recurses once per level of
    modules; asked only of ops that are rare outside the context)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _creates_tensor(op: _Op, tensors: list[torch.Tensor], device: Any) -> bool:
    """A factory: plain, or one that reads only the shape of real tensors
    (``torch.randn_like(real)``), or a ``*_like`` factory that moves a meta tensor's shape to a
    real device (``torch.empty_like(meta_param, device="cpu")``, as libraries do for keys a
    checkpoint lacks)."""
    if not tensors:
        return op.factory_schema
    on_meta = [t.device.type == "meta" for t in tensors]
    if op.shape_only and not any(on_meta):
        return True
    return device is not None and op.is_like and all(on_meta)


def _draw_for_real(
    op: _Op,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tensors: list[torch.Tensor],
) -> None:
    """A random op on real tensors inside the context draws now, from where eager's generator
    would stand after the random ops recorded so far."""
    bound = _bind(op, args, kwargs)
    device = _output_device(bound, tensors)
    if device.type != "meta":  # meta tensors draw nothing
        _rng.place_for_real_draw(bound.get("generator"), device, run_for_draws)


def _writes_real_tensor(op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    bound = _bind(op, args, kwargs)
    for name in op.mutated:
        value = bound.get(name)
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(t, torch.Tensor) and not isinstance(t, LazyTensor):
                return True
    return False


def _record(
    op: _Op,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flat: list[Any],
    layout: ArgLayout,
    tensors: list[torch.Tensor],
) -> Any:
    """Record one op; ``flat`` and ``layout`` are ``(args, kwargs)`` flattened."""
    func = op.func
    bound = _bind(op, args, kwargs)
    device = _output_device(bound, tensors)
    meta_args, meta_kwargs = unflatten([_to_meta(x) for x in flat], layout)
    _for_meta_kernel(op, meta_kwargs, to_meta=not tensors or meta_kwargs.get("device") is not None)
    forced_out = None
    try:
        meta_out = op.meta(bound, meta_args, meta_kwargs)
    except NotImplementedError:
        # No meta kernel: compute the op for real (exactly, through replay) and keep its result.
        forced_out = _run_forced(func, args, kwargs, True)
        _refuse_kinds(op, forced_out)
        meta_out = tree_unflatten(*_map_flat(_meta_of_output, forced_out))
    _refuse_kinds(op, meta_out)
    if op.is_view:
        return _wrap_views(op, bound, meta_out)
    if device.type == "meta" and not op.mutated:
        return meta_out  # ``lazy.to("meta")``: a meta tensor, as eager gives; nothing to compute
    if not tensors:
        first = meta_out if isinstance(meta_out, torch.Tensor) else tree_flatten(meta_out)[0][0]
        kwargs = _pinned_defaults(op, kwargs, first.dtype, device)
        bound = _bind(op, args, kwargs)
        flat, layout = flatten(args, kwargs)
    return _add_node(op, flat, layout, bound, meta_out, device, forced_out)


_QUANTIZING = ("quantize_per_", "_make_per_", "_empty_affine_quantized", "_empty_per_channel")


def _refuse_kinds(op: _Op, out: Any) -> None:
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


def _for_meta_kernel(op: _Op, kwargs: dict[str, Any], *, to_meta: bool) -> None:
    """Make a call's kwargs (a copy) fit for its meta kernel: the device meta when ``to_meta``
    (an explicit device, or a factory), no pinned memory, no generator (shapes never depend on
    it; some meta kernels refuse it)."""
    if op.has_device and to_meta:
        kwargs["device"] = META
    kwargs.pop("pin_memory", None)
    if kwargs.get("generator") is not None:
        kwargs["generator"] = None


def _pinned_defaults(
    op: _Op, kwargs: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """A factory's kwargs with its defaults pinned (dtype, device; no pin_memory), so replay does
    not depend on global settings then."""
    kwargs = dict(kwargs)
    if op.has_dtype and kwargs.get("dtype") is None:
        kwargs["dtype"] = dtype
    if op.has_device:
        kwargs["device"] = device
    kwargs.pop("pin_memory", None)
    return kwargs


# [Note: fast paths]
# Model construction is mostly three kinds of op: factories (``empty``, ``ones``, ``randn``),
# views of one lazy tensor (``detach`` for every ``nn.Parameter``) and in-place fills of one lazy
# tensor (``uniform_``, ``normal_``, ``fill_``, ``zero_``). For each kind, the schema alone tells
# which steps of ``record_op`` and ``_record`` can matter: a fast path runs just those, in the same
# order, with the same effects (the same node, flat arguments, spec, writes and random step). It
# answers ``_SLOW`` for what it does not cover (a real tensor, no meta kernel), and the general
# path then takes the op from the start: nothing was recorded yet. Model code that builds on the
# meta device inside the context (transformers' ``from_pretrained`` does) gets plain meta tensors,
# as eager does, by the same fast paths: nothing to record and, on meta, nothing drawn.

_SLOW: Any = object()
_FastPath = Callable[["_Op", tuple[Any, ...], dict[str, Any], bool], Any]


def _fast_path(op: _Op, schema: torch._C.FunctionSchema) -> _FastPath | None:
    """The fast path for ``op``'s kind, from its schema, or None."""
    if op.special is not None or op.forward or op.metadata_query or op.shape_only:
        return None
    if op.metadata_inplace or op.returns_values or len(schema.returns) != 1:
        return None
    if str(schema.returns[0].type) != "Tensor":
        return None
    arguments = schema.arguments
    first_is_tensor = bool(arguments) and str(arguments[0].type) == "Tensor"
    rest = arguments[1:] if first_is_tensor else arguments
    if any("Tensor" in str(a.type) for a in rest):
        return None  # another tensor argument: the general path
    if {"device", "pin_memory"} & set(op.names[1:] if first_is_tensor else ()):
        return None
    if not first_is_tensor:
        return _record_factory if op.factory_schema and not op.mutated else None
    if op.is_view and op.view_source == op.names[0] and "generator" not in op.names:
        return _record_view
    if (
        op.mutated == {op.names[0]}
        and op.alias_args[0] == op.names[0]
        and op.returns[0] is not None
        and op.returns[0].is_write
        and not any("List" in str(a.type) for a in arguments)
    ):
        return _record_fill
    return None


# Plain tensors on the meta device, as model code makes them under ``torch.device("meta")``.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _is_plain_meta(x: Any) -> bool:
    return type(x) in _PLAIN and x.device.type == "meta"


def _record_view(op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool) -> Any:
    """A view of one lazy tensor (``detach``, ``t``, ``view``): a lazy tensor over its storage."""
    x = args[0] if args else None
    if not isinstance(x, LazyTensor):
        # A plain tensor (meta, as model code makes under torch.device("meta"), or real): its
        # view, as eager gives. Other subclasses take the general path.
        return op.call(*args, **kwargs) if type(x) in _PLAIN else _SLOW
    if op.same_geometry:
        return new_lazy(x._meta, x._lazy_storage)
    try:
        meta_out = op.call(x._meta, *args[1:], **kwargs)
    except NotImplementedError:
        return _SLOW
    return new_lazy(meta_out, x._lazy_storage)


def _record_fill(op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool) -> Any:
    """An in-place op on one lazy tensor, with no other tensor argument (``uniform_``,
    ``fill_``, ``zero_``): one node that writes its storage."""
    x = args[0] if args else None
    if not isinstance(x, LazyTensor):
        if _is_plain_meta(x) and kwargs.get("generator") is None:
            # A fill of a meta tensor: eager's result, and nothing is drawn on meta.
            return op.meta(_bind(op, args, kwargs) if op.meta_shortcut else None, args, kwargs)
        return _SLOW
    func = op.func
    # Bound arguments are read only by meta shortcuts and random ops (zero_, fill_ need none).
    bound = _bind(op, args, kwargs) if op.meta_shortcut or op.is_random else None
    if op.arg_check is not None and bound is not None and op.arg_check(bound):
        _eager_arg_check(op, x, args, kwargs)
    meta_args = (x._meta, *args[1:])
    meta_kwargs = kwargs
    if kwargs.get("generator") is not None:
        meta_kwargs = {**kwargs, "generator": None}
    try:
        meta_out = op.meta(bound, meta_args, meta_kwargs)
    except NotImplementedError:
        return _SLOW
    layout = leaves_layout(args, kwargs)  # no lists in the schema (see _fast_path)
    if layout is None:
        return _SLOW
    s = x._lazy_storage
    ref = TensorRef(s, x._meta, s.version, weak=True)
    node = Node(func, [ref, *args[1:], *kwargs.values()], layout.spec)
    blind = op.write_only or op.names[0] == "out"
    if not blind:
        node.reads = [ref]
    s.add_write(node, ref=ref, keeps_base=not (blind and _covers_storage(x._meta, s)))
    if op.is_random:
        assert bound is not None
        device = x.device
        _attach_rng(node, bound, device, _draws.count(func, meta_out, bound, device))
    return x


def _record_factory(
    op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    """A factory (``empty``, ``ones``, ``randn``) inside the context: one node, one new storage."""
    if not in_context or kwargs.get("pin_memory"):
        return _SLOW  # pinned: the general path (on meta, eager's error)
    if args and type(args[0]) is list and 0 in args[0] and _real_empty_wanted():
        return op.call(*args, **kwargs)  # no elements, and real (see there)
    device_arg = kwargs.get("device")
    if op.device_kw_only:
        device = normalize_device(device_arg)  # what _output_device finds, without binding
    else:
        device = _output_device(_bind(op, args, kwargs), [])
    key = _factory_key(op, args, kwargs, device)
    call = _FACTORY_CALLS.get(key) if key is not None else None
    if call is not None:
        meta_out = torch.empty_strided(call.size, call.stride, dtype=call.dtype, device=META)
    else:
        made = _factory_call(op, args, kwargs, device, key)
        if made is None:
            return _SLOW
        call, meta_out = made
    if device.type == "meta":
        return meta_out
    node = Node(op.func, list(call.flat), call.spec)
    storage = LazyStorage(call.nbytes, device)
    ref = TensorRef(storage, meta_out, 1, weak=True)
    storage.add_write(node, ref=ref, output_index=0, keeps_base=False)
    out = new_lazy(meta_out, storage)
    if op.is_random:
        bound = _bind(op, args, call.kwargs)
        _attach_rng(node, bound, device, _draws.count(op.func, meta_out, bound, device))
    return out


_REAL_EMPTY_CALLERS = {
    getattr(torch.UntypedStorage.__getitem__, "__code__", None),
    torch.nn.parameter.UninitializedParameter.__new__.__code__,
    torch.nn.parameter.UninitializedBuffer.__new__.__code__,
}


def _real_empty_wanted() -> bool:
    """Whether this empty factory runs where a real empty tensor is eager's behaviour and a lazy
    one cannot serve:

    - ``UntypedStorage.__getitem__`` (``storage[i]``): torch makes a temporary empty tensor, sets
      it over the (always real) storage and reads one element, all in C++: the tensor never
      reaches Python, so it can be real, and the read costs four real ops instead of four
      recorded ones. safetensors reads ``storage[0]`` of every tensor it maps, so this is a
      quarter of the ops of a lazy ``from_pretrained``.
    - ``UninitializedParameter`` / ``UninitializedBuffer`` (``nn.LazyLinear``): they wrap
      ``torch.empty(0)`` in their own subclass, which a lazy tensor cannot become; they hold no
      values and get their shape and init at the first forward, after materialize, as in eager.
    """
    frame = sys._getframe(1)
    for _ in range(4):  # record_op, the mode's __torch_dispatch__, then the caller
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return False
        if frame.f_code in _REAL_EMPTY_CALLERS:
            return True
    return False


# [Note: factory calls]
# A factory's meta output depends only on its arguments (with the device already meta, the
# generator dropped) and on the default dtype: no tensor goes in. So does what recording keeps of
# the call (its arguments with dtype and device pinned, flattened). Models make the same few
# shapes over and over, so the first call of each kind is remembered (size, strides, dtype and
# storage bytes of the result; the recorded arguments) and later ones only make the meta tensor
# with ``empty_strided``: 1 us against 3 us for ``empty``'s kernel and 5-20 us for
# decompositions (``ones``, ``full``, ``randn``). Only plain arguments make a key (numbers tagged
# with their type, since ``full((2,), 1)`` and ``full((2,), 1.0)`` differ in dtype; lists of
# ints; dtypes, devices, layouts, memory formats, strings, None), only results ``empty_strided``
# rebuilds exactly are remembered, and failures never are: the kernel raises its error at every
# such call.


class _FactoryCall:
    """What recording keeps of one kind of factory call: see [Note: factory calls]."""

    __slots__ = ("dtype", "flat", "kwargs", "nbytes", "size", "spec", "stride")

    def __init__(
        self, meta: torch.Tensor, kwargs: dict[str, Any], flat: list[Any], layout: ArgLayout
    ) -> None:
        self.size, self.stride, self.dtype = meta.shape, meta.stride(), meta.dtype
        self.nbytes = meta.untyped_storage().nbytes()
        self.kwargs = kwargs  # with dtype and device pinned
        self.flat = flat  # of (args, kwargs), as recorded
        self.spec = layout.spec


_FACTORY_CALLS: dict[tuple[Any, ...], _FactoryCall] = {}
_FACTORY_CALLS_SIZE = 4096
_KEY_TYPES = frozenset(
    {int, float, bool, complex, str, type(None), torch.dtype, torch.device, torch.layout}
    | {torch.memory_format}
)


def _factory_key(
    op: _Op, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device
) -> tuple[Any, ...] | None:
    key: list[Any] = [id(op), torch.get_default_dtype(), device, tuple(kwargs)]
    for value in (*args, *kwargs.values()):
        kind = type(value)
        if kind is list:
            value = tuple(value)
            if tuple(map(type, value)) != (int,) * len(value):
                return None  # SymInts, or anything else that is not a plain int
        elif kind not in _KEY_TYPES:
            return None
        key += (kind, value)  # each value tagged with its type, flat: no tuple per value
    return tuple(key)


def _factory_call(
    op: _Op,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    device: torch.device,
    key: tuple[Any, ...] | None,
) -> tuple[_FactoryCall, torch.Tensor] | None:
    """Run the factory's meta kernel: what recording keeps of the call (remembered under
    ``key`` when its result is plain), and the result; None if it has no meta kernel."""
    meta_kwargs = dict(kwargs)
    _for_meta_kernel(op, meta_kwargs, to_meta=True)
    try:
        meta = op.meta(_bind(op, args, kwargs), args, meta_kwargs)
    except NotImplementedError:
        return None
    pinned = _pinned_defaults(op, kwargs, meta.dtype, device)
    call = _FactoryCall(meta, pinned, *flatten(args, pinned))
    if key is not None and _rebuilds_exactly(meta, call.nbytes):
        if len(_FACTORY_CALLS) >= _FACTORY_CALLS_SIZE:
            _FACTORY_CALLS.clear()  # shapes of earlier models: start again
        _FACTORY_CALLS[key] = call
    return call, meta


def _rebuilds_exactly(meta: torch.Tensor, nbytes: int) -> bool:
    """Whether ``empty_strided(size, stride, dtype)`` on meta gives ``meta`` back exactly."""
    if (
        type(meta) is not torch.Tensor
        or meta.layout != torch.strided
        or meta.storage_offset() != 0
        or meta.requires_grad
        or meta.is_conj()
        or meta.is_neg()
        or any(name is not None for name in getattr(meta, "names", ()))  # named tensors
    ):
        return False
    again = torch.empty_strided(meta.shape, meta.stride(), dtype=meta.dtype, device=META)
    return again.untyped_storage().nbytes() == nbytes


# [Note: meta shortcuts]
# Some meta kernels are Python decompositions that cost far more than recording the op
# (``normal_``: ~180 us, ``randn``: ~20 us, ``uniform_``: ~14 us, against ~1 us for a C++ meta
# kernel). Where the result is plain (the tensor itself for an in-place fill, a contiguous empty
# tensor for a random factory) and the arguments are ones the kernel accepts, the shortcut gives
# that result directly; anything else (a dtype or value the kernel might refuse) runs the kernel,
# which raises eager's error. ``test_record`` checks each shortcut against its kernel.


def _plain_normal_(bound: dict[str, Any], meta_args: Any, meta_kwargs: Any) -> Any:
    """``t.normal_(mean, std)`` that eager would accept: the result is ``t``."""
    std = bound.get("std", 1.0)
    ok = bound["self"].dtype.is_floating_point and isinstance(std, (int, float)) and std >= 0
    return meta_args[0] if ok else None


def _plain_uniform_(bound: dict[str, Any], meta_args: Any, meta_kwargs: Any) -> Any:
    """``t.uniform_(low, high)`` on a dense floating tensor: the result is ``t``."""
    low, high = bound.get("from", 0.0), bound.get("to", 1.0)
    self = meta_args[0]
    ok = (
        self.dtype.is_floating_point
        and type(low) in (int, float)
        and type(high) in (int, float)
        and _is_dense(self)
    )
    return self if ok else None


def _plain_randn(bound: dict[str, Any], meta_args: Any, meta_kwargs: Any) -> Any:
    """``randn(size)`` of a floating dtype, strided: a contiguous empty tensor of that size."""
    size = bound["size"]
    dtype = meta_kwargs.get("dtype") or torch.get_default_dtype()
    ok = (
        dtype.is_floating_point
        and meta_kwargs.get("layout") in (None, torch.strided)
        and all(type(n) is int and n >= 0 for n in size)
    )
    return torch.empty(size, dtype=dtype, device=META) if ok else None


# [Note: argument checks]
# Some ops check their scalar arguments in the CPU kernel only, not in the meta kernel: eager
# raises at the op, recording would not, and materialize would fail far from the model line.
# Each check here is a cheap test of the bound arguments that says when eager may refuse them;
# then the real op runs on an empty tensor of the same dtype, which raises eager's own error
# (and draws nothing).
_ARG_CHECKS: dict[Any, Callable[[dict[str, Any]], bool]] = {
    aten.uniform_.default: lambda b: _greater(b.get("from", 0.0), b.get("to", 1.0)),
    aten.bernoulli_.float: lambda b: not 0 <= b.get("p", 0.5) <= 1,
    getattr(aten.random_, "from"): lambda b: (
        b.get("to") is not None and not _greater(b["to"], b["from"])
    ),
    aten.random_.to: lambda b: not _greater(b["to"], 0),
}


def _greater(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:  # (symbolic or odd scalars: let the kernel decide)
        return True


def _eager_arg_check(op: _Op, x: LazyTensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
    with torch._C._DisableTorchDispatch():
        op.func(torch.empty(0, dtype=x.dtype), *args[1:], **kwargs)


_META_SHORTCUTS: dict[Any, _MetaShortcut] = {
    aten.normal_.default: _plain_normal_,
    aten.uniform_.default: _plain_uniform_,
    aten.randn.default: _plain_randn,
    aten.randn.generator: _plain_randn,
}


def _map_flat(fn: Callable[[Any], Any], tree: Any) -> tuple[list[Any], Any]:
    flat, spec = tree_flatten(tree)
    return [fn(x) for x in flat], spec


def _meta_of_output(x: Any) -> Any:
    return meta_like(x) if isinstance(x, torch.Tensor) else x


def _wrap_views(op: _Op, bound: dict[str, Any], meta_out: Any) -> Any:
    """Outputs of view ops share their input's lazy storage; nothing is recorded."""
    storage = bound[op.view_source]._lazy_storage
    if isinstance(meta_out, torch.Tensor):
        return new_lazy(meta_out, storage)

    def wrap(m: Any) -> Any:
        return new_lazy(m, storage) if isinstance(m, torch.Tensor) else m

    return tree_unflatten(*_map_flat(wrap, meta_out))


def _add_node(
    op: _Op,
    flat: list[Any],
    layout: ArgLayout,
    bound: dict[str, Any],
    meta_out: Any,
    device: torch.device,
    forced_out: Any,
) -> Any:
    func = op.func
    mutated_names = op.mutated

    # Which argument each flat position belongs to: writes are per argument, not per tensor
    # (``x.copy_(x)`` writes its first argument and reads its second).
    written: dict[int, tuple[LazyTensor, bool]] = {}  # flat position -> (tensor, write-only)
    if mutated_names:
        for i, (x, name) in enumerate(zip(flat, _flat_arg_names(op, flat, layout))):
            if isinstance(x, LazyTensor) and name in mutated_names:
                written[i] = (x, op.write_only or name == "out")
    written_storages = {id(t._lazy_storage) for t, _ in written.values()}

    node = Node(func, [], layout.spec)
    if (default_dtype := torch.get_default_dtype()) is not torch.float32:
        # Type promotion (``int_tensor / 3``) reads it; replay runs each op under the one it was
        # recorded under, not the caller's. Ops of the fast paths never promote.
        node.default_dtype = default_dtype
    if op.fails_on_values:
        node.where = user_frame()
    shape_only = op.shape_only
    reads: list[TensorRef] = []
    for i, x in enumerate(flat):
        if not isinstance(x, LazyTensor):
            node.flat_args.append(_held(x) if not shape_only else x)
            continue
        s = x._lazy_storage
        weak = shape_only or id(s) in written_storages
        ref = TensorRef(s, x._meta, s.version, weak=weak, shape_only=shape_only)
        entry = written.get(i)
        if not shape_only and (entry is None or not entry[1]):
            reads.append(ref)
        node.flat_args.append(ref)
    if reads:
        node.reads = reads

    # In-place writes: each makes a new version of the storage written.
    for i, (t, blind) in written.items():
        s = t._lazy_storage
        keeps_base = not (blind and _covers_storage(t._meta, s))
        s.add_write(node, ref=node.flat_args[i], keeps_base=keeps_base)

    # Outputs: aliases of mutated arguments return the argument itself; fresh ones get storages.
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
            source = bound.get(arg_name) if arg_name is not None else None
            if isinstance(source, (list, tuple)):
                source = source[index] if index < len(source) else None
            if isinstance(source, LazyTensor):
                wrapped.append(source if alias.is_write else new_lazy(m, source._lazy_storage))
                continue
        storage = LazyStorage(m.untyped_storage().nbytes(), device)
        ref = TensorRef(storage, m, 1, weak=True)
        storage.add_write(node, ref=ref, output_index=index, keeps_base=False)
        if forced_flat is not None:
            _keep_forced(storage, forced_flat[index], str(func))
        wrapped.append(new_lazy(m, storage))

    if op.is_random:
        target = next(m for m in out_flat if isinstance(m, torch.Tensor))
        _attach_rng(node, bound, device, _draws.count(func, target, bound, device))
    if forced_out is not None:
        # The op already ran for real on early values: their caches now include this write.
        for t, _ in written.values():
            s = t._lazy_storage
            if s.cache is not None:
                s.cache_version = s.version
    return wrapped[0] if out_spec is None else tree_unflatten(wrapped, out_spec)


def _flat_arg_names(op: _Op, flat: list[Any], layout: ArgLayout) -> list[str]:
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


def _attach_rng(node: Node, bound: dict[str, Any], device: torch.device, draws: int | None) -> None:
    fast = session.rng is RngMode.FAST
    node.rng = _rng.record_step(
        node, bound.get("generator"), device, draws, fast=fast, run=run_for_draws
    )


def _keep_forced(storage: LazyStorage, value: torch.Tensor, op: str) -> None:
    storage.cache = value.untyped_storage()
    storage.cache_version = 1
    storage.early += (EarlyRecord(op, user_frame(), value.numel(), storage.nbytes),)


def as_lazy(value: Any) -> LazyTensor:
    """``value`` as a lazy tensor: real tensors become constants of the graph."""
    if isinstance(value, LazyTensor):
        return value
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return _constant(value)


def _held(x: Any) -> Any:
    """A real tensor argument, held so that replay reads it as it was (see ``Constant``)."""
    if isinstance(x, torch.Tensor) and (kind := x.device.type) != "meta":
        # Checkpoint tensors are often bytes mapped from the file (safetensors): note which.
        file = mapped_file(x.untyped_storage()) if kind == "cpu" else None
        return Constant(x, user_frame(), file)
    return x


def _constant(value: torch.Tensor) -> LazyTensor:
    meta = meta_like(value)
    return new_lazy(meta, source(_held(value), meta, value.device, "constant"))


# --- ops that need values ----------------------------------------------------------------------


def _run_forced(
    func: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    in_context: bool,
    reason: str | None = None,
) -> Any:
    """Run ``func`` for real on the exact values of its lazy inputs (early materialization)."""
    reason = reason or str(func)

    def real(x: Any) -> Any:
        return evaluate(x, reason) if isinstance(x, LazyTensor) else x

    flat, spec = tree_flatten((args, kwargs))
    real_args, real_kwargs = tree_unflatten([real(x) for x in flat], spec)
    return func(*real_args, **real_kwargs)


def _lift_fresh(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool) -> Any:
    # ``torch.tensor(data)``, ``as_tensor`` and ``from_numpy`` pass their fresh tensor here.
    # On a plain tensor ``lift_fresh`` returns that tensor itself (``lift_fresh_copy`` copies).
    plain = func is aten.lift_fresh.default and type(args[0]) in _PLAIN
    value = args[0] if plain else func(*args, **kwargs)
    if not in_context or isinstance(value, LazyTensor) or value.device.type == "meta":
        return value
    return _constant(value)


def _local_scalar_dense(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    x = args[0]
    if not isinstance(x, LazyTensor):
        return func(*args, **kwargs)
    value = evaluate(x, "Tensor.item() (or bool, int, float)")
    with torch._C._DisableTorchDispatch():
        return func(value)


def _set_source(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool) -> Any:
    # ``dest.set_(src)`` (used by torch.nn.utils.parametrize) makes ``dest`` a view of ``src``'s
    # storage, like ``dest.data = src``.
    dest, source = args[0], kwargs.get("source", args[1] if len(args) > 1 else None)
    if isinstance(dest, LazyTensor) and isinstance(source, torch.UntypedStorage):
        # ``torch.asarray(storage)`` and safetensors' readers wrap existing (often memory-mapped)
        # bytes: the tensor stays lazy as a constant over them, read at materialization.
        with torch._C._DisableTorchDispatch():
            real = torch.empty(0, dtype=dest.dtype, device=source.device)
            func(real, *args[1:], **kwargs)
        set_data(dest, _constant(real))
        return dest
    if func is not aten.set_.source_Tensor or not isinstance(dest, LazyTensor):
        if isinstance(dest, LazyTensor):
            raise UnsupportedOpError(
                f"{func} on a lazy {describe(dest)}: dormant records set_ only from a tensor "
                "(dest.set_(src)); assign .data instead",
                op=str(func),
            )
        return func(*args, **kwargs)
    set_data(dest, as_lazy(source))
    return dest


_DATA: Any = torch._C.TensorBase.data


def set_data(target: LazyTensor, value: LazyTensor) -> None:
    """Make ``target`` a view of ``value``'s lazy storage (``target.data = value``)."""
    # Without Python dispatch: the one op this sends (``_has_compatible_shallow_copy_type``, a
    # check of both tensors' dispatch keys) would otherwise be recorded as a metadata query.
    with torch._C.DisableTorchFunctionSubclass(), torch._C._DisableTorchDispatch():
        _DATA.__set__(target, value)  # updates the reported shape and dtype at once
    target._meta = value._meta
    target._lazy_storage = value._lazy_storage


_SPECIAL: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any], bool], Any]] = {
    aten.set_: _set_source,
    aten.lift_fresh: _lift_fresh,
    aten.lift_fresh_copy: _lift_fresh,
    aten._local_scalar_dense: _local_scalar_dense,
}


# --- library functions recorded whole --------------------------------------------------------

# [Note: deferred library init]
# Some torch.nn.init functions read values while they run (``trunc_normal_`` is a rejection loop
# that calls ``.any()``), or run ops that cannot be recorded (``orthogonal_`` calls ``q.t_()``),
# or run one op per channel (``dirac_``). Each of them first asks ``tensor.is_meta`` and returns
# at once when it is True. dormant answers True to that one question, from those functions only,
# and records the whole call as one node; replay calls the real function on the real tensor, in
# recorded order, so values and random draws match eager. Recognising the caller by its code
# object works however the function was imported (transformers keeps its own references).

_DEFERRED: dict[Any, tuple[Callable[..., Any], str, bool]] = {
    torch.nn.init._no_grad_trunc_normal_.__code__: (
        torch.nn.init._no_grad_trunc_normal_,
        "torch.nn.init.trunc_normal_",
        True,
    ),
    torch.nn.init.orthogonal_.__code__: (
        torch.nn.init.orthogonal_,
        "torch.nn.init.orthogonal_",
        True,
    ),
    torch.nn.init.dirac_.__code__: (torch.nn.init.dirac_, "torch.nn.init.dirac_", False),
}


_LAZY_TENSOR_FILE = sys.modules[LazyTensor.__module__].__file__


def defer_library_init(tensor: LazyTensor) -> bool:
    """Answer ``tensor.is_meta``: True only to a data-dependent init function, which is recorded."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == _LAZY_TENSOR_FILE:
        frame = frame.f_back  # type: ignore[assignment]
    entry = _DEFERRED.get(frame.f_code) if frame is not None else None
    if entry is None:
        # DTensor scattering or broadcasting a lazy tensor: see [Note: distributing a lazy tensor]
        return frame is not None and replace_collective(frame)
    fn, name, random = entry
    code = frame.f_code
    params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    call_kwargs = {p: frame.f_locals[p] for p in params}
    _record_deferred(fn, name, random, params[0], call_kwargs)
    return True


def _record_deferred(
    fn: Callable[..., Any], name: str, random: bool, tensor_arg: str, call_kwargs: dict[str, Any]
) -> None:
    t = call_kwargs[tensor_arg]
    flat, spec = tree_flatten(((), call_kwargs))
    s = t._lazy_storage
    node = Node(DeferredCall(fn, name, tensor_arg), [], spec, name)
    ref = TensorRef(s, t._meta, s.version, weak=True)
    node.flat_args = [ref if x is t else _held(x) for x in flat]
    node.label = f"{name}({tuple(t.shape)})"
    s.add_write(node, ref=ref, keeps_base=not _covers_storage(t._meta, s))
    if random:
        draws = _draws.count_library_call(name, t._meta, call_kwargs, t.device)
        _attach_rng(node, {"generator": call_kwargs.get("generator")}, t.device, draws)


# --- early materialization ----------------------------------------------------------------------


def evaluate(t: LazyTensor, reason: str) -> torch.Tensor:
    """The exact value of a lazy tensor, computed now and kept (early materialization)."""
    if not recording_active():
        raise LazyTensorError(
            f"{reason} needs the values of a lazy {describe(t)} outside LazyInitContext: call "
            "dormant.materialize(module) first (or run this code inside the context)",
            tensor=describe(t),
            op=reason,
        )
    s = t._lazy_storage
    if (value := constant_value(s)) is not None:
        return view_of(value, t._meta)  # real bytes: nothing computed, nothing to report
    if s.cache is None or s.cache_version != s.version:
        buf = compute([s])[id(s)]
        s.cache, s.cache_version = buf, s.version
        if not s.early:
            s.early = (EarlyRecord(reason, user_frame(), t.numel(), s.nbytes),)
    assert s.cache is not None
    return view_of(s.cache, t._meta)


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
