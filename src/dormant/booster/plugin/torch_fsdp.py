"""TorchFSDPPlugin: FSDP2 ``fully_shard`` (ZeRO-3), taking the FSDP1 arguments of the API
dormant follows and mapping each to FSDP2's counterpart."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from ...errors import DormantError
from ..precision import SPELLINGS
from .base import Plugin, mark_boosted, no_effect, require_process_group
from .sharding import Sharding, shard

# FSDP1 sharding strategies: (reshard after forward, replicate across nodes)
_STRATEGIES = {
    "FULL_SHARD": (True, False),
    "SHARD_GRAD_OP": (False, False),
    "HYBRID_SHARD": (True, True),
    "_HYBRID_SHARD_ZERO2": (False, True),
}


class ShardedPlugin(Plugin):
    """A plugin that shards with :func:`~dormant.booster.plugin.sharding.shard`: subclasses
    set ``self.sharding`` from their arguments."""

    sharding = Sharding()

    def configure_model(self, model: nn.Module) -> nn.Module:
        require_process_group(self)
        replicate = self.sharding.replicate_size
        if replicate < 0:  # HSDP: one replica per node, sharded within the node
            local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
            replicate = dist.get_world_size() // local
        self.pp_mesh = shard(
            model, replace(self.sharding, precision=self.precision, replicate_size=replicate)
        )
        mark_boosted(model)
        return model

    @contextlib.contextmanager
    def no_sync(
        self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> Iterator[None]:
        if not isinstance(model, FSDPModule):
            raise DormantError(f"{type(self).__name__}.no_sync needs the model boost() returned")
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


class TorchFSDPPlugin(ShardedPlugin):
    """Shard parameters, gradients and optimizer state with FSDP2 (ZeRO-3).

    A lazy model is sharded while still lazy: each rank allocates only its shards and computes
    them exactly. Takes the FSDP1 arguments of the API dormant follows: ``sharding_strategy``
    (``FULL_SHARD``, ``SHARD_GRAD_OP``, ``HYBRID_SHARD``, ``_HYBRID_SHARD_ZERO2``; ``NO_SHARD``
    is :class:`TorchDDPPlugin`), ``cpu_offload`` (``CPUOffload(offload_params=True)``),
    ``mixed_precision`` (``MixedPrecision(param_dtype=..., reduce_dtype=...)``) and
    ``auto_wrap_policy`` (extra modules to shard on their own, besides the repeated blocks).
    ``backward_prefetch``, ``param_init_fn`` and ``sync_module_states`` have no effect (FSDP2
    prefetches by itself; lazy models need no init function; ranks are checked to agree). Also
    ``reshard_after_forward``, ``precision`` and ``max_norm``.

    Example::

        >>> booster = Booster(plugin=TorchFSDPPlugin(), mixed_precision="bf16")  # doctest: +SKIP
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        sharding_strategy: Any = None,
        cpu_offload: Any = None,
        auto_wrap_policy: Callable[..., bool] | None = None,
        backward_prefetch: Any = None,
        mixed_precision: Any = None,
        ignored_modules: Any = None,
        param_init_fn: Callable[[nn.Module], None] | None = None,
        sync_module_states: bool = False,
        fp8_communication: bool = False,
        *,
        reshard_after_forward: bool | None = None,
        precision: str | None = None,
        max_norm: float = 0.0,
        norm_type: float = 2.0,
    ) -> None:
        name = type(self).__name__
        for arg, value, what in (
            ("process_group", process_group, "dormant shards over every rank dormant.launch() "
             "started: pass process_group=None"),
            ("ignored_modules", ignored_modules, "FSDP2 shards every parameter of the model"),
            ("fp8_communication", fp8_communication, "PyTorch's FSDP2 communicates in the "
             "parameters' dtype: leave it False"),
        ):  # fmt: skip
            if value:
                raise DormantError(f"{name}({arg}=...) is not supported: {what}")
        no_effect(
            name,
            {"backward_prefetch": backward_prefetch, "param_init_fn": param_init_fn,
             "sync_module_states": sync_module_states},
            {"backward_prefetch": None, "param_init_fn": None, "sync_module_states": False},
            "FSDP2 prefetches the next block's parameters by itself, a lazy model needs no "
            "init function, and boost() checks that every rank holds the same model",
        )  # fmt: skip
        reshard, replicate = _strategy(sharding_strategy)
        if reshard_after_forward is not None:
            reshard = reshard_after_forward
        param_dtype, reduce_dtype = _fsdp1_mixed_precision(mixed_precision)
        super().__init__(precision or param_dtype, max_norm, norm_type)
        offload = bool(getattr(cpu_offload, "offload_params", cpu_offload))
        wrap = None
        if auto_wrap_policy is not None:
            policy = auto_wrap_policy

            def wrap(module: nn.Module) -> bool:
                own = sum(p.numel() for p in module.parameters())
                return bool(policy(module=module, recurse=False, nonwrapped_numel=own))

        self.sharding = Sharding(
            reshard_after_forward=reshard,
            offload=offload,
            replicate_size=-1 if replicate else 1,
            reduce_dtype=reduce_dtype,
            wrap=wrap,
        )


def _strategy(strategy: Any) -> tuple[bool, bool]:
    if strategy is None:
        return True, False
    name = getattr(strategy, "name", str(strategy)).upper()
    if name == "NO_SHARD":
        raise DormantError(
            "TorchFSDPPlugin(sharding_strategy=NO_SHARD) replicates the model: use TorchDDPPlugin()"
        )
    if name not in _STRATEGIES:
        raise DormantError(
            f"TorchFSDPPlugin(sharding_strategy={strategy!r}) is not a sharding strategy: pass "
            f"one of {', '.join(_STRATEGIES)} (torch.distributed.fsdp.ShardingStrategy)"
        )
    return _STRATEGIES[name]


def _fsdp1_mixed_precision(policy: Any) -> tuple[str | None, torch.dtype | None]:
    """FSDP1's ``MixedPrecision(param_dtype, reduce_dtype, buffer_dtype)``, or a precision."""
    if policy is None or isinstance(policy, str):
        return policy, None
    param = getattr(policy, "param_dtype", None)
    buffer = getattr(policy, "buffer_dtype", None)
    if buffer is not None and buffer != param:
        no_effect(
            "MixedPrecision", {"buffer_dtype": buffer}, {"buffer_dtype": None},
            "FSDP2 casts parameters only; buffers keep their dtype",
        )  # fmt: skip
    name = None if param is None else SPELLINGS[str(param).removeprefix("torch.")]
    return name, getattr(policy, "reduce_dtype", None)
