"""Checkpoints of boosted models and optimizers, in the layouts of the API dormant follows.

``gather_dtensor=True`` (the default) writes the full, unsharded tensors from rank 0: one file
(``shard=False``), or a transformers-style folder of files of at most ``size_per_shard`` MB with
an index (``shard=True``); safetensors with ``use_safetensors=True``, else ``torch.save``.
``gather_dtensor=False`` writes a ``torch.distributed.checkpoint`` folder instead, each rank its
own shards, loadable at any world size. Loading reads any of them and writes each rank's own
part of each tensor, one tensor at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..._placement import write_local
from ...checkpoint import CheckpointError, read_checkpoint

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _is_dcp(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ".metadata").exists()


def save_model(
    module: nn.Module,
    checkpoint: str,
    *,
    shard: bool,
    gather_dtensor: bool,
    prefix: str | None,
    size_per_shard: int,
    use_safetensors: bool,
) -> None:
    if not gather_dtensor:
        dcp.save(get_model_state_dict(module), checkpoint_id=checkpoint)
        return
    state: dict[str, Any] = get_model_state_dict(module, options=_FULL)  # rank 0 only
    if dist.get_rank() == 0:
        state = {f"{prefix or ''}{k}": v for k, v in state.items()}
        if use_safetensors:
            state = _once_per_storage(state)
        if shard:
            _save_folder(state, Path(checkpoint), size_per_shard * 2**20, use_safetensors)
        else:
            _save_file(state, Path(checkpoint), use_safetensors)
    dist.barrier()


def _once_per_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory: tied weights are stored under one name,
    # and loading finds them through the other (see load_model)
    seen: set[tuple[int, int]] = set()
    unique = {}
    for key, t in state.items():
        where = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        if where not in seen:
            seen.add(where)
            unique[key] = t.contiguous()
    return unique


def _save_file(state: dict[str, torch.Tensor], path: Path, use_safetensors: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if use_safetensors:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)


def _save_folder(
    state: dict[str, torch.Tensor], folder: Path, max_bytes: int, use_safetensors: bool
) -> None:
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += nbytes
    stem, ext = ("model", "safetensors") if use_safetensors else ("pytorch_model", "bin")
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
        _save_file(group, folder / name, use_safetensors)
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def load_model(module: nn.Module, checkpoint: str, strict: bool) -> None:
    if _is_dcp(checkpoint):
        state = get_model_state_dict(module)
        dcp.load(state, checkpoint_id=checkpoint)
        set_model_state_dict(module, state, options=StateDictOptions(strict=strict))
        return
    tensors = read_checkpoint(checkpoint)
    targets: dict[str, torch.Tensor] = module.state_dict(keep_vars=True)  # persistent ones
    by_tensor: dict[int, list[str]] = {}
    for name, t in targets.items():
        by_tensor.setdefault(id(t), []).append(name)
    # A tied tensor is loaded once, from whichever of its names the file holds.
    missing = [
        n for names in by_tensor.values() if not any(k in tensors for k in names) for n in names
    ]
    unexpected = sorted(set(tensors) - set(targets))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{checkpoint} does not fit {type(module).__name__}: "
            f"{len(missing)} missing ({', '.join(missing[:8])}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:8])}); nothing was loaded. "
            "Pass strict=False to load the keys that match",
            missing=missing,
            unexpected=unexpected,
        )
    for names in by_tensor.values():
        key = next((k for k in names if k in tensors), None)
        if key is not None:
            write_local(targets[names[0]], tensors[key]())


def save_optimizer(
    module: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: str, *, gather: bool
) -> None:
    if not gather:
        dcp.save(get_optimizer_state_dict(module, optimizer), checkpoint_id=checkpoint)
        return
    state = get_optimizer_state_dict(module, optimizer, options=_FULL)
    if dist.get_rank() == 0:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, checkpoint)
    dist.barrier()


def load_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: str) -> None:
    if _is_dcp(checkpoint):
        state = get_optimizer_state_dict(module, optimizer)
        dcp.load(state, checkpoint_id=checkpoint)
        set_optimizer_state_dict(module, optimizer, state)
        return
    full = torch.load(checkpoint, map_location="cpu", weights_only=True)
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(module, optimizer, full, options=options)
