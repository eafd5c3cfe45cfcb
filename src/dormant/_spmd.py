"""Every rank replays the same program: agreeing on it instead of sending values.

[Note: distributing a lazy tensor]
DTensor's ``distribute_tensor`` (under ``parallelize_module`` and ``distribute_module`` too)
makes every rank's local tensor equal to a slice of the source rank's tensor: it scatters the
shards of a ``Shard(d)`` placement and broadcasts a ``Replicate`` one. A lazy tensor has no values
to send, and needs none: every rank recorded the same program from the same RNG state, so each
rank's own slice of its own lazy tensor *is* the source rank's slice, computed later, shard only.
Both collectives (``mesh_scatter`` and ``mesh_broadcast``) first ask ``output.is_meta`` and do
nothing when it is True, as for a meta tensor; dormant answers True to them alone (the same hook
as [Note: deferred library init] in ``_deferred.py``), records the rank's slice as a lazy copy of
its own chunk, and instead of the values checks, in one small gather over the same group, that
the ranks agree on the program they would have sent (:func:`program_digest`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from collections.abc import Iterable
from types import CodeType, FrameType, ModuleType
from typing import Any

import torch
from torch import nn

from ._lazy_tensor import LazyTensor
from ._session import real_execution
from .errors import DormantError

_COLLECTIVES = "torch.distributed.tensor._collective_utils"


def program_digest(tensors: Iterable[torch.Tensor]) -> str:
    """A digest of how ``tensors`` are computed, equal on ranks that recorded the same program.

    Lazy tensors: their geometry and every recorded op they depend on (each op's name, checkpoint
    keys read, and where each random op draws on its stream, so ranks seeded differently
    disagree). Real tensors: their geometry and the bytes of a strided sample.
    """
    digest = hashlib.sha256()
    seen: set[int] = set()
    for t in tensors:
        digest.update(f"{tuple(t.shape)}{t.stride()}{t.dtype}".encode())
        if isinstance(t, LazyTensor):
            digest.update(f"lazy@{t._meta.storage_offset()}".encode())
            _digest_program(digest, t._lazy_storage, seen)
        elif t.device.type != "meta" and t.numel():
            digest.update(sample_bytes(t))
    return digest.hexdigest()


def _digest_program(digest: Any, storage: Any, seen: set[int]) -> None:
    stack = [storage]
    while stack:
        s = stack.pop()
        if id(s) in seen:
            continue
        seen.add(id(s))
        digest.update(f"storage {s.nbytes} {s.version}".encode())
        for node in s.writers:
            digest.update(node.label.encode())  # "read <key>" for checkpoint reads
            rng = node.rng
            if rng is not None and rng.start is not None:
                digest.update(rng.start.anchor.numpy().tobytes())
                digest.update(str(rng.start.draws).encode())
            stack.extend(r.storage for r in node.reads if r.storage is not None)


def sample_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a strided sample of at most 4096 elements of a real tensor: values built from
    different seeds or files differ nearly everywhere, and reading all of a large model would
    take a second or more."""
    flat = t.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4096)].contiguous().cpu()
    return sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b""


def check_same_program(model: nn.Module | Iterable[torch.Tensor], group: Any = None) -> None:
    """Raise :class:`DormantError` on every rank of ``group`` (default: all ranks) unless they
    all built the same ``model`` (or ``tensors``): the same recorded program from the same RNG
    state and checkpoint keys for lazy tensors, the same sampled bytes for real ones.

    A collective: every rank of ``group`` calls it. Call it on the model before sharding it
    with FSDP2's ``fully_shard``, which does not communicate; DTensor's ``distribute_tensor``
    (``parallelize_module``) runs this check itself in place of its scatter and broadcast.

    Example::

        >>> with LazyInitContext():  # doctest: +SKIP
        ...     model = build_model()
        >>> dormant.check_same_program(model)  # doctest: +SKIP
    """
    import torch.distributed as dist

    if isinstance(model, nn.Module):
        named = [*model.named_parameters(), *model.named_buffers()]
        mine = program_digest(t for _, t in named) + "".join(name for name, _ in named)
    else:
        mine = program_digest(model)
    # One all_reduce of 32 numbers whatever the world size (all_gather_object would bring every
    # rank every rank's digest and unpickle each): the largest of each 16-bit piece of the
    # digest and of its negation, so the ranks agree iff the largest equals the smallest.
    with real_execution():  # (sharding code may run inside LazyInitContext)
        raw = bytearray(hashlib.sha256(mine.encode()).digest())
        pieces = torch.frombuffer(raw, dtype=torch.int16).to(torch.int64)
        device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"  # NCCL: device memory
        extremes = torch.cat([pieces, -pieces]).to(device)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
        largest, smallest = extremes.cpu().chunk(2)
        agree = torch.equal(largest, -smallest)
    if not agree:
        raise DormantError(
            "ranks built the model differently, from different RNG states or from different "
            "checkpoints, so their shards would not form one model: seed every rank the same "
            "before building (dormant.launch(seed=...) or torch.manual_seed) and load the same "
            "files on every rank"
        )


def replace_collective(frame: FrameType) -> bool:
    """Whether ``frame`` is DTensor's scatter or broadcast of a lazy tensor; if so, do what it
    would, without values (see [Note: distributing a lazy tensor])."""
    module = sys.modules.get(_COLLECTIVES)
    if module is None:  # DTensor not imported: no DTensor is being distributed
        return False
    scatter, broadcast = _collective_codes(module)
    code = frame.f_code
    if code is scatter:
        scope = frame.f_locals
        _scatter(scope["output"], scope["scatter_list"], scope["mesh"], scope["mesh_dim"])
        return True
    if code is broadcast:
        scope = frame.f_locals
        check_same_program([scope["tensor"]], scope["mesh"].get_group(scope["mesh_dim"]))
        return True
    return False


@functools.cache
def _collective_codes(module: ModuleType) -> tuple[CodeType, CodeType]:
    # (unwrapped: a decorator would leave its own code object on the module attribute)
    return (
        inspect.unwrap(module.mesh_scatter).__code__,
        inspect.unwrap(module.mesh_broadcast).__code__,
    )


def _scatter(output: torch.Tensor, chunks: list[torch.Tensor], mesh: Any, mesh_dim: int) -> None:
    # Every rank holds all the chunks (lazily): they agree on them, and each keeps its own.
    check_same_program(chunks, mesh.get_group(mesh_dim))
    with torch.no_grad():
        output.copy_(chunks[mesh.get_local_rank(mesh_dim)])
