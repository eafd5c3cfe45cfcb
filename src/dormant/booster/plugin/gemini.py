"""GeminiPlugin: ZeRO-3 with optional CPU offload, as FSDP2 ``fully_shard``."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import DormantError
from ..precision import LossScale
from .base import no_effect, refuse_fp8
from .sharding import Sharding
from .torch_fsdp import ShardedPlugin

# Arguments of the API dormant follows that tune its chunk manager, kernels or memory
# statistics: FSDP2 has no counterpart, so they are accepted and logged when changed.
_CHUNK_AND_KERNEL_DEFAULTS: dict[str, Any] = {
    "chunk_config_dict": None,
    "chunk_init_device": None,
    "shard_param_frac": 1.0,
    "warmup_non_model_data_ratio": 0.8,
    "steady_cuda_cap_ratio": 0.9,
    "master_weights": True,
    "strict_ddp_mode": False,
    "search_range_m": 32,
    "hidden_dim": None,
    "min_chunk_size_m": 32,
    "memstats": None,
    "gpu_margin_mem_ratio": 0.0,
    "enable_gradient_accumulation": False,
    "enable_all_optimization": False,
    "enable_fused_normalization": False,
    "enable_flash_attention": False,
    "enable_sequence_parallelism": False,
    "enable_jit_fused": False,
    "enable_sequence_overlap": False,
    "enable_async_reduce": True,
    "verbose": False,
}


class GeminiPlugin(ShardedPlugin):
    """ZeRO-3: parameters, gradients and optimizer state sharded, with FSDP2 ``fully_shard``.

    Arguments follow the API dormant follows, defaults included (``precision="fp16"`` with
    loss scaling from ``initial_scale=2**16``). ``placement_policy="auto"``, or a non-zero
    ``offload_param_frac`` or ``offload_optim_frac``, offloads to CPU with FSDP2's
    ``CPUOffloadPolicy``, which keeps parameters, gradients and optimizer state in CPU memory
    together (the fractions are all or nothing); ``pin_memory`` pins that memory;
    ``force_outputs_fp32`` casts outputs to float32; ``max_norm`` clips inside
    ``optimizer.step()``. ``tp_size``/``extra_dp_size`` > 1 and fp8 are refused with what to use
    instead. Chunk, kernel and memory-statistics settings have no effect (logged when changed).

    Example::

        >>> booster = Booster(plugin=GeminiPlugin(precision="bf16", max_norm=1.0))  # doctest: +SKIP
    """

    default_precision = "fp16"

    def __init__(
        self,
        placement_policy: str = "static",
        offload_optim_frac: float = 0.0,
        offload_param_frac: float = 0.0,
        pin_memory: bool = False,
        force_outputs_fp32: bool = False,
        precision: str | None = None,
        initial_scale: float = 2**16,
        min_scale: float = 1,
        growth_factor: float = 2,
        backoff_factor: float = 0.5,
        growth_interval: int = 1000,
        hysteresis: int = 2,
        max_scale: float = 2**32,
        max_norm: float = 0.0,
        norm_type: float = 2.0,
        tp_size: int = 1,
        extra_dp_size: int = 1,
        use_fp8: bool = False,
        fp8_communication: bool = False,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_CHUNK_AND_KERNEL_DEFAULTS))
        if unknown:
            raise TypeError(f"GeminiPlugin() got unexpected keyword arguments: {unknown}")
        if placement_policy not in ("static", "auto"):
            raise ValueError(
                f"GeminiPlugin(placement_policy={placement_policy!r}): pass 'static' or 'auto'"
            )
        if tp_size > 1 or extra_dp_size > 1:
            raise DormantError(
                "GeminiPlugin(tp_size=..., extra_dp_size=...) is not supported: use "
                "HybridParallelPlugin(tp_size=...) for tensor parallelism, or "
                "LowLevelZeroPlugin(extra_dp_size=...) / TorchFSDPPlugin(sharding_strategy="
                "HYBRID_SHARD) for replicated shard groups"
            )
        refuse_fp8("GeminiPlugin", use_fp8, fp8_communication)
        no_effect(
            "GeminiPlugin",
            kwargs,
            _CHUNK_AND_KERNEL_DEFAULTS,
            "FSDP2 has no chunk manager, fused kernels or memory statistics to tune",
        )
        scale = LossScale(
            initial_scale, growth_factor, backoff_factor, growth_interval, hysteresis, min_scale,
            max_scale,
        )  # fmt: skip
        super().__init__(precision, max_norm, norm_type, scale)
        offload = placement_policy == "auto" or offload_param_frac > 0 or offload_optim_frac > 0
        self.sharding = Sharding(
            offload=offload,
            pin_memory=pin_memory,
            output_dtype=torch.float32 if force_outputs_fp32 else None,
        )
