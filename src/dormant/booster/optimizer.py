"""The boosted optimizer: the user's optimizer plus loss scaling and gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def _local_norm(grads: Iterable[torch.Tensor], norm_type: float) -> torch.Tensor | None:
    """The norm of ``grads`` on this rank's mesh (None without any): DTensor norms are reduced
    over the mesh they live on, once per distinct (mesh, placements), not once per tensor."""
    groups: dict[Any, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type, foreach=False)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        return None
    device = norms[0].device
    stacked = torch.stack([n.to(device, torch.float32) for n in norms])
    if math.isinf(norm_type):
        return stacked.max()
    return stacked.pow(norm_type).sum().pow(1.0 / norm_type)


def total_norm(
    grads: Iterable[torch.Tensor],
    norm_type: float = 2.0,
    group: dist.ProcessGroup | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The norm of all ``grads`` together, as one unsharded tensor on every rank.

    Gradients sharded by FSDP2 or tensor parallelism are DTensors: their norm is reduced over
    the mesh they live on, once per distinct (mesh, placements), not once per tensor. With
    ``group`` (the pipeline stages, each holding only its own layers' gradients), the stages'
    norms are combined too: every rank of ``group`` must call it, with gradients or without
    (then its part is zero, on ``device``, where the collective runs).

    Example::

        >>> total_norm([torch.ones(3), torch.ones(1)])
        tensor(2.)
    """
    norm = _local_norm(grads, norm_type)
    if group is None:
        return torch.tensor(0.0) if norm is None else norm
    part = torch.zeros((), device=device) if norm is None else norm.to(device, torch.float32)
    if math.isinf(norm_type):
        dist.all_reduce(part, op=dist.ReduceOp.MAX, group=group)
        return part
    part = part.pow(norm_type)
    dist.all_reduce(part, group=group)
    return part.pow(1.0 / norm_type)


class BoostedOptimizer(torch.optim.Optimizer):
    """What :meth:`~dormant.booster.Booster.boost` returns for an optimizer.

    It is the user's optimizer (``optim``, also :meth:`unwrap`), with the steps a plugin adds:
    fp16 loss scaling (:meth:`backward` scales, :meth:`step` unscales and skips steps whose
    gradients overflowed) and clipping to the plugin's ``max_norm`` inside :meth:`step`.
    With ``pipeline_group`` (the pipeline stages of a rank), norms cover every stage's
    gradients, and ``scaler`` must be a ``ShardedGradScaler`` over the group (see
    ``LossScale.scaler``), so that all stages skip the same overflowed steps: every rank of
    the group must call
    :meth:`step`, :meth:`clip_grad_by_norm` and :meth:`get_grad_norm` together.
    Parameter groups, state and hooks are the wrapped optimizer's own, so learning-rate
    schedulers made before or after boosting drive it.

    Example::

        >>> optimizer.backward(loss)  # doctest: +SKIP
        >>> optimizer.clip_grad_by_norm(1.0)  # doctest: +SKIP
        >>> optimizer.step()  # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_norm: float = 0.0,
        norm_type: float = 2.0,
        scaler: torch.amp.GradScaler | None = None,
        model: nn.Module | None = None,
        pipeline_group: dist.ProcessGroup | None = None,
    ) -> None:
        # Not Optimizer.__init__: every piece of optimizer state stays the wrapped one's.
        self.optim = optimizer
        self.model = model  # the boosted model, for optimizer checkpoints
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.pipeline_group = pipeline_group
        self.scaler = scaler
        self._unscaled = False
        self._grad_norm: float | None = None

    # The wrapped optimizer's own state, read and written through.
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optim.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optim.param_groups = groups

    @property  # type: ignore[override]
    def state(self) -> Any:  # type: ignore[override]
        return self.optim.state

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optim.defaults

    def __getattr__(self, name: str) -> Any:  # hooks, registries and extras of the optimizer
        if name == "optim":
            raise AttributeError(name)
        return getattr(self.optim, name)

    def __repr__(self) -> str:
        return f"BoostedOptimizer({self.optim!r})"

    def unwrap(self) -> torch.optim.Optimizer:
        """The optimizer the user built."""
        return self.optim

    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _device(self) -> torch.device:
        """Where this rank's parameters live: where its collectives over the stages run."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def _norm(self, grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
        return total_norm(grads, norm_type, self.pipeline_group, self._device())

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()``, the loss scaled first under fp16."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        self._unscaled = False  # new scaled gradients
        loss.backward(*args, **kwargs)

    def _unscale(self) -> None:
        if self.scaler is not None and not self._unscaled:
            if self.pipeline_group is not None:
                # Only the last stage scales a loss, and scale() is what sets a scaler up (there
                # is no public call for that alone): the other stages scale nothing instead.
                self.scaler.scale(torch.zeros((), device=self._device()))
            self.scaler.unscale_(self.optim)
            self._unscaled = True

    def get_grad_norm(self, norm_type: float = 2.0, **_: Any) -> float | None:
        """The gradient norm that clipping saw at the last step (with ``max_norm`` set);
        otherwise the current gradients' norm, or None when no parameter has a gradient."""
        if self._grad_norm is not None and norm_type == self.norm_type:
            return self._grad_norm
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not self._any_stage(bool(grads)):
            return None
        self._unscale()
        return float(self._norm(grads, norm_type))

    def _any_stage(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any pipeline stage (on this rank without stages)."""
        if self.pipeline_group is None:
            return flag
        held = torch.tensor(float(flag), device=self._device())
        dist.all_reduce(held, op=dist.ReduceOp.MAX, group=self.pipeline_group)
        return bool(held)

    def clip_grad_by_norm(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """Scale all gradients together so that their norm is at most ``max_norm``; returns
        the norm before clipping."""
        self._unscale()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = self._norm(grads, norm_type)
        if error_if_nonfinite and not torch.isfinite(norm):
            raise RuntimeError(
                f"the total norm of order {norm_type} of the gradients is non-finite, so it "
                "cannot be clipped: pass error_if_nonfinite=False to clip anyway"
            )
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        with torch.no_grad():
            for g in grads:
                g.mul_(coef.to(g.device, g.dtype))
        self._grad_norm = float(norm)
        return norm

    def clip_grad_by_value(self, clip_value: float) -> None:
        """Clamp every gradient element into ``[-clip_value, clip_value]``."""
        self._unscale()
        torch.nn.utils.clip_grad_value_(self.parameters(), clip_value)

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Unscale (fp16), clip to ``max_norm`` (if set), then step the wrapped optimizer."""
        if self.max_norm > 0:
            self.clip_grad_by_norm(self.max_norm, self.norm_type)
        if self.scaler is not None:
            self._unscale()
            result = (
                self.scaler.step(self.optim, closure) if closure else self.scaler.step(self.optim)
            )
            self.scaler.update()
        else:
            result = self.optim.step(closure) if closure else self.optim.step()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)
        self._unscaled = False

    def state_dict(self) -> dict[str, Any]:
        return self.optim.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optim.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optim.add_param_group(param_group)
