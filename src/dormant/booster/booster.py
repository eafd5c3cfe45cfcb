"""Booster: applies a plugin to a model, its optimizer, criterion, dataloader and scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .plugin.base import Plugin, check_not_boosted
from .plugin.torch_ddp import TorchDDPPlugin

_PLUGINS = (
    "TorchDDPPlugin()",
    "TorchFSDPPlugin()",
    "LowLevelZeroPlugin(stage=2)",
    "GeminiPlugin()",
    "HybridParallelPlugin(tp_size=...)",
)
# Other spellings of the two precisions (torch.bfloat16, "BF16"), mapped to the accepted one.
_PRECISIONS = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
}


def _check_plugin(plugin: object) -> Plugin:
    if isinstance(plugin, Plugin):
        return plugin
    if isinstance(plugin, type) and issubclass(plugin, Plugin):
        got, what = f"the class {plugin.__name__}", f"Booster(plugin={plugin.__name__}())"
    else:
        got = f"{plugin!r} ({type(plugin).__name__})"
        what = "one of them, e.g. Booster(plugin=dormant.booster.plugin.TorchFSDPPlugin())"
    raise TypeError(
        f"Booster(plugin=...) takes a plugin object from dormant.booster.plugin "
        f"({', '.join(_PLUGINS)}), got {got}: pass {what}"
    )


def _check_mixed_precision(value: object) -> None:
    if value is None or (isinstance(value, str) and value in ("bf16", "fp16")):
        return
    # torch.bfloat16, "BF16", "float16": name the accepted spelling of the same precision
    spelled = _PRECISIONS.get(str(value).lower().removeprefix("torch."))
    if spelled is not None:
        what = f"pass mixed_precision={spelled!r}"
    else:
        what = "pass 'bf16' or 'fp16' (the FSDP-based plugins build the MixedPrecisionPolicy)"
    error = ValueError if isinstance(value, str) else TypeError
    raise error(
        f"Booster(mixed_precision=...) takes None, 'bf16' or 'fp16', got {value!r} "
        f"({type(value).__name__}): {what}"
    )


class Booster:
    """Train with one of PyTorch's distributed engines through a plugin.

    Args:
        plugin: a :mod:`dormant.booster.plugin` plugin object; by default
            :class:`TorchDDPPlugin`. Anything else raises ``TypeError``.
        mixed_precision: ``None``, ``"bf16"`` or ``"fp16"``; applied by plugins that support it
            (the FSDP-based ones, through ``MixedPrecisionPolicy``). Other values raise
            ``TypeError`` or ``ValueError``; a plugin that cannot apply it raises
            :class:`~dormant.errors.DormantError`.

    Example::

        >>> booster = Booster(plugin=TorchDDPPlugin())  # doctest: +SKIP
        >>> model, optimizer, criterion, dataloader, scheduler = booster.boost(
        ...     model, optimizer, criterion, dataloader, scheduler
        ... )  # doctest: +SKIP
    """

    def __init__(self, plugin: Plugin | None = None, mixed_precision: str | None = None) -> None:
        self.plugin = _check_plugin(plugin) if plugin is not None else TorchDDPPlugin()
        _check_mixed_precision(mixed_precision)
        if mixed_precision is not None:
            self.plugin.check_mixed_precision(mixed_precision)
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
