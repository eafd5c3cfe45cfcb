"""TorchDDPPlugin: DistributedDataParallel over a model materialized on every rank."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..._materialize import materialize
from ...errors import DormantError
from .base import Plugin, mark_boosted, require_process_group


class TorchDDPPlugin(Plugin):
    """Replicate the model with ``DistributedDataParallel``.

    A lazy model is materialized on every rank (same values everywhere, from the same seed),
    then wrapped. Keyword arguments go to ``DistributedDataParallel``.

    Example::

        >>> booster = Booster(plugin=TorchDDPPlugin(find_unused_parameters=False))  # doctest: +SKIP
    """

    def __init__(self, **ddp_kwargs: Any) -> None:
        self.ddp_kwargs = ddp_kwargs

    def configure_model(self, model: nn.Module) -> nn.Module:
        require_process_group(self)
        if self.mixed_precision is not None:
            self.check_mixed_precision(self.mixed_precision)
        materialize(model)
        device = _device()
        model.to(device)
        wrapped = DDP(
            model, device_ids=[device] if device.type == "cuda" else None, **self.ddp_kwargs
        )  # type: ignore[arg-type]
        mark_boosted(model)
        mark_boosted(wrapped)  # boosting the returned wrapper again would nest DDP(DDP(model))
        return wrapped

    def check_mixed_precision(self, mixed_precision: str) -> None:
        raise DormantError(
            f"TorchDDPPlugin does not apply mixed_precision={mixed_precision!r}; use "
            "torch.autocast in the training step, or an FSDP-based plugin (TorchFSDPPlugin)"
        )

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DDP) else model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        with model.no_sync():  # type: ignore[operator]
            yield


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
