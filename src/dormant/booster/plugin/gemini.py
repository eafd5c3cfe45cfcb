"""GeminiPlugin: FSDP2 with parameters offloaded to CPU and mixed precision."""

from __future__ import annotations

from .torch_fsdp import TorchFSDPPlugin


class GeminiPlugin(TorchFSDPPlugin):
    """ZeRO-3 with CPU offload: FSDP2 ``fully_shard`` with ``CPUOffloadPolicy``.

    Sharded parameters, gradients and optimizer state live in CPU memory; FSDP2 copies each
    block's parameters to the accelerator for its forward and backward. Use it with
    ``Booster(mixed_precision="bf16")`` for the usual mixed-precision setup.

    Example::

        >>> booster = Booster(plugin=GeminiPlugin(), mixed_precision="bf16")  # doctest: +SKIP
    """

    offload = True
