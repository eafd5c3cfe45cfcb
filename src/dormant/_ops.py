"""Op facts: what recording needs to know about one ``OpOverload``, read from its schema once,
and the call record that the general recording path makes once per op.

What an op does to its arguments (view, in-place write, fresh output) comes from its schema; the
few ops that need more are in the small tables here. :class:`OpKind` says which recording path
an op takes (see [Note: fast paths] in ``_fast``).
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import torch

from ._flat import flatten
from ._lazy_tensor import LazyTensor
from ._session import normalize_device
from ._shortcuts import ARG_CHECKS, META_SHORTCUTS

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
    aten.set_,  # except set_(Tensor source): see ``_special``
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

# Ops with a handler of their own (``_special``): they need values, or make a lazy tensor of
# something that is not an op's output.
SPECIAL_OPS = {aten.set_, aten.lift_fresh, aten.lift_fresh_copy, aten._local_scalar_dense}

# (their meta kernels give float tensors: known by name)
_QUANTIZING = ("quantize_per_", "_make_per_", "_empty_affine_quantized", "_empty_per_channel")

# Plain tensors, as model code makes them (on the meta device under ``torch.device("meta")``).
PLAIN = (torch.Tensor, torch.nn.Parameter)


class OpKind(enum.Enum):
    """Which recording path an op takes, from its schema (see [Note: fast paths] in ``_fast``)."""

    FACTORY = "factory"  # no tensor argument, one new tensor (``empty``, ``ones``, ``randn``)
    VIEW = "view"  # a view of its one tensor argument (``detach``, ``t``, ``view``)
    FILL = "fill"  # an in-place op on its one tensor argument (``uniform_``, ``fill_``)
    SPECIAL = "special"  # an op of ``SPECIAL_OPS``
    GENERAL = "general"  # anything else: ``_record``'s general path


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


class OpFacts:
    """What recording needs to know about one ``OpOverload``, read from its schema once."""

    __slots__ = (
        "alias_args",
        "arg_check",
        "call",
        "device_kw_only",
        "factory_schema",
        "fails_on_values",
        "forward",
        "func",
        "has_device",
        "has_dtype",
        "is_like",
        "is_random",
        "is_view",
        "kind",
        "meta_shortcut",
        "metadata_inplace",
        "metadata_query",
        "mutated",
        "names",
        "path",
        "quantizes",
        "returns",
        "returns_values",
        "same_geometry",
        "shape_only",
        "view_source",
        "write_only",
    )

    def __init__(self, func: torch._ops.OpOverload) -> None:
        schema = func._schema
        self.func = func
        # What ``func(...)`` calls: OpOverload.__call__ is a Python frame that only calls ``_op``.
        self.call: Any = func._op if type(func) is torch._ops.OpOverload else func
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
        self._tables(func)
        self.has_device = "device" in self.names
        self.device_kw_only = all(a.kwarg_only for a in schema.arguments if a.name == "device")
        self.has_dtype = "dtype" in self.names
        self.meta_shortcut = META_SHORTCUTS.get(func)
        self.arg_check = ARG_CHECKS.get(func)
        self.kind = _kind(self, schema)
        # The handler of the op's path, or None for the general path (set by ``_record``).
        self.path: Any = None

    def _tables(self, func: torch._ops.OpOverload) -> None:
        """The facts that come from the tables above, by the op's packet or its name."""
        packet = func.overloadpacket
        self.is_random = _is_random(packet)
        self.write_only = packet in _WRITE_ONLY
        self.shape_only = packet in _SHAPE_ONLY
        self.metadata_inplace = packet in _METADATA_INPLACE
        self.metadata_query = packet in _METADATA_QUERIES
        self.forward = packet in _FORWARD_OPS
        self.fails_on_values = packet.__name__ in _FAILS_ON_VALUES
        self.quantizes = packet.__name__.startswith(_QUANTIZING)
        self.is_like = packet.__name__.endswith("_like")
        # A view with its input's geometry (``nn.Parameter`` detaches every tensor it wraps):
        # the lazy result can share the input's meta tensor instead of asking the kernel.
        self.same_geometry = packet in (aten.detach, aten.alias)

    def meta(self, bound: Any, meta_args: Any, meta_kwargs: dict[str, Any]) -> Any:
        """The op's result on meta arguments: its shortcut's, if it has one that answers, else
        the meta kernel's (which may raise NotImplementedError)."""
        if self.meta_shortcut is not None:
            out = self.meta_shortcut(bound, meta_args, meta_kwargs)
            if out is not None:
                return out
        return self.call(*meta_args, **meta_kwargs)


def _kind(op: OpFacts, schema: torch._C.FunctionSchema) -> OpKind:
    """The op's recording path, from its schema: see [Note: fast paths] in ``_fast``."""
    if op.func.overloadpacket in SPECIAL_OPS:
        return OpKind.SPECIAL
    if op.forward or op.metadata_query or op.shape_only or op.metadata_inplace:
        return OpKind.GENERAL
    if op.returns_values or len(schema.returns) != 1 or str(schema.returns[0].type) != "Tensor":
        return OpKind.GENERAL
    arguments = schema.arguments
    first_is_tensor = bool(arguments) and str(arguments[0].type) == "Tensor"
    rest = arguments[1:] if first_is_tensor else arguments
    if any("Tensor" in str(a.type) for a in rest):
        return OpKind.GENERAL  # another tensor argument
    if {"device", "pin_memory"} & set(op.names[1:] if first_is_tensor else ()):
        return OpKind.GENERAL
    if not first_is_tensor:
        return OpKind.FACTORY if op.factory_schema and not op.mutated else OpKind.GENERAL
    if op.is_view and op.view_source == op.names[0] and "generator" not in op.names:
        return OpKind.VIEW
    if (
        op.mutated == {op.names[0]}
        and op.alias_args[0] == op.names[0]
        and op.returns[0] is not None
        and op.returns[0].is_write
        and not any("List" in str(a.type) for a in arguments)
    ):
        return OpKind.FILL
    return OpKind.GENERAL


def bind(op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (as far as the schema names them)."""
    bound = dict(zip(op.names, args))
    bound.update(kwargs)
    return bound


_CPU = torch.device("cpu")


def output_device(bound: dict[str, Any], tensors: list[torch.Tensor]) -> torch.device:
    """Where the op's outputs live: its ``device`` argument, else its tensors' device."""
    device = bound.get("device")
    if device is not None:
        return normalize_device(device)
    for t in tensors:
        if t.device.type != "cpu" or t.dim() > 0:
            return t.device
    return tensors[0].device if tensors else _CPU


class Call:
    """One call of an op, as the general path records it: made once per op, each form of the
    arguments derived once (flat leaves and their layout now, names when first asked)."""

    __slots__ = ("_bound", "args", "flat", "kwargs", "layout", "lazy", "op", "tensors")

    def __init__(self, op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.op = op
        self.args = args
        self.kwargs = kwargs
        self.flat, self.layout = flatten(args, kwargs)
        self.tensors = [x for x in self.flat if isinstance(x, torch.Tensor)]
        self.lazy = [x for x in self.tensors if isinstance(x, LazyTensor)]
        self._bound: dict[str, Any] | None = None

    @property
    def bound(self) -> dict[str, Any]:
        if self._bound is None:
            self._bound = bind(self.op, self.args, self.kwargs)
        return self._bound

    def device(self) -> torch.device:
        return output_device(self.bound, self.tensors)

    def with_kwargs(self, kwargs: dict[str, Any]) -> Call:
        """The same call with other keyword arguments (a factory's defaults pinned)."""
        return Call(self.op, self.args, kwargs)
