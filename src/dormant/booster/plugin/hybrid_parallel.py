"""HybridParallelPlugin: pipeline stages, DTensor tensor parallelism within each stage, and
FSDP2 over the remaining data-parallel ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle

from ...errors import DormantError
from ..precision import LossScale
from .base import no_effect, refuse_fp8
from .pipeline import PipelineRunner
from .sharding import Sharding
from .torch_fsdp import ShardedPlugin

_NO_EFFECT_DEFAULTS: dict[str, Any] = {
    "sp_size": None,
    "enable_all_optimization": False,
    "enable_fused_normalization": False,
    "enable_flash_attention": False,
    "enable_jit_fused": False,
    "enable_sequence_parallelism": False,
    "sequence_parallelism_mode": None,
    "enable_sequence_overlap": False,
    "parallel_output": True,
    "make_vocab_size_divisible_by": 64,
    "num_model_chunks": 1,
    "dp_outside": True,
    "overlap_communication": True,
    "overlap_allgather": False,
    "overlap_p2p": True,
    "reduce_bucket_size_in_m": 12,
    "communication_dtype": None,
    "custom_policy": None,
    "broadcast_buffers": True,
    "ddp_bucket_cap_mb": 25,
    "find_unused_parameters": False,
    "check_reduction": False,
    "gradient_as_bucket_view": False,
    "static_graph": False,
    "zero_bucket_size_in_m": 12,
    "cpu_offload": False,
    "inner_ring_size": None,
    "fp8_communication": False,
    "use_fp8": False,
}


class HybridParallelPlugin(ShardedPlugin):
    """Pipeline stages times tensor parallelism (``parallelize_module``) times data
    parallelism (FSDP2).

    Ranks form a ``(pp, dp, tp)`` mesh with ``pp = pp_size`` and ``tp = tp_size``. ``pp_size``
    > 1 splits a Llama-family decoder into that many stages (each rank keeps and computes only
    its stage's layers, exactly) and trains it with
    :meth:`~dormant.booster.Booster.execute_pipeline` on a GPipe schedule of
    ``num_microbatches`` (default ``pp_size``) over the ``pp`` dimension. Within a stage,
    linear layers are split across the ``tp`` dimension following ``tp_plan`` (or the model
    family's plan: Llama-family models from their transformers config, BERT and GPT-2 built
    in; a stage applies the entries for the modules it keeps, and with ``pp_size`` > 1 the
    plan must leave replicated plain tensors between layers, as ``RowwiseParallel`` does by
    default), then FSDP2 shards across ``dp``. ZeRO stage 3 reshards parameters after forward;
    stages 0, 1 and 2 keep them gathered until backward. Arguments follow the API dormant
    follows (``precision="fp16"`` by default, loss scaling, ``max_norm``). Sequence
    parallelism, fused kernels and bucket settings have no effect (logged when changed).

    Example::

        >>> plugin = HybridParallelPlugin(tp_size=2, pp_size=1, zero_stage=2)
        >>> staged = HybridParallelPlugin(tp_size=2, pp_size=2, num_microbatches=4)
        >>> booster = Booster(plugin=plugin)  # doctest: +SKIP
    """

    default_precision = "fp16"

    def __init__(
        self,
        tp_size: int,
        pp_size: int = 1,
        precision: str | None = None,
        zero_stage: int = 0,
        initial_scale: float = 2**16,
        min_scale: float = 1,
        growth_factor: float = 2,
        backoff_factor: float = 0.5,
        growth_interval: int = 1000,
        hysteresis: int = 2,
        max_scale: float = 2**32,
        max_norm: float = 0.0,
        num_microbatches: int | None = None,
        microbatch_size: int | None = None,
        tp_plan: dict[str, ParallelStyle] | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_NO_EFFECT_DEFAULTS))
        if unknown:
            raise TypeError(f"HybridParallelPlugin() got unexpected keyword arguments: {unknown}")
        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
        if pp_size > 1 and microbatch_size is not None:
            raise DormantError(
                "HybridParallelPlugin(microbatch_size=...): pass num_microbatches instead (the "
                "batch is split into that many microbatches)"
            )
        fp8 = kwargs.get("use_fp8", False), kwargs.get("fp8_communication", False)
        refuse_fp8("HybridParallelPlugin", *fp8)
        no_effect(
            "HybridParallelPlugin",
            kwargs,
            _NO_EFFECT_DEFAULTS,
            "there is no sequence parallelism, fused kernel or bucket to configure",
        )
        scale = LossScale(
            initial_scale, growth_factor, backoff_factor, growth_interval, hysteresis, min_scale,
            max_scale,
        )  # fmt: skip
        super().__init__(precision, max_norm, 2.0, scale)
        self.tp_size = tp_size
        self.zero_stage = zero_stage
        self.pp_size = pp_size
        self.num_microbatches = num_microbatches or pp_size
        self.sharding = Sharding(
            reshard_after_forward=zero_stage == 3, tp_size=tp_size, pp_size=pp_size, tp_plan=tp_plan
        )
        self._runners: dict[int, PipelineRunner] = {}

    def execute_pipeline(
        self,
        data_iter: Iterator[Any],
        model: nn.Module,
        criterion: Callable[[Any, Any], torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        return_loss: bool = True,
        return_outputs: bool = False,
    ) -> dict[str, Any]:
        if self.pp_mesh is None:
            raise DormantError(
                "execute_pipeline needs a model boosted with HybridParallelPlugin(pp_size > 1): "
                "without pipeline stages, run forward, booster.backward and optimizer.step"
            )
        runner = self._runners.get(id(model))
        if runner is None:
            stage = self.pp_mesh.get_local_rank()
            group = self.pp_mesh.get_group()
            runner = PipelineRunner(model, stage, self.pp_size, group, self.num_microbatches)
            self._runners[id(model)] = runner
        return runner.run(data_iter, criterion, optimizer, return_loss, return_outputs)
