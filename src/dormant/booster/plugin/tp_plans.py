"""Tensor-parallel plans: which linear layers to split by columns and which by rows.

A plan maps module paths (``*`` matches one path component) to DTensor ``ParallelStyle``s, as
``torch.distributed.tensor.parallel.parallelize_module`` expects. Column-parallel layers feed
row-parallel ones, so each block needs one all-reduce per attention and one per MLP.
"""

from __future__ import annotations

from fnmatch import fnmatch
from functools import partial
from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Placement, Replicate, Shard, distribute_module
from torch.distributed.tensor import distribute_tensor as _distribute
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from ...errors import DormantError


def _shard_params(
    module: nn.Module, mesh: DeviceMesh, placements: dict[str, Placement], src: int | None
) -> None:
    for name, placement in placements.items():
        param = getattr(module, name, None)
        if param is not None:
            dist = _distribute(param, mesh, [placement], src_data_rank=src)
            module.register_parameter(name, nn.Parameter(dist, param.requires_grad))


# transformers' ``Conv1D`` (GPT-2) stores its weight as (in, out), the transpose of
# ``nn.Linear``'s, which DTensor's own styles do not accept.
class Conv1DColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` for transformers' ``Conv1D``: weight split on its output dim 1."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        shard: dict[str, Placement] = {"weight": Shard(1), "bias": Shard(0)}
        return _distribute_conv1d(self, module, device_mesh, shard)


class Conv1DRowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` for transformers' ``Conv1D``: weight split on its input dim 0."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        self.desired_input_layouts = (Shard(-1),)
        shard: dict[str, Placement] = {"weight": Shard(0), "bias": Replicate()}
        return _distribute_conv1d(self, module, device_mesh, shard)


def _distribute_conv1d(
    style: Any, module: nn.Module, mesh: DeviceMesh, placements: dict[str, Placement]
) -> nn.Module:
    return distribute_module(
        module,
        mesh,
        lambda _name, mod, mesh: _shard_params(mod, mesh, placements, style.src_data_rank),
        partial(style._prepare_input_fn, style.input_layouts, style.desired_input_layouts),
        partial(style._prepare_output_fn, style.output_layouts, style.use_local_output),
    )


_STYLES: dict[str, type[ColwiseParallel] | type[RowwiseParallel]] = {
    "colwise": ColwiseParallel,
    "rowwise": RowwiseParallel,
    "conv1d_colwise": Conv1DColwiseParallel,
    "conv1d_rowwise": Conv1DRowwiseParallel,
}

_BERT_LAYER = {
    "attention.self.query": "colwise",
    "attention.self.key": "colwise",
    "attention.self.value": "colwise",
    "attention.output.dense": "rowwise",
    "intermediate.dense": "colwise",
    "output.dense": "rowwise",
}


# GPT-2 fuses q, k and v in one ``c_attn`` whose output the attention splits at fixed widths, so
# its columns cannot be divided among ranks by heads: attention stays whole on every rank and
# the MLP (two thirds of each block's weights) is split.
_GPT2_LAYER = {"mlp.c_fc": "conv1d_colwise", "mlp.c_proj": "conv1d_rowwise"}


def plan_for(model: nn.Module) -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of a known model family (Llama-family, BERT, GPT-2)."""
    base: nn.Module = getattr(model, "base_model", model)
    prefix = _prefix_of(model, base)
    config = getattr(model, "config", None)
    plan: dict[str, str] | None = getattr(config, "base_model_tp_plan", None)
    if not plan and type(base).__name__ in ("BertModel", "RobertaModel"):
        plan = {f"encoder.layer.*.{k}": v for k, v in _BERT_LAYER.items()}
    if not plan and type(base).__name__ == "GPT2Model":
        plan = {f"h.*.{k}": v for k, v in _GPT2_LAYER.items()}
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


def check_plan_matches(model: nn.Module, plan: dict[str, ParallelStyle]) -> None:
    """Raise if a plan key reaches no module (``parallelize_module`` only warns and skips it)."""
    unmatched = [key for key in plan if key and not _matches(model, key.split("."))]
    if unmatched:
        raise DormantError(
            f"tp_plan key(s) matching no module of {type(model).__name__}, so nothing would be "
            f"split by them: {'; '.join(_describe_miss(model, key) for key in unmatched)}. Keys "
            "are module paths from the model's root ('*' matches one name): fix them, or pass "
            "HybridParallelPlugin(tp_plan={module path: ColwiseParallel() | RowwiseParallel()})"
        )


def reaching(model: nn.Module, plan: dict[str, ParallelStyle]) -> dict[str, ParallelStyle]:
    """The entries of ``plan`` whose key reaches a module of ``model`` (a pipeline stage keeps
    the plan's keys for the modules it holds)."""
    return {key: style for key, style in plan.items() if not key or _matches(model, key.split("."))}


def _resolve(model: nn.Module, tokens: list[str]) -> tuple[list[tuple[str, nn.Module]], int]:
    """Match a plan key's path components one at a time, as ``parallelize_module`` does.

    Returns the (path, module) pairs reached and how many components matched: all of them, or
    those before the first that no child matches (the pairs are then where it stopped).
    """
    reached: list[tuple[str, nn.Module]] = [("", model)]
    for depth, token in enumerate(tokens):
        below = [
            (_join(path, name), child)
            for path, module in reached
            for name, child in module.named_children()
            if fnmatch(name, token)
        ]
        if not below:
            return reached, depth
        reached = below
    return reached, len(tokens)


def _matches(model: nn.Module, tokens: list[str]) -> bool:
    return _resolve(model, tokens)[1] == len(tokens)


def _describe_miss(model: nn.Module, key: str) -> str:
    """Where ``key`` stops matching, what exists there, and modules named like its last part."""
    tokens = key.split(".")
    reached, depth = _resolve(model, tokens)
    under = repr(".".join(tokens[:depth])) if depth else "the root"
    there = [_join(path, name) for path, m in reached for name, _ in m.named_children()]
    text = f"{key!r} has no {tokens[depth]!r} under {under} (there: {_few(there, 6) or 'none'})"
    if any(hasattr(m, tokens[depth]) for _, m in reached):  # "...q_proj.weight"
        text += f", {tokens[depth]!r} is not a module: keys end at the module to split"
    alike = [n for n, _ in model.named_modules() if n and fnmatch(n.rsplit(".", 1)[-1], tokens[-1])]
    return text + (f", modules named {tokens[-1]!r}: {_few(alike, 3)}" if alike else "")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _few(names: list[str], most: int) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
