"""LowLevelZeroPlugin: ZeRO stage 1 or 2, both as FSDP2 keeping parameters gathered from forward
to backward."""

from __future__ import annotations

from typing import Any

import torch

from ..precision import LossScale
from .base import no_effect, refuse_fp8
from .sharding import Sharding
from .torch_fsdp import ShardedPlugin


class LowLevelZeroPlugin(ShardedPlugin):
    """ZeRO with optimizer state (stage 1) and gradients (stage 2) sharded across ranks.

    Both stages run on FSDP2 with ``reshard_after_forward=False``: parameters are gathered for
    forward and kept until backward, gradients are reduce-scattered and each rank steps the
    optimizer on its shard. Stage 1 therefore also shards gradients and the parameters at rest,
    which PyTorch's engine does at the same communication volume as an all-reduce; the training
    step computes the same thing. Arguments follow the API dormant follows, defaults included
    (``stage=1``, ``precision="fp16"`` with loss scaling from ``initial_scale=2**32``):
    ``max_norm`` clips inside ``optimizer.step()``; ``cpu_offload`` is FSDP2's
    ``CPUOffloadPolicy``; ``communication_dtype`` is the gradient reduction dtype;
    ``extra_dp_size`` replicates across that many groups, each sharded (HSDP). Bucket sizes,
    overlap switches, ``master_weights``, ``cast_inputs`` and ``verbose`` have no effect (FSDP2
    keeps fp32 shards and overlaps by itself): a non-default value is logged.

    Example::

        >>> plugin = LowLevelZeroPlugin(stage=2, precision="bf16")
        >>> booster = Booster(plugin=plugin)  # doctest: +SKIP
    """

    default_precision = "fp16"

    def __init__(
        self,
        stage: int = 1,
        precision: str | None = None,
        initial_scale: float = 2**32,
        min_scale: float = 1,
        growth_factor: float = 2,
        backoff_factor: float = 0.5,
        growth_interval: int = 1000,
        hysteresis: int = 2,
        max_scale: float = 2**32,
        max_norm: float = 0.0,
        norm_type: float = 2.0,
        reduce_bucket_size_in_m: int = 12,
        communication_dtype: torch.dtype | None = None,
        overlap_communication: bool = True,
        overlap_allgather: bool = False,
        cpu_offload: bool = False,
        master_weights: bool = True,
        verbose: bool = False,
        cast_inputs: bool = True,
        fp8_communication: bool = False,
        use_fp8: bool = False,
        extra_dp_size: int = 1,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"LowLevelZeroPlugin(stage=...) must be 1 or 2, got {stage}")
        refuse_fp8("LowLevelZeroPlugin", use_fp8, fp8_communication)
        given: dict[str, Any] = {
            "reduce_bucket_size_in_m": reduce_bucket_size_in_m,
            "overlap_communication": overlap_communication,
            "overlap_allgather": overlap_allgather,
            "master_weights": master_weights,
            "verbose": verbose,
            "cast_inputs": cast_inputs,
        }
        no_effect(
            "LowLevelZeroPlugin",
            given,
            {"reduce_bucket_size_in_m": 12, "overlap_communication": True,
             "overlap_allgather": False, "master_weights": True, "verbose": False,
             "cast_inputs": True},
            "FSDP2 keeps fp32 parameter shards, casts inputs and overlaps communication itself",
        )  # fmt: skip
        scale = LossScale(
            initial_scale, growth_factor, backoff_factor, growth_interval, hysteresis, min_scale,
            max_scale,
        )  # fmt: skip
        super().__init__(precision, max_norm, norm_type, scale)
        self.stage = stage
        self.sharding = Sharding(
            reshard_after_forward=False,
            offload=cpu_offload,
            reduce_dtype=communication_dtype,
            replicate_size=extra_dp_size,
        )
