"""Plugins: each a thin adapter over one of PyTorch's distributed engines.

========================  ==========================================================
plugin                    engine
========================  ==========================================================
TorchDDPPlugin            ``DistributedDataParallel``
TorchFSDPPlugin           FSDP2 ``fully_shard`` (ZeRO-3)
LowLevelZeroPlugin        stage 2: FSDP2, ``reshard_after_forward=False``;
                          stage 1: DDP + ``ZeroRedundancyOptimizer``
GeminiPlugin              FSDP2 with ``CPUOffloadPolicy`` and mixed precision
HybridParallelPlugin      DTensor tensor parallel + FSDP2 on a 2-D mesh
========================  ==========================================================
"""

from .base import Plugin
from .gemini import GeminiPlugin
from .hybrid_parallel import HybridParallelPlugin
from .low_level_zero import LowLevelZeroPlugin
from .torch_ddp import TorchDDPPlugin
from .torch_fsdp import TorchFSDPPlugin

__all__ = [
    "GeminiPlugin",
    "HybridParallelPlugin",
    "LowLevelZeroPlugin",
    "Plugin",
    "TorchDDPPlugin",
    "TorchFSDPPlugin",
]
