"""LazyTensor: a tensor that knows its metadata and how to compute its values, and holds no data.

A LazyTensor is a wrapper subclass (it reports the device the value will live on, so ``is_meta``
is False) over a meta tensor: shape, dtype, strides and every view are computed by PyTorch's own
meta kernels. Its values are defined by the op graph (``_graph.py``) through ``_lazy_storage``.

Most behaviour lives in ``_record.py`` and the modules of its paths (ops, at the dispatcher).
The handful of Python-level behaviours that never reach the dispatcher (``.data =``,
``tolist()``, ``repr``, ``deepcopy``, pickling, and the ``is_meta`` check of data-dependent
``torch.nn.init`` functions) are attributes of the class, each one small function: see
[Note: Python-level behaviours].
"""

from __future__ import annotations

import copy
import functools
import sys
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

    def materialize(self, tensor: LazyTensor) -> None: ...


# [Note: the recorder hook]
# Every op on a LazyTensor goes to the recorder, and the recorder makes LazyTensors: each needs
# the other. So that imports run one way (recording imports this module, never the reverse),
# ``_record`` plugs itself in here when it is imported, which ``dormant/__init__`` always does.
recorder: Recorder = cast(Recorder, None)  # set by _record


# Attributes dormant keeps on a LazyTensor; everything else in ``__dict__`` is the user's.
INTERNAL_ATTRS = frozenset({"_meta", "_lazy_storage", "_is_param"})


def _forcing(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of torch.Tensor, called on the exact value of the lazy tensor."""

    def forced(self: LazyTensor, *args: Any, **kwargs: Any) -> Any:
        return _force_then(method, (self, *args), kwargs)

    forced.__name__ = forced.__qualname__ = method.__name__
    forced.__doc__ = method.__doc__
    return forced


class LazyTensor(torch.Tensor):
    """A tensor whose values are computed later, by :func:`dormant.materialize`."""

    _meta: torch.Tensor
    _lazy_storage: LazyStorage
    # The subclass of nn.Parameter a lazy tensor stands for, if any (see ``lazy_subclass``).
    eager_class: type | None = None

    @staticmethod
    def __new__(
        cls, meta: torch.Tensor, storage: LazyStorage | None = None, **attrs: Any
    ) -> LazyTensor:
        if storage is None:
            # ``type(param)(tensor, **param.__dict__)``: library code (accelerate's
            # ``init_empty_weights``) re-making a parameter of the same class as an old one.
            return _reparameter(meta, attrs)
        return _wrap(cls, meta, storage)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Python calls __init__ with the caller's arguments when a LazyTensor comes back from
        # ``torch.Tensor(4)`` (a legacy constructor): there is nothing to do with them.
        super().__init__()

    # No torch-function layer: calls go to the dispatcher as for a plain tensor.
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    # --- Python-level behaviours: see [Note: Python-level behaviours] --------------------------

    @property  # type: ignore[override]
    def data(self) -> torch.Tensor:
        return _DATA.__get__(self)  # type: ignore[no-any-return]

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        recorder.assign_data(self, value)

    def materialize(self) -> torch.Tensor:
        """Compute this tensor's values now and become a real tensor, in place; returns it.

        The object stays the same (as :func:`dormant.materialize` keeps a module's tensors),
        so references to it see the values. To materialize a module, call
        :func:`dormant.materialize` on it: it computes all its tensors in one pass.

        Example::

            >>> import torch
            >>> from dormant import LazyInitContext
            >>> with LazyInitContext():
            ...     x = torch.ones(2, 3)
            >>> x.materialize().sum()
            tensor(6.)
        """
        recorder.materialize(self)
        return self

    @property
    def _is_param(self) -> bool:
        return bool(self.__dict__.get("_is_param", False))

    @_is_param.setter
    def _is_param(self, value: bool) -> None:
        # ``nn.Parameter(lazy)`` marks the lazy tensor itself as a parameter: a subclass of
        # nn.Parameter would be lost there (see ``_parameter_subclass``).
        self.__dict__["_is_param"] = value
        if value:
            _parameter_subclass(self, sys._getframe(1))

    @property
    def is_meta(self) -> bool:  # type: ignore[override]
        # Data-dependent torch.nn.init functions ask ``is_meta`` first and return early when it
        # is True; answering True there lets dormant record the whole call instead (see _deferred).
        return recorder.defer_library_init(self)

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return _repr(self, tensor_contents)

    def __deepcopy__(self, memo: dict[int, Any]) -> torch.Tensor:
        return _deepcopy(self, memo)

    def __reduce_ex__(self, proto: Any) -> Any:
        raise LazyTensorError(
            f"cannot pickle or torch.save a lazy {describe(self)}: call "
            "dormant.materialize(module) first",
            tensor=describe(self),
            op="pickle",
        )

    # Whatever reads the bytes: computed now (early materialization), then read.
    tolist = _forcing(torch.Tensor.tolist)
    numpy = _forcing(torch.Tensor.numpy)
    __array__ = _forcing(torch.Tensor.__array__)
    data_ptr = _forcing(torch.Tensor.data_ptr)
    untyped_storage = _forcing(torch.Tensor.untyped_storage)
    _typed_storage = _forcing(torch.Tensor._typed_storage)
    storage = _forcing(torch.Tensor.storage)

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


_make_wrapper_subclass = torch.Tensor._make_wrapper_subclass


def _wrap(cls: type[LazyTensor], meta: torch.Tensor, storage: LazyStorage) -> LazyTensor:
    offset = meta.storage_offset()
    if offset == 0 and meta.layout == torch.strided:
        # The common case, without the arguments that have these defaults: each one is parsed.
        t: LazyTensor = _make_wrapper_subclass(
            cls, meta.size(), strides=meta.stride(), dtype=meta.dtype, device=storage.device
        )
    else:
        t = _make_wrapper_subclass(
            cls,
            meta.size(),
            strides=meta.stride(),
            storage_offset=offset,
            dtype=meta.dtype,
            layout=meta.layout,
            device=storage.device,
        )
    t._meta = meta
    t._lazy_storage = storage
    return t


def new_lazy(meta: torch.Tensor, storage: LazyStorage) -> LazyTensor:
    """``LazyTensor(meta, storage)`` without the Python-level constructor calls (``__new__``,
    then ``__init__``): recording makes one or more per op, and they were a third of the cost."""
    return _wrap(LazyTensor, meta, storage)


def describe(t: torch.Tensor) -> str:
    """A short description of a tensor for error messages."""
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


# [Note: Python-level behaviours]
# A few behaviours of a lazy tensor never reach the dispatcher: assigning ``.data``, the
# ``is_meta`` question of data-dependent torch.nn.init functions, reading the bytes (``tolist``,
# ``numpy``, ``data_ptr``, storages), ``repr``, ``deepcopy`` and pickling. They are properties and
# methods of the class that shadow ``torch.Tensor``'s, and LazyTensor has no
# ``__torch_function__``: one would put a Python call in front of every Python-level use of a
# lazy tensor (``.shape``, ``.dim()``, and each torch.nn.init call, through
# ``handle_torch_function``), about a tenth of the time recording a model took. PyTorch's own
# Python methods that call these on ``self`` (``is_shared`` reads ``_typed_storage``) reach
# them too, and get the value rather than an error about a tensor without storage.

_DATA: Any = torch._C.TensorBase.data


def _force_then(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = getattr(func, "__name__", str(func))
    real_args = [
        recorder.evaluate(a, f"Tensor.{name}") if isinstance(a, LazyTensor) else a for a in args
    ]
    with torch._C.DisableTorchFunctionSubclass():
        return func(*real_args, **kwargs)


def _repr(t: LazyTensor, tensor_contents: Any) -> str:
    if recording_active():
        kwargs = {} if tensor_contents is None else {"tensor_contents": tensor_contents}
        return str(_force_then(torch.Tensor.__repr__, (t,), kwargs))
    kind = "LazyParameter" if isinstance(t, torch.nn.Parameter) else "LazyTensor"
    grad = ", requires_grad=True" if t.requires_grad else ""
    return f"{kind}(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device}{grad})"


def _deepcopy(t: LazyTensor, memo: dict[int, Any]) -> torch.Tensor:
    if id(t) in memo:
        return memo[id(t)]  # type: ignore[no-any-return]
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


_PARAMETER_NEW = torch.nn.Parameter.__new__.__code__


def _parameter_subclass(t: LazyTensor, frame: Any) -> None:
    """``MyParam(lazy)`` for a subclass of ``nn.Parameter``: its ``__new__`` marks and returns the
    lazy tensor, of class LazyTensor, so Python would skip ``MyParam.__init__`` and
    ``materialize`` would give a plain Parameter. The lazy tensor becomes a lazy ``MyParam``
    instead (a class deriving from both), which ``__init__`` runs on and placement turns into a
    real ``MyParam``."""
    if frame is None or frame.f_code is not _PARAMETER_NEW:
        return
    cls = frame.f_locals.get("cls")
    if cls is torch.nn.Parameter or not isinstance(cls, type) or isinstance(t, cls):
        return
    t.__class__ = lazy_subclass(cls)


@functools.cache
def lazy_subclass(cls: type) -> type:
    """A lazy tensor class that is also a ``cls`` (a subclass of ``nn.Parameter``)."""
    init = next((vars(base)["__init__"] for base in cls.__mro__ if "__init__" in vars(base)), None)
    if init is object.__init__:
        init = None  # (nn.Parameter has none: object's would refuse the arguments)

    def __init__(self: LazyTensor, *args: Any, **kwargs: Any) -> None:
        if init is not None:
            init(self, *args, **kwargs)

    return type(
        f"Lazy{cls.__name__}", (LazyTensor, cls), {"__init__": __init__, "eager_class": cls}
    )


def _reparameter(data: torch.Tensor, attrs: dict[str, Any]) -> Any:
    param = torch.nn.Parameter(data, requires_grad=attrs.pop("requires_grad", True))
    for key, value in attrs.items():
        if key not in INTERNAL_ATTRS:
            setattr(param, key, value)
    return param
