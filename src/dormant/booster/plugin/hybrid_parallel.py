"""HybridParallelPlugin: DTensor tensor parallelism on one mesh dimension, FSDP2 on the other."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from ...errors import DormantError
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
from .tp_plans import check_plan_matches, plan_for


class HybridParallelPlugin(Plugin):
    """Tensor parallelism (``parallelize_module``) times data parallelism (FSDP2).

    Ranks form a ``(dp, tp)`` mesh with ``tp = tp_size``. Linear layers are split across the
    ``tp`` dimension following ``tp_plan`` (or the model family's plan: Llama-family models from
    their transformers config, BERT and GPT-2 built in), then FSDP2 shards across ``dp``. ZeRO
    stage 3 reshards parameters after forward; stages 1 and 2 keep them gathered until backward.

    Example::

        >>> plugin = HybridParallelPlugin(tp_size=2, zero_stage=2)
        >>> booster = Booster(plugin=plugin)  # doctest: +SKIP
    """

    def __init__(
        self,
        tp_size: int,
        zero_stage: int = 2,
        tp_plan: dict[str, ParallelStyle] | None = None,
    ) -> None:
        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
        self.tp_size = tp_size
        self.zero_stage = zero_stage
        self.tp_plan = tp_plan

    def configure_model(self, model: nn.Module) -> nn.Module:
        require_process_group(self)
        world = dist.get_world_size()
        if self.tp_size < 1 or world % self.tp_size:
            raise DormantError(
                f"tp_size={self.tp_size} does not divide the world size {world}: choose a "
                f"divisor of {world}"
            )
        dp = world // self.tp_size
        if dp == 1 and self.mixed_precision is not None:
            raise DormantError(
                f"HybridParallelPlugin(tp_size={self.tp_size}) on {world} rank(s) leaves no "
                "data-parallel dimension, and only its FSDP part applies "
                f"mixed_precision={self.mixed_precision!r}: use a tp_size below the world size, "
                "or torch.autocast in the training step"
            )
        if self.tp_plan is not None:
            plan = self.tp_plan
        else:  # tp_size=1 splits nothing: any model boosts, with or without a known plan
            plan = plan_for(model) if self.tp_size > 1 else {}
        check_same_program(model)
        # after check_same_program: ranks agree on the model, so all raise here or none does
        check_plan_matches(model, plan)
        mesh = init_device_mesh(device_type(), (dp, self.tp_size), mesh_dim_names=("dp", "tp"))
        with sharded_in_place(model, device_type()):
            parallelize_module(model, mesh["tp"], plan)
            if dp > 1:
                kwargs: dict = {"mesh": mesh["dp"], "reshard_after_forward": self.zero_stage == 3}
                if self.mixed_precision is not None:
                    dtype = MIXED_PRECISION_DTYPES[self.mixed_precision]
                    kwargs["mp_policy"] = MixedPrecisionPolicy(dtype, torch.float32)
                for block in blocks(model):
                    fully_shard(block, **kwargs)
                fully_shard(model, **kwargs)
        mark_boosted(model)
        return model
