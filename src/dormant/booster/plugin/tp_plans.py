"""Tensor-parallel plans: which linear layers to split by columns and which by rows.

A plan maps module paths (``*`` matches one path component) to DTensor ``ParallelStyle``s, as
``torch.distributed.tensor.parallel.parallelize_module`` expects. Column-parallel layers feed
row-parallel ones, so each block needs one all-reduce per attention and one per MLP.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from ...errors import DormantError

_STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}

_BERT_LAYER = {
    "attention.self.query": "colwise",
    "attention.self.key": "colwise",
    "attention.self.value": "colwise",
    "attention.output.dense": "rowwise",
    "intermediate.dense": "colwise",
    "output.dense": "rowwise",
}


def plan_for(model: nn.Module) -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of a known model family (Llama-family and BERT)."""
    base: nn.Module = getattr(model, "base_model", model)
    prefix = _prefix_of(model, base)
    config = getattr(model, "config", None)
    plan: dict[str, str] | None = getattr(config, "base_model_tp_plan", None)
    if not plan and type(base).__name__ in ("BertModel", "RobertaModel"):
        plan = {f"encoder.layer.*.{k}": v for k, v in _BERT_LAYER.items()}
    if not plan or any(style not in _STYLES for style in plan.values()):
        raise DormantError(
            f"no tensor-parallel plan known for {type(model).__name__}: pass "
            "HybridParallelPlugin(tp_plan={module path: ColwiseParallel() | RowwiseParallel()})"
        )
    return {prefix + path: _STYLES[style]() for path, style in plan.items()}


def _prefix_of(model: nn.Module, base: nn.Module) -> str:
    if base is model:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}."
    return ""
