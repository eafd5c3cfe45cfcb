"""What every plugin shares: its precision and clipping settings, the boosted optimizer,
dataloaders, checkpoints, and the marks that keep a model from being boosted twice."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from ...errors import DormantError
from ..optimizer import BoostedOptimizer
from ..precision import LossScale, Precision, canonical
from . import checkpoint_io

_BOOSTED = "_dormant_boosted"
_log = logging.getLogger("dormant")


def check_not_boosted(model: nn.Module) -> None:
    if getattr(model, _BOOSTED, False):
        raise DormantError(
            f"{type(model).__name__} was already boosted: boost each model once, then train "
            "the model that boost() returned"
        )


def mark_boosted(model: nn.Module) -> None:
    object.__setattr__(model, _BOOSTED, True)


def require_process_group(plugin: object) -> None:
    if not dist.is_initialized():
        raise DormantError(
            f"{type(plugin).__name__} needs a process group: call dormant.launch() first "
            "(under torchrun, or alone for one process)"
        )


def no_effect(plugin: str, given: dict[str, Any], defaults: dict[str, Any], why: str) -> None:
    """Log one line naming the arguments of the API dormant follows that were given a value
    other than their default and that PyTorch's engines have no counterpart for."""
    changed = {k: v for k, v in given.items() if k in defaults and v != defaults[k]}
    if changed:
        _log.warning(
            "dormant: %s(%s) has no effect here: %s",
            plugin,
            ", ".join(f"{k}={v!r}" for k, v in changed.items()),
            why,
        )


def refuse_fp8(plugin: str, use_fp8: bool, fp8_communication: bool) -> None:
    """Raise if fp8 compute or communication is asked for: PyTorch's engines here compute and
    communicate in the precision given."""
    if use_fp8 or fp8_communication:
        raise DormantError(
            f"{plugin}(use_fp8=..., fp8_communication=...) is not supported: FSDP2 computes and "
            "communicates in the precision given: leave them False"
        )


class Plugin:
    """Base class of the plugins: a configuration, and the engine calls it makes.

    Subclasses implement :meth:`configure_model`. Common arguments, as in the API dormant
    follows: ``precision`` (``"fp32"``, ``"bf16"`` or ``"fp16"``; None takes the Booster's
    ``mixed_precision``, else the plugin's default), ``max_norm`` (clip gradients to this norm
    inside ``optimizer.step()``; 0 does not clip), ``norm_type``, and fp16 loss scaling
    (``initial_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
    ``hysteresis``, ``min_scale``, ``max_scale``).
    """

    #: The precision used when neither the plugin nor the Booster names one.
    default_precision = "fp32"
    #: Whether the plugin's engine can apply a compute precision (FSDP2's policy).
    controls_precision = True
    #: This rank's pipeline dimension once a model is boosted into stages, else None.
    pp_mesh: DeviceMesh | None = None

    def __init__(
        self,
        precision: str | None = None,
        max_norm: float = 0.0,
        norm_type: float = 2.0,
        loss_scale: LossScale | None = None,
    ) -> None:
        self.precision_arg = canonical(precision, "precision")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.loss_scale = loss_scale or LossScale()
        self.precision = Precision.of(self.precision_arg or self.default_precision, loss_scale)

    def use_mixed_precision(self, mixed_precision: str | None) -> None:
        """Apply the Booster's ``mixed_precision``; called when the Booster is made."""
        if mixed_precision is None or (mixed_precision == "fp32" and not self.controls_precision):
            return  # (fp32 is what a plugin without a precision policy computes in anyway)
        if not self.controls_precision:
            raise DormantError(
                f"{type(self).__name__} does not apply mixed_precision={mixed_precision!r}; use "
                "torch.autocast in the training step, or an FSDP-based plugin (TorchFSDPPlugin)"
            )
        if self.precision_arg not in (None, mixed_precision):
            raise DormantError(
                f"Booster(mixed_precision={mixed_precision!r}) and "
                f"{type(self).__name__}(precision={self.precision_arg!r}) disagree: name the "
                "precision once, on the plugin"
            )
        self.precision = Precision.of(mixed_precision, self.loss_scale)

    def configure_model(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever wrapper the engine adds."""
        return model

    # -- optimizer and data ------------------------------------------------------------------

    def configure_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, names: dict[int, str]
    ) -> BoostedOptimizer:
        """Point an optimizer built on the original parameters at the boosted ones, and wrap it
        with this plugin's loss scaling and clipping.

        ``names`` maps ``id(original parameter)`` to its name in the module before boosting.
        """
        if isinstance(optimizer, BoostedOptimizer):
            raise DormantError("boost() was given an optimizer that boost() already returned")
        if optimizer.state:
            raise DormantError("boost() expects an optimizer that has not stepped yet")
        current = dict(self.unwrap(model).named_parameters(remove_duplicate=False))
        held = [
            names.get(id(p), f"a {tuple(p.shape)} tensor outside the model")
            for g in optimizer.param_groups
            for p in g["params"]
        ]
        gone = [n for n in held if n not in current]
        if gone and self.pp_mesh is None:  # only a pipeline stage drops the others' layers
            raise DormantError(
                f"the optimizer holds parameters that the boosted model no longer has "
                f"({', '.join(gone[:5])}): build the optimizer on the model passed to boost()"
            )
        for group in optimizer.param_groups:
            kept = (names.get(id(p)) for p in group["params"])
            group["params"] = [current[n] for n in kept if n in current]
        loss_scale = self.precision.loss_scale
        stages = None if self.pp_mesh is None else self.pp_mesh.get_group()
        scaler = None
        if loss_scale is not None:
            device = next((p.device.type for p in current.values()), "cpu")
            scaler = loss_scale.scaler(device, stages)
        return BoostedOptimizer(
            optimizer,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scaler=scaler,
            model=model,
            pipeline_group=stages,
        )

    def prepare_dataloader(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 1024,
        drop_last: bool = False,
        pin_memory: bool = False,
        num_workers: int = 0,
        distributed_sampler_cls: type[DistributedSampler[Any]] | None = None,
        **kwargs: Any,
    ) -> DataLoader[Any]:
        """A dataloader of which each rank reads its own part of ``dataset``.

        Example::

            >>> loader = plugin.prepare_dataloader(dataset, 8, shuffle=True)  # doctest: +SKIP
        """
        cls = distributed_sampler_cls or DistributedSampler
        sampler = cls(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            pin_memory=pin_memory,
            num_workers=num_workers,
            **kwargs,
        )

    def distribute_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        """The same dataloader, each rank reading its own part (one already distributed stays)."""
        if isinstance(dataloader.sampler, DistributedSampler):
            return dataloader
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataloader.dataset, shuffle=isinstance(dataloader.sampler, RandomSampler)
        )
        return DataLoader(
            dataloader.dataset,
            batch_size=dataloader.batch_size,
            sampler=sampler,
            num_workers=dataloader.num_workers,
            collate_fn=dataloader.collate_fn,
            pin_memory=dataloader.pin_memory,
            drop_last=dataloader.drop_last,
        )

    @contextlib.contextmanager
    def no_sync(
        self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> Iterator[None]:
        yield

    # -- checkpoints ---------------------------------------------------------------------------

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
        if gather_dtensor and self.pp_mesh is not None:
            raise DormantError(
                "each rank holds only its pipeline stage, so no rank can write the whole model: "
                "pass gather_dtensor=False (a torch.distributed.checkpoint folder that every "
                "stage writes its part of)"
            )
        checkpoint_io.save_model(
            self.unwrap(model),
            checkpoint,
            shard=shard,
            gather_dtensor=gather_dtensor,
            prefix=prefix,
            size_per_shard=size_per_shard,
            use_safetensors=use_safetensors,
        )

    def load_model(self, model: nn.Module, checkpoint: str, strict: bool = True) -> None:
        checkpoint_io.load_model(self.unwrap(model), checkpoint, strict)

    def save_optimizer(
        self, optimizer: torch.optim.Optimizer, checkpoint: str, gather_dtensor: bool = True
    ) -> None:
        model, inner = _model_of(optimizer)
        checkpoint_io.save_optimizer(self.unwrap(model), inner, checkpoint, gather=gather_dtensor)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, checkpoint: str) -> None:
        model, inner = _model_of(optimizer)
        checkpoint_io.load_optimizer(self.unwrap(model), inner, checkpoint)


def _model_of(optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
    if not isinstance(optimizer, BoostedOptimizer):
        raise DormantError(
            f"optimizer checkpoints need the optimizer that boost() returned, got "
            f"{type(optimizer).__name__}: pass model, optimizer, ... = booster.boost(model, "
            "optimizer) and save that optimizer"
        )
    assert optimizer.model is not None
    return optimizer.model, optimizer.optim
