"""LowLevelZeroPlugin: ZeRO stage 1 or 2 on PyTorch's own engines."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from ...errors import DormantError
from .torch_ddp import TorchDDPPlugin
from .torch_fsdp import TorchFSDPPlugin


class LowLevelZeroPlugin(TorchFSDPPlugin):
    """ZeRO stage 1 (optimizer state sharded) or 2 (optimizer state and gradients sharded).

    Stage 2 is FSDP2 with ``reshard_after_forward=False`` (parameters stay gathered between
    forward and backward; gradients and optimizer state are sharded). Stage 1 is
    ``DistributedDataParallel`` with ``ZeroRedundancyOptimizer``, which shards only the optimizer
    state: :meth:`~dormant.booster.Booster.boost` then returns a new optimizer object of the same
    class and settings (and points ``lr_scheduler.optimizer`` at it).

    Example::

        >>> booster = Booster(plugin=LowLevelZeroPlugin(stage=2))  # doctest: +SKIP
    """

    def __init__(self, stage: int = 2) -> None:
        if stage not in (1, 2):
            raise ValueError(f"LowLevelZeroPlugin(stage=...) must be 1 or 2, got {stage}")
        super().__init__(reshard_after_forward=False)
        self.stage = stage
        self._ddp = TorchDDPPlugin()

    def configure_model(self, model: nn.Module) -> nn.Module:
        if self.stage == 2:
            return super().configure_model(model)
        self._ddp.mixed_precision = self.mixed_precision
        return self._ddp.configure_model(model)

    def check_mixed_precision(self, mixed_precision: str) -> None:
        if self.stage == 1:
            raise DormantError(
                f"LowLevelZeroPlugin(stage=1) runs DDP, which does not apply "
                f"mixed_precision={mixed_precision!r}: use LowLevelZeroPlugin(stage=2), or "
                "torch.autocast in the training step"
            )

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self._ddp.unwrap(model) if self.stage == 1 else model

    def no_sync(self, model: nn.Module):  # type: ignore[no-untyped-def]
        return self._ddp.no_sync(model) if self.stage == 1 else super().no_sync(model)

    def prepare_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, names: dict[int, str]
    ) -> torch.optim.Optimizer:
        """Stage 1: the same optimizer class and settings, its state sharded across ranks."""
        optimizer = super().prepare_optimizer(optimizer, model, names)
        if self.stage != 1:
            return optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return ZeroRedundancyOptimizer(
            params, optimizer_class=type(optimizer), **optimizer.defaults
        )
