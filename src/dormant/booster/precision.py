"""Precision: the spellings users pass (``"bf16"``, ``precision="fp16"``), mapped once into a
frozen description that the plugins turn into FSDP2's ``MixedPrecisionPolicy`` and a gradient
scaler."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

_log = logging.getLogger("dormant")

# Each accepted spelling and the canonical name it means (torch.bfloat16 is spelled "bf16").
SPELLINGS = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def canonical(value: object, where: str) -> str | None:
    """``None``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``value``; a clear error otherwise.

    Example::

        >>> canonical("bf16", "precision")
        'bf16'
    """
    if value is None or (isinstance(value, str) and value in DTYPES):
        return value  # type: ignore[return-value]
    spelled = SPELLINGS.get(str(value).lower().removeprefix("torch."))
    what = f"pass {where}={spelled!r}" if spelled else "pass 'fp32', 'bf16' or 'fp16'"
    error = ValueError if isinstance(value, str) else TypeError
    raise error(
        f"{where}=... takes None, 'fp32', 'bf16' or 'fp16', got {value!r} "
        f"({type(value).__name__}): {what}"
    )


@dataclass(frozen=True)
class LossScale:
    """Dynamic loss scaling for fp16, as ``torch.amp.GradScaler`` does it.

    ``hysteresis``, ``min_scale`` and ``max_scale`` (names of the API dormant follows) have no
    counterpart in PyTorch's scaler: non-default values are logged as having no effect.
    """

    initial_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 1000
    hysteresis: int = 2
    min_scale: float = 1.0
    max_scale: float = 2.0**32

    def scaler(self, device: str, group: dist.ProcessGroup | None = None) -> torch.amp.GradScaler:
        """A gradient scaler for ``device`` (``"cpu"`` or ``"cuda"``) with these settings. With
        ``group`` (pipeline stages, each holding its own layers' gradients) its overflow check
        is all-reduced over the group, so every stage skips the same steps."""
        ignored = {
            name: getattr(self, name)
            for name, default in (("hysteresis", 2), ("min_scale", 1.0), ("max_scale", 2.0**32))
            if getattr(self, name) != default
        }
        if ignored:
            _log.warning(
                "dormant: %s have no effect: torch.amp.GradScaler grows and backs off the loss "
                "scale without them",
                ", ".join(f"{k}={v}" for k, v in ignored.items()),
            )
        make = (
            torch.amp.GradScaler
            if group is None
            else functools.partial(ShardedGradScaler, process_group=group)
        )
        return make(
            device,
            init_scale=self.initial_scale,
            growth_factor=self.growth_factor,
            backoff_factor=self.backoff_factor,
            growth_interval=self.growth_interval,
        )


@dataclass(frozen=True)
class Precision:
    """How a plugin computes: the parameters' compute dtype and, for fp16, loss scaling.

    Example::

        >>> Precision.of("bf16").param_dtype
        torch.bfloat16
    """

    name: str = "fp32"
    loss_scale: LossScale | None = None

    @classmethod
    def of(cls, name: str | None, loss_scale: LossScale | None = None) -> Precision:
        name = name or "fp32"
        return cls(name, (loss_scale or LossScale()) if name == "fp16" else None)

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The dtype FSDP2 casts parameters to for compute; None keeps them as they are."""
        return None if self.name == "fp32" else DTYPES[self.name]
