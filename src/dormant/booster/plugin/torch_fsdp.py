"""TorchFSDPPlugin: FSDP2 ``fully_shard`` (ZeRO-3), sharding lazy models before any value exists."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from .base import (
    MIXED_PRECISION_DTYPES,
    Plugin,
    blocks,
    check_same_program,
    device_type,
    mark_boosted,
    require_process_group,
    sharded_in_place,
)


def shard_with_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    reshard_after_forward: bool,
    mixed_precision: str | None,
    offload: bool = False,
) -> nn.Module:
    """Shard ``model`` with FSDP2 block by block, then fill each rank's shards exactly.

    See [Note: sharded materialization] in ``_placement.py``.
    """
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mixed_precision is not None:
        dtype = MIXED_PRECISION_DTYPES[mixed_precision]
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    pin = torch.cuda.is_available()  # pinned host memory needs an accelerator
    kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=pin) if offload else OffloadPolicy()
    with sharded_in_place(model, "cpu" if offload else device_type()):
        for block in blocks(model):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
    return model


class TorchFSDPPlugin(Plugin):
    """Shard parameters, gradients and optimizer state with FSDP2 (ZeRO-3).

    A lazy model is sharded while still lazy: each rank allocates only its shards and computes
    them exactly. Keyword arguments: ``reshard_after_forward`` (default True).

    Example::

        >>> booster = Booster(plugin=TorchFSDPPlugin(), mixed_precision="bf16")  # doctest: +SKIP
    """

    reshard_after_forward = True
    offload = False

    def __init__(self, reshard_after_forward: bool = True) -> None:
        self.reshard_after_forward = reshard_after_forward

    def configure_model(self, model: nn.Module) -> nn.Module:
        require_process_group(self)
        check_same_program(model)
        mesh = init_device_mesh(device_type(), (torch.distributed.get_world_size(),))
        shard_with_fsdp(
            model,
            mesh,
            reshard_after_forward=self.reshard_after_forward,
            mixed_precision=self.mixed_precision,
            offload=self.offload,
        )
        mark_boosted(model)
        return model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        assert isinstance(model, FSDPModule)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
