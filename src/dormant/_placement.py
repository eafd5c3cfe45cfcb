"""Placement: where computed values go.

For a module materialized on one device, every value lands in the module's own tensor objects:
:func:`install` swaps the lazy tensor's contents for the real ones with
``torch.utils.swap_tensors``, so the Python object stays the same. Tied weights stay tied, and
references taken before materializing (an optimizer built early, a dict of parameters) see the
real values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ._lazy_tensor import INTERNAL_ATTRS, LazyTensor
from ._replay import _real_execution, view_of
from .errors import MaterializationError


@dataclass(frozen=True)
class Slot:
    """A place where a module holds a tensor: a parameter, a buffer or a plain attribute."""

    name: str  # fully qualified, as in ``state_dict``
    kind: str  # "parameter", "buffer" or "attribute"
    tensor: torch.Tensor


def module_tensors(module: nn.Module) -> Iterator[Slot]:
    """Every tensor a module holds, tied ones once per place they are held."""
    for prefix, mod in module.named_modules(remove_duplicate=True):
        dot = f"{prefix}." if prefix else ""
        for name, p in mod._parameters.items():
            if p is not None:
                yield Slot(dot + name, "parameter", p)
        for name, b in mod._buffers.items():
            if b is not None:
                yield Slot(dot + name, "buffer", b)
        for name, value in vars(mod).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            yield from _attribute_tensors(dot + name, value)


def _attribute_tensors(name: str, value: object) -> Iterator[Slot]:
    if isinstance(value, torch.Tensor):
        yield Slot(name, "attribute", value)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, torch.Tensor):
                yield Slot(f"{name}[{i}]", "attribute", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, torch.Tensor):
                yield Slot(f"{name}[{key!r}]", "attribute", item)


def install(
    tensors: dict[int, tuple[str, LazyTensor]], values: dict[int, torch.UntypedStorage]
) -> None:
    """Turn each lazy tensor into a real one over ``values[id(its storage)]``, in place."""
    # Views and results of autograd ops (old-style weight_norm's ``weight``) hold references to
    # other tensors; swap them first so that those are free to swap.
    order = sorted(
        tensors.values(), key=lambda item: (item[1]._base is None, item[1].grad_fn is None)
    )
    done: list[str] = []
    for name, t in order:
        storage = t._lazy_storage
        with _real_execution():
            real = view_of(values[id(storage)], t._meta)
        new: torch.Tensor
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(real, requires_grad=t.requires_grad)
        else:
            new = real.requires_grad_(t.requires_grad) if real.is_floating_point() else real
        for key, value in t.__dict__.items():
            if key not in INTERNAL_ATTRS:
                new.__dict__[key] = value
        try:
            torch.utils.swap_tensors(t, new)
            del new  # now the lazy shell: drop it, and the references it held, at once
        except RuntimeError as e:
            raise MaterializationError(
                f"could not materialize {name!r} in place: {e}. Something else holds a "
                f"reference to its tensor (a view kept outside the module?). Materialized so "
                f"far: {len(done)} of {len(order)}; the rest are still lazy and materialize can "
                "be called again",
                name=name,
                done=tuple(done),
            ) from e
        # The real storage becomes the lazy storage's value: lazy views materialized later
        # share it, as views do in eager.
        storage.cache, storage.cache_version = values[id(storage)], storage.version
        done.append(name)
