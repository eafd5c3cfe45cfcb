"""The sharding sequence every sharded plugin runs, written once: check that ranks agree, keep
this rank's pipeline stage, split it with DTensor tensor parallelism, shard it with FSDP2 block
by block, then fill each rank's shards."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from ..._materialize import materialize
from ..._placement import fill_local, to_empty, to_meta
from ..._spmd import check_same_program
from ...errors import DormantError
from ..precision import Precision
from .pipeline import split_stage
from .tp_plans import check_plan_matches, plan_for, reaching

_log = logging.getLogger("dormant")


def device_type() -> str:
    """Where plugins put the model: the accelerator if there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Sharding:
    """How a plugin shards: what FSDP2 and DTensor are asked to do.

    ``pp_size`` > 1 keeps one pipeline stage per group of ``world / pp_size`` ranks (see
    ``pipeline.py``). ``tp_size`` ranks split each linear layer of ``tp_plan`` (the model
    family's plan when None) that the stage keeps; FSDP2 shards over the other
    ``world / (pp_size * tp_size)`` ranks, resharding parameters after
    forward when ``reshard_after_forward`` (ZeRO-3) or keeping them until backward (ZeRO-2).
    ``replicate_size`` > 1 shards within groups of ``world / replicate_size`` ranks and
    replicates across groups (HSDP; not with ``tp_size`` or ``pp_size`` > 1). ``wrap`` picks
    extra modules to shard as their own group
    (an FSDP1 ``auto_wrap_policy``).
    """

    reshard_after_forward: bool = True
    offload: bool = False
    pin_memory: bool = False
    precision: Precision = Precision("fp32")  # noqa: RUF009 (frozen: shared safely)
    output_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None
    tp_size: int = 1
    pp_size: int = 1
    tp_plan: dict[str, ParallelStyle] | None = None
    replicate_size: int = 1
    wrap: Callable[[nn.Module], bool] | None = None

    def fsdp_kwargs(self, mesh: DeviceMesh) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward}
        dtype = self.precision.param_dtype
        if dtype is not None or self.output_dtype is not None or self.reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=dtype,
                reduce_dtype=self.reduce_dtype or torch.float32,
                output_dtype=self.output_dtype,
            )
        offload = CPUOffloadPolicy(pin_memory=self.pin_memory and torch.cuda.is_available())
        kwargs["offload_policy"] = offload if self.offload else OffloadPolicy()
        return kwargs


def shard(model: nn.Module, sharding: Sharding) -> DeviceMesh | None:
    """Shard ``model`` (lazy, partly lazy or real) as ``sharding`` says, each rank computing
    only its own shards (see [Note: sharded materialization] in ``_placement.py``).

    Returns the pipeline dimension of the mesh when ``pp_size`` > 1 (each rank then holds only
    its stage, see ``pipeline.py``), else None.
    """
    _check_sizes(sharding)
    plan = sharding.tp_plan
    if plan is None:  # tp_size=1 splits nothing: any model boosts, with or without a known plan
        plan = plan_for(model) if sharding.tp_size > 1 else {}
    check_same_program(model)
    # after check_same_program: ranks agree on the model, so all raise here or none does
    check_plan_matches(model, plan)
    device = "cpu" if sharding.offload else device_type()
    dp_mesh, tp_mesh, pp_mesh = _meshes(sharding)
    if pp_mesh is not None:  # each rank keeps its stage's layers, then tp and FSDP2 split them
        split_stage(model, pp_mesh.get_local_rank(), sharding.pp_size)
        # checked on the whole model above; a stage splits the planned modules it keeps
        plan = reaching(model, plan)
    # FSDP2 cannot shard a 0-dim parameter: it stays whole on every rank, its gradient averaged
    scalars = [name for name, p in model.named_parameters() if p.dim() == 0]
    with as_it_was_on_failure(model), sharded_in_place(model, device):
        if tp_mesh is not None:
            parallelize_module(model, tp_mesh, plan)
        # FSDP2 also over a data-parallel dimension of 1: it applies the precision policy
        kwargs = sharding.fsdp_kwargs(dp_mesh)
        if scalars:
            kwargs["ignored_params"] = {model.get_parameter(name) for name in scalars}
        for block in blocks(model, sharding.wrap):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
    for name in scalars:
        model.get_parameter(name).register_post_accumulate_grad_hook(_averaged_over(dp_mesh))
    return pp_mesh


def _check_sizes(sharding: Sharding) -> None:
    world = dist.get_world_size()
    tp, replicate, pp = sharding.tp_size, sharding.replicate_size, sharding.pp_size
    if tp < 1 or pp < 1 or world % (tp * replicate * pp):
        sizes = f"tp_size={tp}" + (f" x pp_size={pp} = {tp * pp}" if pp > 1 else "")
        raise DormantError(
            f"{sizes} does not divide the world size {world}: choose sizes whose product "
            f"divides {world}"
        )
    if replicate > 1 and tp * pp > 1:
        raise DormantError(
            "replicated shard groups (HSDP) with tensor parallelism or pipeline stages are not "
            "supported yet: use HSDP with tp_size=1 and pp_size=1, or tp_size and pp_size "
            "(FSDP2 then shards over the remaining ranks) without HSDP"
        )


def _meshes(sharding: Sharding) -> tuple[DeviceMesh, DeviceMesh | None, DeviceMesh | None]:
    """The (dp, tp, pp) meshes: FSDP2's (for HSDP a 2-D one), then tensor parallelism's and the
    pipeline's when their sizes are above 1."""
    world = dist.get_world_size()
    tp, replicate, pp = sharding.tp_size, sharding.replicate_size, sharding.pp_size
    dp = world // (tp * pp)
    if pp > 1 or tp > 1:
        # (pp, dp, tp), without a dimension of size 1 but dp: a stage's ranks are consecutive,
        # its tp groups innermost
        dims = [d for d in (("pp", pp), ("dp", dp), ("tp", tp)) if d[1] > 1 or d[0] == "dp"]
        shape, names = tuple(n for _, n in dims), tuple(name for name, _ in dims)
        mesh = init_device_mesh(device_type(), shape, mesh_dim_names=names)
        return mesh["dp"], mesh["tp"] if tp > 1 else None, mesh["pp"] if pp > 1 else None
    if replicate > 1:  # HSDP: FSDP2 replicates over the first mesh dim, shards over the second
        shape = (replicate, dp // replicate)
        return (
            init_device_mesh(device_type(), shape, mesh_dim_names=("replicate", "shard")),
            None,
            None,
        )
    return init_device_mesh(device_type(), (world,)), None, None


def _averaged_over(mesh: DeviceMesh) -> Callable[[torch.Tensor], None]:
    def average(param: torch.Tensor) -> None:
        assert param.grad is not None
        for dim in range(mesh.ndim):
            dist.all_reduce(param.grad, group=mesh.get_group(dim))
        param.grad.div_(mesh.size())

    return average


@contextlib.contextmanager
def as_it_was_on_failure(model: nn.Module) -> Iterator[None]:
    """If the block raises, put every module back as it was (class, attributes, parameters,
    buffers, hooks: what the engines change), and raise a :class:`DormantError` saying so.

    The engines change modules in place (FSDP2 swaps the class and adds hooks and state), so a
    failure half-way would otherwise leave a model whose weights are meta tensors.
    """
    saved = [
        (
            m,
            m.__class__,
            dict(m.__dict__),
            {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)},
        )
        for m in model.modules()
    ]
    try:
        yield
    except Exception as e:
        for module, cls, attrs, tables in saved:
            module.__class__ = cls
            for key in set(vars(module)) - set(attrs):
                del module.__dict__[key]
            module.__dict__.update(attrs)
            for key, table in tables.items():
                attrs[key].clear()
                attrs[key].update(table)
        raise DormantError(
            f"boost() failed while sharding {type(model).__name__}: {type(e).__name__}: {e}. "
            "The model is as it was before boost(): its tensors, classes and hooks are restored"
        ) from e


@contextlib.contextmanager
def sharded_in_place(model: nn.Module, device: str) -> Iterator[None]:
    """Shard ``model`` with a PyTorch engine inside the block, before any value exists; then
    allocate each rank's local shards on ``device`` and fill them exactly.

    See [Note: sharded materialization] in ``_placement.py``: the model is moved to meta
    (keeping its lazy or real values aside), the engine shards meta tensors, ``to_empty``
    allocates the local shards, and each shard is filled from the values kept aside.
    """
    sources = to_meta(model)
    yield
    to_empty(model, device)
    whole = fill_local(model, sources)
    del sources
    if whole:  # (logging.getLogger("dormant").setLevel("INFO") shows them)
        _log.info(
            "dormant: %d tensors computed whole on every rank, then sliced (no window rule): %s",
            len(whole),
            "; ".join(f"{w.name} ({w.nbytes / 2**20:.1f} MiB): {w.reason}" for w in whole),
        )
    materialize(model)  # tensors held as plain attributes, if any are lazy


def blocks(model: nn.Module, wrap: Callable[[nn.Module], bool] | None = None) -> list[nn.Module]:
    """The repeated blocks to shard one by one, innermost first.

    Candidates are transformers' ``_no_split_modules`` classes, otherwise the members of every
    ``nn.ModuleList``. A candidate is kept only if no module outside it holds one of its
    parameters: FSDP2 manages each parameter in one group, so a tied weight (BERT's word
    embeddings and its prediction head) is left to the smallest kept module that holds every
    use, in the end the root. Nested candidates (a UNet's down block and its resnets) are
    returned children first, the order ``fully_shard`` needs. ``wrap`` adds the modules it
    accepts to the candidates.
    """
    split: Any = getattr(model, "_no_split_modules", None)
    named = list(model.named_modules())[1:]  # the root is sharded last, by the plugin
    found: list[tuple[str, nn.Module]] = []
    if split:
        found = [(n, m) for n, m in named if type(m).__name__ in set(split)]
    if not found:
        lists = [m for _, m in named if isinstance(m, nn.ModuleList)]
        members = {id(m) for lst in lists for m in lst}
        found = [(n, m) for n, m in named if id(m) in members]
    if wrap is not None:
        chosen = {id(m) for _, m in found}
        found += [(n, m) for n, m in named if id(m) not in chosen and wrap(m)]
    holders: dict[int, list[str]] = {}
    for prefix, mod in model.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(prefix)

    def owns_its_parameters(name: str, block: nn.Module) -> bool:
        return all(
            h == name or h.startswith(f"{name}.")
            for p in block.parameters()
            for h in holders[id(p)]
        )

    kept = [(n, m) for n, m in found if owns_its_parameters(n, m)]
    kept.sort(key=lambda item: item[0].count("."), reverse=True)
    return [m for _, m in kept]
