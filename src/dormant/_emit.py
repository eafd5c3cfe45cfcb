"""Node emission: the one place a recorded op joins the op graph.

Every recording path (the general path, the fast paths, deferred library calls, constants and
checkpoint reads) makes its :class:`~dormant._graph.Node` and hands it to :func:`emit`, which
adds each write it makes (a new version of each storage written, through
``LazyStorage.add_write``) and, for a random op, its place on its generator's stream (see
[Note: RNG positions] in ``_rng``).
Also here: what every path needs to build a node's arguments (real tensors held as constants,
the model line that recorded them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

import torch

from . import _rng
from ._graph import (
    NO_ARGS,
    Constant,
    EarlyRecord,
    LazyStorage,
    Node,
    NodeKind,
    SourceRead,
    TensorRef,
    meta_like,
)
from ._lazy_tensor import LazyTensor, new_lazy
from ._mapped import mapped_file
from ._replay import run_for_draws
from ._shortcuts import is_dense

# A random op's draw: the generator it names (None: the device's default), the device it draws
# on, and its count of 32-bit draws (None: not known without running it).
Draw = tuple[torch.Generator | None, torch.device, int | None]

# One storage a node writes: ``(storage, ref, output_index, keeps_base)``, written in place
# through the argument ``ref`` (``output_index`` None) or made new as output ``output_index``.
NodeWrite = tuple[LazyStorage, TensorRef, int | None, bool]


def emit(node: Node, writes: Iterable[NodeWrite], draw: Draw | None = None) -> Node:
    """Add ``node`` (made with its arguments, reads and settings, and nothing else) to the
    graph: a new version of each storage it ``writes``, then, when it has a ``draw``, its place
    on its random stream (after the writes: outside the context, placing the op may run it for
    its draws). Returns the node."""
    for storage, ref, index, keeps_base in writes:
        storage.add_write(node, ref=ref, output_index=index, keeps_base=keeps_base)
    if draw is not None:
        generator, device, draws = draw
        node.rng = _rng.record_step(node, generator, device, draws, run=run_for_draws)
    return node


def new_output(meta: torch.Tensor, device: torch.device) -> tuple[LazyStorage, TensorRef]:
    """A new storage for an op's output of geometry ``meta``, and the output's reference."""
    storage = LazyStorage(meta.untyped_storage().nbytes(), device)
    return storage, TensorRef(storage, meta, 1, weak=True)


def source(
    op: Constant | SourceRead, meta: torch.Tensor, device: torch.device, label: str
) -> LazyStorage:
    """A storage whose only write is ``op()``, a node without inputs: a constant, or a read from
    a checkpoint file. Returns the storage; wrap ``meta`` over it for a lazy tensor."""
    storage, ref = new_output(meta, device)
    kind = NodeKind.CONSTANT if isinstance(op, Constant) else NodeKind.READ
    emit(Node(op, [], NO_ARGS, label, kind), ((storage, ref, 0, False),))
    return storage


def covers_storage(meta: torch.Tensor, storage: LazyStorage) -> bool:
    """Whether writing every element of ``meta`` overwrites every byte of ``storage``."""
    return meta.numel() * meta.element_size() == storage.nbytes and is_dense(meta)


_LIBRARY_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


def user_frame() -> str:
    """``file:line`` of the innermost caller outside torch and dormant, for reports."""
    frame = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


def held(x: Any) -> Any:
    """A real tensor argument, held so that replay reads it as it was (see ``Constant``)."""
    if isinstance(x, torch.Tensor) and (kind := x.device.type) != "meta":
        # Checkpoint tensors are often bytes mapped from the file (safetensors): note which.
        file = mapped_file(x.untyped_storage()) if kind == "cpu" else None
        return Constant(x, user_frame(), file)
    return x


def constant(value: torch.Tensor) -> LazyTensor:
    """A lazy tensor whose value is ``value`` (real data given to the context)."""
    meta = meta_like(value)
    return new_lazy(meta, source(held(value), meta, value.device, "constant"))


def as_lazy(value: Any) -> LazyTensor:
    """``value`` as a lazy tensor: real tensors become constants of the graph."""
    if isinstance(value, LazyTensor):
        return value
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return constant(value)


def keep_forced(storage: LazyStorage, value: torch.Tensor, op: str) -> None:
    """Keep the value an op computed for real (early materialization) as ``storage``'s first
    version, and say so in the report."""
    storage.cache = value.untyped_storage()
    storage.cache_version = 1
    storage.early += (EarlyRecord(op, user_frame(), value.numel(), storage.nbytes),)
