"""Factory calls: what a factory's meta result and recorded arguments are, remembered per kind
of call (see [Note: factory calls]), and how a factory's call is fitted for its meta kernel and
for replay.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ._flat import ArgLayout, flatten
from ._graph import META
from ._ops import OpFacts, bind

# [Note: factory calls]
# A factory's meta output depends only on its arguments (with the device already meta, the
# generator dropped) and on the default dtype: no tensor goes in. So does what recording keeps of
# the call (its arguments with dtype and device pinned, flattened). Models make the same few
# shapes over and over, so the first call of each kind is remembered (size, strides, dtype and
# storage bytes of the result; the recorded arguments) and later ones only make the meta tensor
# with ``empty_strided``, which costs far less than ``empty``'s kernel and than the
# decompositions of ``ones``, ``full`` or ``randn``. Only plain arguments make a key (numbers
# tagged with their type, since ``full((2,), 1)`` and ``full((2,), 1.0)`` differ in dtype; lists
# of ints; dtypes, devices, layouts, memory formats, strings, None), only results
# ``empty_strided`` rebuilds exactly are remembered, and failures never are: the kernel raises
# its error at every such call.


class FactoryCall:
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


# What is remembered of each kind of call, by ``factory_key``.
FACTORY_CALLS: dict[tuple[Any, ...], FactoryCall] = {}
FACTORY_CALLS_SIZE = 4096
_KEY_TYPES = frozenset(
    {int, float, bool, complex, str, type(None), torch.dtype, torch.device, torch.layout}
    | {torch.memory_format}
)


def factory_key(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device
) -> tuple[Any, ...] | None:
    """The key of a call of plain arguments (see [Note: factory calls]), or None."""
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


def factory_call(
    op: OpFacts,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    device: torch.device,
    key: tuple[Any, ...] | None,
) -> tuple[FactoryCall, torch.Tensor] | None:
    """Run the factory's meta kernel: what recording keeps of the call (remembered under
    ``key`` when its result is plain), and the result; None if it has no meta kernel."""
    meta_kwargs = dict(kwargs)
    for_meta_kernel(op, meta_kwargs, to_meta=True)
    try:
        meta = op.meta(bind(op, args, kwargs), args, meta_kwargs)
    except NotImplementedError:
        return None
    pinned = pinned_defaults(op, kwargs, meta.dtype, device)
    call = FactoryCall(meta, pinned, *flatten(args, pinned))
    if key is not None and _rebuilds_exactly(meta, call.nbytes):
        if len(FACTORY_CALLS) >= FACTORY_CALLS_SIZE:
            FACTORY_CALLS.clear()  # shapes of earlier models: start again
        FACTORY_CALLS[key] = call
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


def for_meta_kernel(op: OpFacts, kwargs: dict[str, Any], *, to_meta: bool) -> None:
    """Make a call's kwargs (a copy) fit for its meta kernel: the device meta when ``to_meta``
    (an explicit device, or a factory), no pinned memory, no generator (shapes never depend on
    it; some meta kernels refuse it)."""
    if op.has_device and to_meta:
        kwargs["device"] = META
    kwargs.pop("pin_memory", None)
    if kwargs.get("generator") is not None:
        kwargs["generator"] = None


def pinned_defaults(
    op: OpFacts, kwargs: dict[str, Any], dtype: torch.dtype, device: torch.device
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


_REAL_EMPTY_CALLERS = {
    getattr(torch.UntypedStorage.__getitem__, "__code__", None),
    torch.nn.parameter.UninitializedParameter.__new__.__code__,
    torch.nn.parameter.UninitializedBuffer.__new__.__code__,
}


def real_empty_wanted() -> bool:
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
