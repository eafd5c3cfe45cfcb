"""materialize() and is_lazy(): the user-facing half of the core."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Literal, overload

import torch
from torch import nn

from . import _replay
from ._lazy_tensor import LazyTensor
from ._placement import (
    SlotKind,
    compute_local,
    install,
    lazy_local,
    module_tensors,
    sharded_lazy,
)
from ._report import MaterializeReport
from .errors import MaterializationError


@overload
def materialize(
    module: nn.Module,
    verbose: bool = False,
    *,
    progress: bool | None = None,
    report: Literal[False] = False,
    threads: int | None = None,
) -> nn.Module: ...


@overload
def materialize(
    module: nn.Module,
    verbose: bool = False,
    *,
    progress: bool | None = None,
    report: Literal[True],
    threads: int | None = None,
) -> MaterializeReport: ...


def materialize(
    module: nn.Module,
    verbose: bool = False,
    *,
    progress: bool | None = None,
    report: bool = False,
    threads: int | None = None,
) -> nn.Module | MaterializeReport:
    """Compute every lazy tensor of ``module`` and put the values in place.

    Values are bit for bit those of eager construction from the same RNG state, in any order of
    materialization (one submodule at a time works too). Parameters, buffers and tensors held as
    plain attributes (also in nested lists, tuples, dicts, sets, dataclasses and namespaces, and
    a parameter's ``.grad`` and tensor attributes) keep their identity: tied weights stay tied
    and references taken earlier stay valid; gradient hooks stay registered. Generators'
    states are left as they were. Calling it on a module with nothing lazy does nothing.

    Args:
        module: the module to materialize, in place.
        verbose: print a report: parameters and buffers lazily initialized out of total, and
            what was materialized early (during construction), with the op that forced it.
        progress: show a progress bar; by default only on a terminal for long materializations.
        report: return the :class:`~dormant.MaterializeReport` (what ``verbose`` prints: counts,
            what was materialized early, the ops replayed) instead of the module.
        threads: how many threads compute values; ops that share no tensor run at once, each
            random op from its own exact place on the stream, so the values are the same for
            any count. Default: ``torch.get_num_threads()``.

    Returns:
        ``module`` itself, or its report when ``report=True``.

    Example::

        >>> import torch
        >>> from dormant import LazyInitContext, materialize
        >>> torch.manual_seed(0)
        >>> with LazyInitContext():
        ...     model = torch.nn.Linear(8, 8)
        >>> model = materialize(model)
        >>> torch.manual_seed(0)
        >>> torch.equal(model.weight, torch.nn.Linear(8, 8).weight)
        True
    """
    if threads is not None and threads < 1:
        raise ValueError(f"materialize(threads={threads}): give at least 1 thread")
    result = _materialize(module, progress, threads)
    if verbose:
        print(result)
    return result if report else module


def _materialize(
    module: nn.Module, progress: bool | None, threads: int | None
) -> MaterializeReport:
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"materialize() expects an nn.Module, got {type(module).__name__}; wrap tensors in a "
            "module (or register them as buffers) to materialize them"
        )
    start = time.perf_counter()
    report = MaterializeReport(type(module).__name__)
    lazy: dict[int, tuple[str, LazyTensor]] = {}
    counted: set[int] = set()
    for slot in module_tensors(module):
        t = slot.tensor
        if id(t) in counted:
            continue
        counted.add(id(t))
        inner = t if isinstance(t, LazyTensor) else lazy_local(t)  # a DTensor's local tensor
        if inner is not None:
            report.add(slot.name, slot.kind, t.numel(), inner._lazy_storage.early, lazy=True)
        else:
            report.add(slot.name, slot.kind, t.numel(), [], lazy=False)
            if t.is_meta and slot.kind is not SlotKind.ATTRIBUTE:
                report.meta.append(slot.name)
        if isinstance(t, LazyTensor):
            lazy[id(t)] = (slot.name, t)
    # Local shards left by the user's own sharding code: each computed alone, shard only (see
    # [Note: materializing what the user sharded]), before the rest, which they never read.
    local = {id(t): (name, t) for name, t in sharded_lazy(module)}
    if local:
        values, work = compute_local(local)
        report.shard_elements, report.shard_drawn, report.whole = work
        install(local, values, module)
        del values
    if lazy:
        stats = _replay.ReplayStats()
        storages = [t._lazy_storage for _, t in lazy.values()]
        try:
            values = _replay.compute(storages, progress=progress, stats=stats, threads=threads)
        except MaterializationError as e:
            raise _naming(e, lazy.values()) from e
        report.ops_replayed, report.random_ops = stats.ops, stats.random_ops
        report.threads = stats.threads
        # Normal tensors, whatever mode the caller is in (leaving inference mode also turns grad
        # mode on: only when in it).
        inference = torch.is_inference_mode_enabled()
        with torch.inference_mode(False) if inference else contextlib.nullcontext():
            install(lazy, values, module)
        del values, lazy
    left = [name for name, _ in lazy_tensors(module)]
    if left:  # never a silent half-materialized model
        raise MaterializationError(
            f"materialize left {len(left)} lazy tensors in {type(module).__name__}: "
            f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}. They are held in a way "
            "dormant does not know; please report how the model was built and sharded",
            name=left[0],
            done=(),
        )
    report.seconds = time.perf_counter() - start
    return report


def lazy_tensors(module: nn.Module) -> Iterator[tuple[str, LazyTensor]]:
    """Every lazy tensor ``module`` holds: its own, and those inside DTensors and FSDP2 shards."""
    for slot in module_tensors(module):
        if isinstance(slot.tensor, LazyTensor):
            yield slot.name, slot.tensor
    yield from sharded_lazy(module)


def _naming(
    error: MaterializationError, lazy: Iterable[tuple[str, LazyTensor]]
) -> MaterializationError:
    """``error`` from replay, naming the module's tensors that the failing op wrote."""
    written: set[int] = getattr(error, "storages", set())
    names = sorted({name for name, t in lazy if id(t._lazy_storage) in written})
    if not names:
        return error
    shown = ", ".join(repr(n) for n in names[:5])
    return MaterializationError(
        f"materializing {shown} (nothing was materialized): {error}", name=names[0]
    )


def is_lazy(obj: torch.Tensor | nn.Module) -> bool:
    """Whether a tensor is lazy, or a module still holds any lazy tensor.

    Example::

        >>> import torch
        >>> from dormant import LazyInitContext, is_lazy, materialize
        >>> with LazyInitContext():
        ...     layer = torch.nn.Linear(2, 2)
        >>> is_lazy(layer), is_lazy(layer.weight)
        (True, True)
        >>> is_lazy(materialize(layer))
        False
    """
    if isinstance(obj, torch.Tensor):
        return isinstance(obj, LazyTensor) or lazy_local(obj) is not None
    if isinstance(obj, nn.Module):
        return next(lazy_tensors(obj), None) is not None
    raise TypeError(f"is_lazy() expects a tensor or an nn.Module, got {type(obj).__name__}")
