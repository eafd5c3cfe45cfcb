"""load_checkpoint(): load weights into a lazy (or real) model without a second copy.

For a lazy model, loading records one op per tensor, ``param.copy_(<tensor in the file>)``,
whose source is read from the file only when the model is materialized. The copy overwrites the
whole parameter, so replay never computes the random initialization it replaces (see
``_replay``); random draws are still advanced over where later, missing tensors need the stream,
so those get exactly the values eager construction gives them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._lazy_tensor import LazyTensor
from .errors import DormantError

__all__ = ["CheckpointError", "LoadResult", "load_checkpoint"]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _Entry:
    """One tensor of a checkpoint: its metadata now, its values on demand."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]


class CheckpointError(DormantError):
    """The checkpoint does not fit the model; nothing was loaded.

    ``missing`` and ``unexpected`` list keys; ``mismatched`` lists ``(key, in model, in file)``
    descriptions of shape or dtype differences.
    """

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, str, str]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: keys loaded, and keys absent on either side."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike[str], strict: bool = True
) -> LoadResult:
    """Load a checkpoint into ``model``, lazily if ``model`` is lazy.

    ``source`` may be a safetensors file, a directory of safetensors files (sharded, with or
    without an index), a ``torch.save`` state dict file (``pytorch_model.bin``), or a
    ``torch.distributed.checkpoint`` directory. Keys are the model's ``state_dict`` keys.

    Lazy tensors get their values from the file when the model is materialized (safetensors and
    ``torch.save`` files are memory-mapped, so loading holds about one tensor at a time beyond
    the model), and the random initialization they replace is never computed. Real tensors are
    copied at once. The whole checkpoint is checked before anything is loaded: with
    ``strict=True`` missing or unexpected keys raise :class:`CheckpointError`; a shape or dtype
    mismatch always does. Tied weights load once, through either name.

    Example::

        >>> from dormant import LazyInitContext, load_checkpoint, materialize
        >>> with LazyInitContext():
        ...     model = build_model()  # doctest: +SKIP
        >>> load_checkpoint(model, "model.safetensors")  # doctest: +SKIP
        >>> materialize(model)  # doctest: +SKIP
    """
    entries = _open(Path(source))
    targets = model.state_dict(keep_vars=True)
    in_file = {id(t) for k, t in targets.items() if k in entries}
    tied = sorted(k for k, t in targets.items() if k not in entries and id(t) in in_file)
    missing = sorted(k for k in targets if k not in entries and k not in tied)
    unexpected = sorted(k for k in entries if k not in targets)
    mismatched = []
    for key in sorted(targets.keys() & entries.keys()):
        t, e = targets[key], entries[key]
        if tuple(t.shape) != e.shape or t.dtype != e.dtype:
            mismatched.append((key, f"{tuple(t.shape)} {t.dtype}", f"{e.shape} {e.dtype}"))
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            _describe(source, missing, unexpected, mismatched, strict),
            missing,
            unexpected,
            mismatched,
        )
    result = LoadResult(missing=missing, unexpected=unexpected)
    with torch.no_grad():
        for key in sorted(targets.keys() & entries.keys()):
            t, e = targets[key], entries[key]
            t.copy_(_file_tensor(e) if isinstance(t, LazyTensor) else e.read())
            result.loaded.append(key)
    result.loaded = sorted(result.loaded + tied)
    return result


def _describe(
    source: object,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, str, str]],
    strict: bool,
) -> str:
    lines = [f"checkpoint {source} does not fit the model; nothing was loaded"]
    if mismatched:
        lines.append(f"  {len(mismatched)} with another shape or dtype:")
        lines += [f"    {k}: model {a}, checkpoint {b}" for k, a, b in mismatched[:20]]
    if strict and missing:
        lines.append(f"  {len(missing)} missing from the checkpoint: {', '.join(missing[:20])}")
    if strict and unexpected:
        lines.append(f"  {len(unexpected)} not in the model: {', '.join(unexpected[:20])}")
    if strict and (missing or unexpected):
        lines.append("  pass strict=False to load the keys that match and keep the rest")
    return "\n".join(lines)


def _file_tensor(entry: _Entry) -> LazyTensor:
    """A lazy tensor whose value is read from the checkpoint at materialization."""
    from ._graph import LazyStorage, Node, TensorRef, Write
    from ._record import meta_like

    meta = meta_like(torch.empty(entry.shape, dtype=entry.dtype, device="meta"))
    storage = LazyStorage(meta.untyped_storage().nbytes(), torch.device("cpu"))
    node = Node(entry.read, [], torch.utils._pytree.tree_flatten(((), {}))[1], f"read {entry.key}")
    node.writes.append(
        Write(
            storage, 1, ref=TensorRef(storage, meta, 1, weak=True), output_index=0, keeps_base=False
        )
    )
    storage.writers.append(node)
    return LazyTensor(meta, storage)


# --- checkpoint formats --------------------------------------------------------------------------


def _open(path: Path) -> dict[str, _Entry]:
    if path.is_dir():
        if (path / ".metadata").exists():
            return _open_dcp(path)
        files = sorted(path.glob("*.safetensors"))
        if files:
            return {k: e for f in files for k, e in _open_safetensors(f).items()}
        for name in ("pytorch_model.bin", "model.pt", "model.pth"):
            if (path / name).exists():
                return _open_torch(path / name)
        raise FileNotFoundError(f"no checkpoint found in {path}")
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    if path.name.endswith(".index.json"):
        names = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return {k: e for f in names for k, e in _open_safetensors(path.parent / f).items()}
    return _open_torch(path)


def _open_safetensors(path: Path) -> dict[str, _Entry]:
    from safetensors import safe_open

    entries = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            view = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES[view.get_dtype()]
            entries[key] = _Entry(
                key, tuple(view.get_shape()), dtype, _safetensors_reader(path, key)
            )
    return entries


def _safetensors_reader(path: Path, key: str) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        from safetensors import safe_open

        # get_tensor maps the file copy-on-write; copy into anonymous memory so the model never
        # depends on the file (overwriting the checkpoint later must not change the weights).
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key).clone()

    return read


def _open_torch(path: Path) -> dict[str, _Entry]:
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {
        k: _Entry(k, tuple(t.shape), t.dtype, t.clone)
        for k, t in state.items()
        if isinstance(t, torch.Tensor)
    }


def _open_dcp(path: Path) -> dict[str, _Entry]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    entries = {}
    for key, meta in metadata.state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            shape, dtype = tuple(meta.size), meta.properties.dtype
            entries[key] = _Entry(key, shape, dtype, _dcp_reader(path, key, shape, dtype))
    return entries


def _dcp_reader(
    path: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype
) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        value = torch.empty(shape, dtype=dtype)
        dcp.load({key: value}, checkpoint_id=str(path), no_dist=True)
        return value

    return read
