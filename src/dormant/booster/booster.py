"""Booster: applies a plugin to a model, its optimizer, criterion, dataloader and scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .plugin.base import Plugin, check_not_boosted
from .plugin.torch_ddp import TorchDDPPlugin


class Booster:
    """Train with one of PyTorch's distributed engines through a plugin.

    Args:
        plugin: a :mod:`dormant.booster.plugin` plugin; by default :class:`TorchDDPPlugin`.
        mixed_precision: ``None``, ``"bf16"`` or ``"fp16"``; applied by plugins that support it
            (the FSDP-based ones, through ``MixedPrecisionPolicy``).

    Example::

        >>> booster = Booster(plugin=TorchDDPPlugin())  # doctest: +SKIP
        >>> model, optimizer, criterion, dataloader, scheduler = booster.boost(
        ...     model, optimizer, criterion, dataloader, scheduler
        ... )  # doctest: +SKIP
    """

    def __init__(self, plugin: Plugin | None = None, mixed_precision: str | None = None) -> None:
        if mixed_precision not in (None, "bf16", "fp16"):
            raise ValueError(
                f"mixed_precision must be None, 'bf16' or 'fp16', got {mixed_precision!r}"
            )
        self.plugin = plugin if plugin is not None else TorchDDPPlugin()
        self.plugin.mixed_precision = mixed_precision

    def boost(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: Callable[..., Any] | None = None,
        dataloader: torch.utils.data.DataLoader | None = None,
        lr_scheduler: Any = None,
    ) -> tuple[nn.Module, Any, Any, Any, Any]:
        """Shard or replicate ``model`` (lazy, partly lazy or real) and wrap the rest to match.

        Returns ``(model, optimizer, criterion, dataloader, lr_scheduler)``; ``None`` stays
        ``None``. An optimizer made before boosting keeps working: its parameter groups are
        pointed at the boosted model's parameters. Dataloaders get a ``DistributedSampler``.
        """
        check_not_boosted(model)
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        model = self.plugin.configure_model(model)
        if optimizer is not None:
            prepared = self.plugin.prepare_optimizer(optimizer, model, names)
            if prepared is not optimizer and lr_scheduler is not None:
                lr_scheduler.optimizer = prepared
            optimizer = prepared
        if dataloader is not None:
            dataloader = self.plugin.prepare_dataloader(dataloader)
        return model, optimizer, criterion, dataloader, lr_scheduler

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Backpropagate ``loss`` (the engines reduce gradients in their backward hooks)."""
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Accumulate gradients locally, without reducing them across ranks."""
        with self.plugin.no_sync(model):
            yield

    def save_model(self, model: nn.Module, checkpoint_dir: str) -> None:
        """Save the model, sharded, with ``torch.distributed.checkpoint`` (every rank calls it)."""
        self.plugin.save_model(model, checkpoint_dir)

    def load_model(self, model: nn.Module, checkpoint_dir: str) -> None:
        """Load a checkpoint written by :meth:`save_model`, resharding as needed."""
        self.plugin.load_model(model, checkpoint_dir)

    def save_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str
    ) -> None:
        """Save the optimizer state, sharded, with ``torch.distributed.checkpoint``."""
        self.plugin.save_optimizer(model, optimizer, checkpoint_dir)

    def load_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str
    ) -> None:
        """Load an optimizer state written by :meth:`save_optimizer`."""
        self.plugin.load_optimizer(model, optimizer, checkpoint_dir)

    def export_safetensors(self, model: nn.Module, path: str) -> None:
        """Write the full (unsharded) model to one safetensors file from rank 0."""
        self.plugin.export_safetensors(model, path)
