"""Flat argument lists: an aten call's ``(args, kwargs)`` as pytree leaves, without pytree.

[Note: flat arguments]
A recorded node keeps its arguments as pytree leaves and a ``TreeSpec`` (``Node.flat_args``,
``Node.spec``; replay unflattens them). ``torch.utils._pytree`` walks the tree in Python, which
costs more than the rest of recording an op, so each call is flattened once, and cheaply.
The dispatcher hands ``__torch_dispatch__`` flat argument lists: each argument is a leaf (a
tensor, a number, a dtype, None...) or a list of leaves (``int[]``, ``Tensor[]``). The leaves and
the spec of such a call follow from its *structure* alone: which arguments are lists and how
long, and the names of the keyword arguments. :func:`flatten` walks that one level, builds the
spec with pytree the first time a structure is seen (and checks its own leaves against pytree's
then), and reuses it after. Anything else (a tuple, a dict, a namedtuple, a type registered with
pytree) goes to pytree itself. Leaves and spec are pytree's either way.
"""

from __future__ import annotations

from typing import Any

from torch.utils._pytree import SUPPORTED_NODES, TreeSpec, tree_flatten, tree_unflatten

# The structure of a call: (sizes of the positional arguments, keyword names, their sizes),
# where a size is -1 for a leaf and n for a list of n leaves.
_Key = tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...]]


class ArgLayout:
    """The structure of one call's ``(args, kwargs)``: its pytree spec and, when the arguments
    are flat (see [Note: flat arguments]), the sizes to rebuild them without pytree."""

    __slots__ = ("arg_sizes", "kw_keys", "kw_sizes", "per_op", "spec")

    def __init__(self, spec: TreeSpec, key: _Key | None = None) -> None:
        self.spec = spec
        self.arg_sizes, self.kw_keys, self.kw_sizes = key if key is not None else ((), (), ())
        # Whatever callers derive from the structure and an op (argument names per leaf).
        self.per_op: dict[int, Any] | None = {} if key is not None else None


_LAYOUTS: dict[_Key, ArgLayout] = {}


def _size(value: Any, flat: list[Any]) -> int | None:
    """Append ``value``'s leaves to ``flat``: -1 for a leaf, n for a list of n leaves, None for
    anything deeper (left to pytree)."""
    kind = type(value)
    if kind is list:
        for x in value:
            if type(x) in SUPPORTED_NODES or isinstance(x, tuple):
                return None
        flat.extend(value)
        return len(value)
    if kind in SUPPORTED_NODES or isinstance(value, tuple):  # tuples: namedtuples, torch.Size
        return None
    flat.append(value)
    return -1


def flatten(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], ArgLayout]:
    """``tree_flatten((args, kwargs))``: the same leaves, and the layout holding the same spec."""
    flat: list[Any] = []
    arg_sizes = []
    for value in args:
        size = _size(value, flat)
        if size is None:
            return _by_pytree(args, kwargs)
        arg_sizes.append(size)
    kw_sizes = []
    for value in kwargs.values():
        size = _size(value, flat)
        if size is None:
            return _by_pytree(args, kwargs)
        kw_sizes.append(size)
    key = (tuple(arg_sizes), tuple(kwargs), tuple(kw_sizes))
    layout = _LAYOUTS.get(key)
    if layout is None:
        leaves, spec = tree_flatten((args, kwargs))
        if len(leaves) != len(flat) or any(a is not b for a, b in zip(leaves, flat)):
            return leaves, ArgLayout(spec)  # never seen: pytree disagrees, so trust it
        layout = _LAYOUTS[key] = ArgLayout(spec, key)
    return flat, layout


def leaves_layout(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ArgLayout | None:
    """The layout of a call whose arguments are all leaves, whose flat arguments are then
    ``[*args, *kwargs.values()]``: the structure is the argument count and the keyword names
    alone. None if some argument is not a leaf."""
    key = ((-1,) * len(args), tuple(kwargs), (-1,) * len(kwargs))
    layout = _LAYOUTS.get(key)
    if layout is None:
        _, layout = flatten(args, kwargs)  # checks the leaves against pytree, keeps the layout
        if layout.per_op is None or layout.arg_sizes != key[0] or layout.kw_sizes != key[2]:
            return None
    return layout


def _by_pytree(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], ArgLayout]:
    flat, spec = tree_flatten((args, kwargs))
    return flat, ArgLayout(spec)


def unflatten(flat: list[Any], layout: ArgLayout) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``tree_unflatten(flat, layout.spec)``: new lists, tuple and dict around the leaves."""
    if layout.per_op is None:
        args, kwargs = tree_unflatten(flat, layout.spec)
        return args, kwargs
    i = 0
    out: list[Any] = []
    for size in layout.arg_sizes:
        if size < 0:
            out.append(flat[i])
            i += 1
        else:
            out.append(flat[i : i + size])
            i += size
    kwargs = {}
    for key, size in zip(layout.kw_keys, layout.kw_sizes):
        if size < 0:
            kwargs[key] = flat[i]
            i += 1
        else:
            kwargs[key] = flat[i : i + size]
            i += size
    return tuple(out), kwargs
