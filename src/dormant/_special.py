"""Ops with a handler of their own (``_ops.SPECIAL_OPS``), and ops that need values now.

Values are never faked: an op that must see data (``.item()``, an op with no meta kernel, a
write into a real tensor) computes its lazy inputs exactly through replay (:func:`evaluate`)
and marks what it forced as materialized early. The special ops make lazy tensors of what is
not an op's output (``torch.tensor(data)``, existing storages) or read a value (``.item()``).
"""

from __future__ import annotations

from typing import Any

import torch

from ._emit import as_lazy, constant, user_frame
from ._flat import unflatten
from ._graph import EarlyRecord, view_of
from ._lazy_tensor import LazyTensor, describe
from ._ops import PLAIN, Call, OpFacts
from ._replay import compute, constant_value
from ._session import recording_active
from .errors import LazyTensorError, UnsupportedOpError

aten = torch.ops.aten


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


def run_forced(call: Call) -> Any:
    """Run the call for real on the exact values of its lazy inputs (early materialization)."""
    reason = str(call.op.func)
    real = [evaluate(x, reason) if isinstance(x, LazyTensor) else x for x in call.flat]
    real_args, real_kwargs = unflatten(real, call.layout)
    return call.op.func(*real_args, **real_kwargs)


def _lift_fresh(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    # ``torch.tensor(data)``, ``as_tensor`` and ``from_numpy`` pass their fresh tensor here.
    # On a plain tensor ``lift_fresh`` returns that tensor itself (``lift_fresh_copy`` copies).
    func = op.func
    plain = func is aten.lift_fresh.default and type(args[0]) in PLAIN
    value = args[0] if plain else func(*args, **kwargs)
    if not in_context or isinstance(value, LazyTensor) or value.device.type == "meta":
        return value
    return constant(value)


def _local_scalar_dense(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    x = args[0]
    if not isinstance(x, LazyTensor):
        return op.func(*args, **kwargs)
    value = evaluate(x, "Tensor.item() (or bool, int, float)")
    with torch._C._DisableTorchDispatch():
        return op.func(value)


def _set_source(
    op: OpFacts, args: tuple[Any, ...], kwargs: dict[str, Any], in_context: bool
) -> Any:
    # ``dest.set_(src)`` (used by torch.nn.utils.parametrize) makes ``dest`` a view of ``src``'s
    # storage, like ``dest.data = src``.
    func = op.func
    dest, source = args[0], kwargs.get("source", args[1] if len(args) > 1 else None)
    if isinstance(dest, LazyTensor) and isinstance(source, torch.UntypedStorage):
        # ``torch.asarray(storage)`` and safetensors' readers wrap existing (often memory-mapped)
        # bytes: the tensor stays lazy as a constant over them, read at materialization.
        with torch._C._DisableTorchDispatch():
            real = torch.empty(0, dtype=dest.dtype, device=source.device)
            func(real, *args[1:], **kwargs)
        set_data(dest, constant(real))
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


# The handler of each op of ``_ops.SPECIAL_OPS``, by packet.
SPECIAL_PATHS: dict[Any, Any] = {
    aten.set_: _set_source,
    aten.lift_fresh: _lift_fresh,
    aten.lift_fresh_copy: _lift_fresh,
    aten._local_scalar_dense: _local_scalar_dense,
}
