"""Booster: applies a plugin to a model, its optimizer, criterion, dataloader and scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DormantError
from .optimizer import BoostedOptimizer
from .plugin.base import Plugin, check_not_boosted
from .plugin.sharding import device_type
from .plugin.torch_ddp import TorchDDPPlugin
from .precision import canonical

_PLUGINS = (
    "TorchDDPPlugin()",
    "TorchFSDPPlugin()",
    "LowLevelZeroPlugin(stage=2)",
    "GeminiPlugin()",
    "HybridParallelPlugin(tp_size=...)",
)


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


class Booster:
    """Train with one of PyTorch's distributed engines through a plugin.

    Args:
        plugin: a :mod:`dormant.booster.plugin` plugin object; by default
            :class:`TorchDDPPlugin`. Anything else raises ``TypeError``. (It may come first,
            ``Booster(plugin)``, or by name.)
        device: where the model trains; the plugins place it themselves (the accelerator if
            there is one, else the CPU), so another device is an error.
        mixed_precision: ``None``, ``"fp32"``, ``"bf16"`` or ``"fp16"``, for plugins whose
            ``precision`` is not given; a plugin that cannot apply it, or whose ``precision``
            says otherwise, raises :class:`~dormant.errors.DormantError`.

    Example::

        >>> booster = Booster(plugin=TorchDDPPlugin())  # doctest: +SKIP
        >>> model, optimizer, criterion, dataloader, scheduler = booster.boost(
        ...     model, optimizer, criterion, dataloader, scheduler
        ... )  # doctest: +SKIP
    """

    def __init__(
        self,
        plugin: Plugin | None = None,
        mixed_precision: str | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.plugin = _check_plugin(plugin) if plugin is not None else TorchDDPPlugin()
        if device is not None and torch.device(device).type != device_type():
            raise DormantError(
                f"Booster(device={str(device)!r}): {type(self.plugin).__name__} trains on "
                f"{device_type()!r} (the accelerator if there is one): leave device=None"
            )
        self.plugin.use_mixed_precision(canonical(mixed_precision, "mixed_precision"))

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
        pointed at the boosted model's parameters, and it comes back as a
        :class:`~dormant.booster.optimizer.BoostedOptimizer` (loss scaling, ``max_norm``
        clipping, ``clip_grad_by_norm``, ``get_grad_norm``). Dataloaders get a
        ``DistributedSampler``.
        """
        check_not_boosted(model)
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        model = self.plugin.configure_model(model)
        if optimizer is not None:
            optimizer = self.plugin.configure_optimizer(optimizer, model, names)
        if dataloader is not None:
            dataloader = self.plugin.distribute_dataloader(dataloader)
        return model, optimizer, criterion, dataloader, lr_scheduler

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Backpropagate ``loss`` (scaled under fp16; the engines reduce gradients in their
        backward hooks)."""
        if isinstance(optimizer, BoostedOptimizer):
            optimizer.backward(loss)
        else:
            loss.backward()

    @contextlib.contextmanager
    def no_sync(
        self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> Iterator[None]:
        """Accumulate gradients locally, without reducing them across ranks."""
        with self.plugin.no_sync(model, optimizer):
            yield

    def save_model(
        self,
        model: nn.Module,
        checkpoint: str,
        shard: bool = False,
        gather_dtensor: bool = True,
        prefix: str | None = None,
        size_per_shard: int = 1024,
        use_safetensors: bool = False,
    ) -> None:
        """Save the model (every rank calls it).

        ``gather_dtensor=True``: full tensors from rank 0, one file (``shard=False``) or a
        transformers-style folder with an index and files of at most ``size_per_shard`` MB
        (``shard=True``), safetensors with ``use_safetensors=True``. ``gather_dtensor=False``:
        a ``torch.distributed.checkpoint`` folder, each rank writing its own shards.
        """
        self.plugin.save_model(
            model, checkpoint, shard, gather_dtensor, prefix, size_per_shard, use_safetensors
        )

    def load_model(self, model: nn.Module, checkpoint: str, strict: bool = True) -> None:
        """Load a checkpoint written by :meth:`save_model` (or any safetensors, ``torch.save``
        or DCP checkpoint of the model), each rank reading its own part."""
        self.plugin.load_model(model, checkpoint, strict)

    def save_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        checkpoint: str,
        shard: bool = False,
        gather_dtensor: bool = True,
        prefix: str | None = None,
        size_per_shard: int = 1024,
    ) -> None:
        """Save the state of an optimizer that :meth:`boost` returned: one ``torch.save`` file
        of the full state from rank 0, or with ``shard=True`` or ``gather_dtensor=False`` a
        ``torch.distributed.checkpoint`` folder."""
        self.plugin.save_optimizer(optimizer, checkpoint, gather_dtensor and not shard)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, checkpoint: str) -> None:
        """Load an optimizer state written by :meth:`save_optimizer`."""
        self.plugin.load_optimizer(optimizer, checkpoint)

    def save_lr_scheduler(self, lr_scheduler: Any, checkpoint: str) -> None:
        """Save a learning-rate scheduler's state (one file, from rank 0)."""
        if not dist.is_initialized() or dist.get_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
            torch.save(lr_scheduler.state_dict(), checkpoint)
        if dist.is_initialized():
            dist.barrier()

    def load_lr_scheduler(self, lr_scheduler: Any, checkpoint: str) -> None:
        """Load a learning-rate scheduler's state saved by :meth:`save_lr_scheduler`."""
        lr_scheduler.load_state_dict(torch.load(checkpoint, weights_only=True))

    def enable_lora(self, model: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        """Not built: wrap the model with ``peft.get_peft_model`` before boosting instead."""
        raise DormantError(
            "Booster.enable_lora is not supported: wrap the model yourself before boosting, "
            "model = peft.get_peft_model(model, LoraConfig(...)), then booster.boost(model, ...)"
        )

    def execute_pipeline(
        self,
        data_iter: Iterator[Any],
        model: nn.Module,
        criterion: Callable[[Any, Any], torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        return_loss: bool = True,
        return_outputs: bool = False,
    ) -> dict[str, Any]:
        """Forward and backward of one batch through the pipeline stages
        (``HybridParallelPlugin(pp_size > 1)``); then call ``optimizer.step()``.

        ``next(data_iter)`` is a dict with ``input_ids`` (and ``labels``) or a pair
        ``(input_ids, labels)``; ``criterion(outputs, inputs)`` gets outputs with ``logits``
        and the model's own ``loss``, and inputs with ``labels``. Returns ``{"loss": ...,
        "outputs": ...}``, the loss on the last stage (None on the others).

        Example::

            >>> criterion = lambda outputs, inputs: outputs.loss
            >>> out = booster.execute_pipeline(it, model, criterion, opt)  # doctest: +SKIP
            >>> opt.step()  # doctest: +SKIP
        """
        run = getattr(self.plugin, "execute_pipeline", None)
        if run is None:
            raise DormantError(
                f"Booster.execute_pipeline needs HybridParallelPlugin(pp_size > 1), not "
                f"{type(self.plugin).__name__}: run forward, booster.backward(loss, optimizer) "
                "and optimizer.step() instead"
            )
        result: dict[str, Any] = run(
            data_iter, model, criterion, optimizer, return_loss, return_outputs
        )
        return result
