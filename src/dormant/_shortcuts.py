"""What recording knows of a kernel without running it: meta shortcuts and argument checks.

[Note: meta shortcuts]
Some meta kernels are Python decompositions that cost far more than recording the op
(``normal_``, ``randn``, ``uniform_``), where a C++ meta kernel costs about a microsecond. Where
the result is plain (the tensor itself for an in-place fill, a contiguous empty tensor for a
random factory) and the arguments are ones the kernel accepts, the shortcut gives that result
directly; anything else (a dtype or value the kernel might refuse) runs the kernel, which raises
eager's error. ``test_record`` checks each shortcut against its kernel.

[Note: argument checks]
Some ops check their scalar arguments in the CPU kernel only, not in the meta kernel: eager
raises at the op, recording would not, and materialize would fail far from the model line.
Each check here is a cheap test of the bound arguments that says when eager may refuse them;
then the real op runs on an empty tensor of the same dtype, which raises eager's own error
(and draws nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._graph import META

aten = torch.ops.aten

# Each takes the bound arguments and the meta arguments, and returns the meta output, or None to
# run the kernel.
MetaShortcut = Callable[[dict[str, Any], tuple[Any, ...], dict[str, Any]], Any]


def is_dense(meta: torch.Tensor) -> bool:
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
        and is_dense(self)
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


META_SHORTCUTS: dict[Any, MetaShortcut] = {
    aten.normal_.default: _plain_normal_,
    aten.uniform_.default: _plain_uniform_,
    aten.randn.default: _plain_randn,
    aten.randn.generator: _plain_randn,
}


def _greater(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:  # (symbolic or odd scalars: let the kernel decide)
        return True


# Whether eager may refuse an op's bound arguments: see [Note: argument checks].
ARG_CHECKS: dict[Any, Callable[[dict[str, Any]], bool]] = {
    aten.uniform_.default: lambda b: _greater(b.get("from", 0.0), b.get("to", 1.0)),
    aten.bernoulli_.float: lambda b: not 0 <= b.get("p", 0.5) <= 1,
    getattr(aten.random_, "from"): lambda b: (
        b.get("to") is not None and not _greater(b["to"], b["from"])
    ),
    aten.random_.to: lambda b: not _greater(b["to"], 0),
}


def eager_arg_check(
    func: Any, dtype: torch.dtype, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Run ``func`` on an empty tensor of ``dtype`` with the call's other arguments: raises
    eager's error for arguments eager refuses, draws nothing."""
    kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
    with torch._C._DisableTorchDispatch():
        func(torch.empty(0, dtype=dtype), *args[1:], **kwargs)
