"""LazyTensor: a tensor that knows its metadata and how to compute its values, and holds no data.

A LazyTensor is a wrapper subclass (it reports the device the value will live on, so ``is_meta``
is False) over a meta tensor: shape, dtype, strides and every view are computed by PyTorch's own
meta kernels. Its values are defined by the op graph (``_graph.py``) through ``_lazy_storage``.

Most behaviour lives in ``_record.py`` (ops, at the dispatcher). The handful of Python-level
behaviours that never reach the dispatcher (``.data =``, ``tolist()``, ``repr``, ``deepcopy``,
pickling, and the ``is_meta`` check of data-dependent ``torch.nn.init`` functions) are handled in
:meth:`LazyTensor.__torch_function__`, each by one small function registered in a table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch

from ._graph import LazyStorage
from ._session import recording_active
from .errors import LazyTensorError


class Recorder(Protocol):
    """What a LazyTensor asks of recording. See [Note: the recorder hook]."""

    def record_op(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, in_context: bool
    ) -> Any: ...

    def assign_data(self, target: LazyTensor, value: torch.Tensor) -> None: ...

    def defer_library_init(self, tensor: LazyTensor) -> bool: ...

    def evaluate(self, tensor: LazyTensor, reason: str) -> torch.Tensor: ...


# [Note: the recorder hook]
# Every op on a LazyTensor goes to the recorder, and the recorder makes LazyTensors: each needs
# the other. So that imports run one way (recording imports this module, never the reverse),
# ``_record`` plugs itself in here when it is imported, which ``dormant/__init__`` always does.
recorder: Recorder = cast(Recorder, None)  # set by _record


# Attributes dormant keeps on a LazyTensor; everything else in ``__dict__`` is the user's.
INTERNAL_ATTRS = frozenset({"_meta", "_lazy_storage", "_is_param"})


class LazyTensor(torch.Tensor):
    """A tensor whose values are computed later, by :func:`dormant.materialize`."""

    _meta: torch.Tensor
    _lazy_storage: LazyStorage

    @staticmethod
    def __new__(
        cls, meta: torch.Tensor, storage: LazyStorage | None = None, **attrs: Any
    ) -> LazyTensor:
        if storage is None:
            # ``type(param)(tensor, **param.__dict__)``: library code (accelerate's
            # ``init_empty_weights``) re-making a parameter of the same class as an old one.
            return _reparameter(meta, attrs)
        t = torch.Tensor._make_wrapper_subclass(
            cls,
            meta.size(),
            strides=meta.stride(),
            storage_offset=meta.storage_offset(),
            dtype=meta.dtype,
            layout=meta.layout,
            device=storage.device,
            requires_grad=False,
        )
        t._meta = meta
        t._lazy_storage = storage
        return t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Python calls __init__ with the caller's arguments when a LazyTensor comes back from
        # ``torch.Tensor(4)`` (a legacy constructor): there is nothing to do with them.
        super().__init__()

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        handler = _python_handlers.get(_handler_key(func))
        if handler is not None:
            return handler(func, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        # Outside LazyInitContext ops on lazy tensors are still recorded, so that edits made
        # after building (``model.half()``, LoRA layers, loading weights) are kept.
        return recorder.record_op(func, args, kwargs or {}, in_context=False)


def describe(t: torch.Tensor) -> str:
    """A short description of a tensor for error messages."""
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


# --- Python-level behaviours -----------------------------------------------------------------

_python_handlers: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = {}


def _handler_key(func: Any) -> Any:
    # Property accessors arrive as fresh method-wrappers; key them by their descriptor.
    owner = getattr(func, "__self__", None)
    if owner is not None and type(owner).__name__ == "getset_descriptor":
        return (owner, func.__name__)
    return func


def _implements(*keys: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for key in keys:
            _python_handlers[key] = fn
        return fn

    return register


_data = torch._C.TensorBase.data
_is_meta = torch._C.TensorBase.is_meta


@_implements((_data, "__set__"))
def _set_data(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    target, value = args
    if not isinstance(target, LazyTensor):
        raise TypeError(
            f"cannot assign a lazy tensor to the .data of a real tensor ({describe(target)}): "
            "create the tensor inside LazyInitContext, or materialize the lazy one first"
        )
    recorder.assign_data(target, value)


@_implements((_is_meta, "__get__"))
def _get_is_meta(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # Data-dependent torch.nn.init functions ask ``is_meta`` first and return early when it is
    # True; answering True there lets dormant record the whole call instead (see _record).
    return recorder.defer_library_init(args[0])


def _force_then(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = getattr(func, "__name__", str(func))
    real_args = [
        recorder.evaluate(a, f"Tensor.{name}") if isinstance(a, LazyTensor) else a for a in args
    ]
    with torch._C.DisableTorchFunctionSubclass():
        return func(*real_args, **kwargs)


for _method in ("tolist", "numpy", "__array__", "data_ptr", "untyped_storage", "_typed_storage"):
    _python_handlers[getattr(torch.Tensor, _method)] = _force_then
_python_handlers[torch.Tensor.storage] = _force_then


@_implements(torch.Tensor.__repr__)
def _repr(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    t = args[0]
    if recording_active():
        return str(_force_then(func, args, kwargs))
    kind = "LazyParameter" if isinstance(t, torch.nn.Parameter) else "LazyTensor"
    grad = ", requires_grad=True" if t.requires_grad else ""
    return f"{kind}(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device}{grad})"


@_implements(torch.Tensor.__deepcopy__)
def _deepcopy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    t, memo = args[0], args[1] if len(args) > 1 else kwargs.get("memo", {})
    if id(t) in memo:
        return memo[id(t)]
    with torch.no_grad():
        new: torch.Tensor = t.clone()  # recorded: the copy is lazy too
    if isinstance(t, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
    else:
        new.requires_grad_(t.requires_grad)
    for key, value in t.__dict__.items():
        if key not in INTERNAL_ATTRS:
            setattr(new, key, copy.deepcopy(value, memo))
    memo[id(t)] = new
    return new


@_implements(torch.Tensor.__reduce_ex__)
def _reduce_ex(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise LazyTensorError(
        f"cannot pickle or torch.save a lazy {describe(args[0])}: call "
        "dormant.materialize(module) first",
        tensor=describe(args[0]),
        op="pickle",
    )


def _reparameter(data: torch.Tensor, attrs: dict[str, Any]) -> Any:
    param = torch.nn.Parameter(data, requires_grad=attrs.pop("requires_grad", True))
    for key, value in attrs.items():
        if key not in INTERNAL_ATTRS:
            setattr(param, key, value)
    return param
