"""Library functions recorded whole: data-dependent ``torch.nn.init`` functions.

[Note: deferred library init]
Some torch.nn.init functions read values while they run (``trunc_normal_`` is a rejection loop
that calls ``.any()``), or run ops that cannot be recorded (``orthogonal_`` calls ``q.t_()``),
or run one op per channel (``dirac_``). Each of them first asks ``tensor.is_meta`` and returns
at once when it is True. dormant answers True to that one question, from those functions only,
and records the whole call as one node; replay calls the real function on the real tensor, in
recorded order, so values and random draws match eager. Recognising the caller by its code
object works however the function was imported (transformers keeps its own references).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from . import _draws
from ._emit import covers_storage, emit, held
from ._graph import DeferredCall, Node, NodeKind, TensorRef
from ._lazy_tensor import LazyTensor
from ._spmd import replace_collective

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
    ref = TensorRef(s, t._meta, s.version, weak=True)
    draw = None
    if random:
        draws = _draws.count_library_call(name, t._meta, call_kwargs, t.device)
        draw = (call_kwargs.get("generator"), t.device, draws)
    flat_args = [ref if x is t else held(x) for x in flat]
    label = f"{name}({tuple(t.shape)})"
    node = Node(DeferredCall(fn, name, tensor_arg), flat_args, spec, label, NodeKind.LIBRARY)
    emit(node, ((s, ref, None, not covers_storage(t._meta, s)),), draw)
