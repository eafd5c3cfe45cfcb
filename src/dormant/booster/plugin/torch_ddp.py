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
    then wrapped. Keyword arguments go to ``DistributedDataParallel`` (``broadcast_buffers``,
    ``bucket_cap_mb``, ``find_unused_parameters``, ``check_reduction``,
    ``gradient_as_bucket_view``, ``static_graph``); ``max_norm`` clips inside
    ``optimizer.step()``. Mixed precision: ``torch.autocast`` in the training step.

    Example::

        >>> booster = Booster(plugin=TorchDDPPlugin(find_unused_parameters=False))  # doctest: +SKIP
    """

    controls_precision = False

    def __init__(
        self, *, max_norm: float = 0.0, fp8_communication: bool = False, **ddp_kwargs: Any
    ) -> None:
        if fp8_communication:
            raise DormantError(
                "TorchDDPPlugin(fp8_communication=True) is not supported: leave it False"
            )
        super().__init__(None, max_norm)
        self.ddp_kwargs = ddp_kwargs

    def configure_model(self, model: nn.Module) -> nn.Module:
        require_process_group(self)
        materialize(model)
        device = _device()
        model.to(device)
        wrapped = DDP(
            model, device_ids=[device] if device.type == "cuda" else None, **self.ddp_kwargs
        )  # type: ignore[arg-type]
        mark_boosted(model)
        mark_boosted(wrapped)  # boosting the returned wrapper again would nest DDP(DDP(model))
        return wrapped

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DDP) else model

    @contextlib.contextmanager
    def no_sync(
        self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> Iterator[None]:
        if not isinstance(model, DDP):
            raise DormantError("TorchDDPPlugin.no_sync needs the model boost() returned")
        with model.no_sync():
            yield


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
