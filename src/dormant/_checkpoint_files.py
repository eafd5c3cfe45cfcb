"""Checkpoint files: the formats :func:`~dormant.load_checkpoint` reads, each tensor an entry
read on demand, and files checked unchanged before each read.

A lazy model reads its tensors at materialization, maybe much later than it was loaded, so an
:class:`Entry` knows its tensor's shape and dtype from the file's header at once and reads its
values only when called; every read first checks the file is still the one that was opened.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

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
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "C64": torch.complex64,
}


_FORMATS = (
    "a safetensors file, a directory of safetensors files (sharded, with or without "
    "model.safetensors.index.json), an index file (*.index.json), a torch.save state dict "
    "(pytorch_model.bin, model.pt, model.pth; sharded with pytorch_model.bin.index.json), or a "
    "torch.distributed.checkpoint directory (with .metadata)"
)
_KEEP_FILES = (
    "call load_checkpoint(model, ...) again to load the files as they are now, or keep "
    "checkpoint files unchanged until the model is materialized"
)


@dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint: its metadata now, its values on demand."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]
    # Elements [a, b) of the flattened tensor, reading only those (a rank's shard).
    window: Callable[[int, int], torch.Tensor]
    # A module's ``get_extra_state()`` saved as an object, not a tensor: ``read`` returns it.
    extra: bool = False

    def __call__(self) -> torch.Tensor:
        return self.read()


EXTRA_STATE = "_extra_state"  # (``nn.Module``'s suffix of extra-state keys)


# --- files changing under a lazy model -----------------------------------------------------------


@dataclass(frozen=True)
class _Stamp:
    """A checkpoint file as :func:`load_checkpoint` saw it.

    A lazy model reads its tensors at materialization, maybe much later: a file rewritten in the
    meantime would hand over another tensor's bytes (a smaller tensor into a larger storage, or
    another dtype reinterpreted), and a file truncated under a memory map raises SIGBUS. So each
    read first checks the file is still the one whose header was read.
    """

    path: Path
    size: int
    mtime_ns: int
    inode: tuple[int, int]

    @classmethod
    def of(cls, path: Path) -> _Stamp:
        st = os.stat(path)
        return cls(path, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino))

    def check(self, key: str) -> None:
        """Raise :class:`CheckpointError` if the file changed since it was stamped."""
        try:
            now = _Stamp.of(self.path)
        except FileNotFoundError:
            changes = ["it was removed"]
        else:
            changes = self._changes(now)
        if changes:
            raise CheckpointError(
                f"checkpoint file {self.path} changed after load_checkpoint ({'; '.join(changes)})"
                f", so {key} was not read from it and the model was not changed; {_KEEP_FILES}",
                path=str(self.path),
                key=key,
            )

    def _changes(self, now: _Stamp) -> list[str]:
        changes = []
        if now.inode != self.inode:
            changes.append("replaced by another file")
        if now.size != self.size:
            changes.append(f"size {self.size} -> {now.size} bytes")
        if now.mtime_ns != self.mtime_ns:
            changes.append("modified")
        return changes


def _checked(
    key: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    stamps: Sequence[_Stamp],
    read: Callable[[], torch.Tensor],
    mapped: Callable[[], torch.Tensor] | None = None,
) -> Entry:
    """An entry whose read refuses a changed file, and checks what it read against ``shape``
    and ``dtype`` (a file rewritten in place with its times restored passes the stamps).

    ``mapped`` gives the tensor over the file's mapped pages, if the format has it: a window
    then copies only its own pages.
    """

    def read_checked(read: Callable[[], torch.Tensor] = read) -> torch.Tensor:
        for stamp in stamps:
            stamp.check(key)
        value = read()
        if tuple(value.shape) != shape or value.dtype != dtype:
            where = stamps[0].path if len(stamps) == 1 else stamps[0].path.parent
            raise CheckpointError(
                f"{key} in {where} is now {tuple(value.shape)} {value.dtype}, but was "
                f"{shape} {dtype} at load_checkpoint: the file changed, and the model was not "
                f"changed; {_KEEP_FILES}",
                path=str(where),
                key=key,
            )
        return value

    def window(a: int, b: int) -> torch.Tensor:
        # (over the mapped pages: the caller copies the elements into its shard at once)
        return read_checked(mapped or read).reshape(-1)[a:b]

    return Entry(key, shape, dtype, read_checked, window)


# --- checkpoint formats --------------------------------------------------------------------------


def open_checkpoint(path: Path) -> dict[str, Entry]:
    """Every tensor of the checkpoint at ``path`` (any format :func:`load_checkpoint` accepts),
    by key, read only on demand."""
    if path.is_dir():
        return _open_dir(path)
    if path.name.endswith(".index.json"):
        return _open_index(path)
    return _open_file(path)


def _open_dir(path: Path) -> dict[str, Entry]:
    if (path / ".metadata").exists():
        return _open_dcp(path)
    index = _find_index(path)
    if index is not None:
        return _open_index(index)
    files = sorted(path.glob("*.safetensors"))
    if files:
        return _open_shards(files)
    for name in ("pytorch_model.bin", "model.pt", "model.pth"):
        if (path / name).exists():
            return _open_file(path / name)
    raise FileNotFoundError(f"no checkpoint found in {path}; load_checkpoint accepts {_FORMATS}")


def _find_index(path: Path) -> Path | None:
    """The directory's index: it alone says which shard holds each key (older shards saved
    with another sharding may still lie next to the current ones)."""
    for pattern in ("*.safetensors.index.json", "*.bin.index.json"):
        found = sorted(path.glob(pattern))
        if len(found) > 1:
            names = ", ".join(f.name for f in found)
            raise CheckpointError(
                f"{path} holds {len(found)} indexes ({names}); pass the index to load as source",
                path=str(path),
            )
        if found:
            return found[0]
    return None


def _open_index(index: Path) -> dict[str, Entry]:
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index} has no weight_map (key -> file); load_checkpoint accepts {_FORMATS}",
            path=str(index),
        )
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_file.setdefault(name, []).append(key)
    entries: dict[str, Entry] = {}
    for name, keys in sorted(by_file.items()):
        entries.update(_open_indexed(index, index.parent / name, keys))
    return entries


def _open_indexed(index: Path, file: Path, keys: list[str]) -> dict[str, Entry]:
    """The entries ``index`` maps to ``file``, and no others from it."""
    if not file.is_file():
        raise CheckpointError(
            f"{index} maps {keys[0]} (and {len(keys) - 1} more) to {file}, which does not "
            "exist; save the checkpoint again so that the index and its shards match",
            path=str(file),
            key=keys[0],
        )
    found = _open_file(file)
    absent = [k for k in keys if k not in found]
    if absent:
        raise CheckpointError(
            f"{index} maps {absent[0]} to {file}, which does not hold it ({len(absent)} such "
            "keys); save the checkpoint again so that the index and its shards match",
            path=str(file),
            key=absent[0],
        )
    return {k: found[k] for k in keys}


def _open_shards(files: list[Path]) -> dict[str, Entry]:
    """Shards without an index: a key in two files is ambiguous, never "the last one wins"."""
    entries: dict[str, Entry] = {}
    origin: dict[str, Path] = {}
    for file in files:
        for key, entry in _open_file(file).items():
            if key in origin:
                raise CheckpointError(
                    f"{key} is in both {origin[key]} and {file}, and no index says which to use; "
                    "remove the stale file, or load the one you mean (or its index) as source",
                    path=str(file),
                    key=key,
                )
            entries[key], origin[key] = entry, file
    return entries


def _open_file(path: Path) -> dict[str, Entry]:
    """Open one file by its contents, whatever its name says."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive
        return _open_torch(path)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) == 9 and head[8:] == b"{":
        return _open_safetensors(path)
    raise _unreadable(path, "it is neither a safetensors file nor a torch.save zip archive")


def _unreadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a checkpoint load_checkpoint can read: {why}; it accepts {_FORMATS}",
        path=str(path),
    )


def _open_safetensors(path: Path) -> dict[str, Entry]:
    from safetensors import SafetensorError, safe_open

    stamps = (_Stamp.of(path),)  # before reading: a change from here on is caught
    entries = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                view = f.get_slice(key)
                shape, dtype = tuple(view.get_shape()), _safetensors_dtype(path, key, view)
                read, mapped = _safetensors_reader(path, key)
                entries[key] = _checked(key, shape, dtype, stamps, read, mapped)
    except SafetensorError as e:
        raise _unreadable(path, f"safetensors says {e}") from e
    return entries


def _safetensors_dtype(path: Path, key: str, view: Any) -> torch.dtype:
    name = view.get_dtype()
    dtype = _SAFETENSORS_DTYPES.get(name)
    if dtype is None:
        raise CheckpointError(
            f"{key} in {path} has safetensors dtype {name}, which torch "
            f"{torch.__version__} has no dtype for; convert it (or load this file eagerly)",
            path=str(path),
            key=key,
        )
    return dtype


def _safetensors_reader(
    path: Path, key: str
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    def mapped() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)  # over the file's pages, mapped copy-on-write

    def read() -> torch.Tensor:
        # A copy in anonymous memory, so the model never depends on the file (overwriting the
        # checkpoint later must not change the weights).
        return mapped().clone()

    return read, mapped


def _open_torch(path: Path) -> dict[str, Entry]:
    stamps = (_Stamp.of(path),)
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as e:
        raise _unreadable(path, f"torch.load says {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict):
        raise _unreadable(path, f"it holds a {type(state).__name__}, not a state dict")
    # The tensors stay mapped until read: the stamps are checked before any page is touched.
    entries: dict[str, Entry] = {}
    _torch_entries(state, "", stamps, entries)
    return entries


def _torch_entries(
    state: dict[object, object], prefix: str, stamps: Sequence[_Stamp], out: dict[str, Entry]
) -> None:
    """The tensors of a torch.save dict; those of dicts inside it (a trainer's ``{"state_dict":
    ..., "epoch": n}``) under their keys joined by dots; extra states whole."""
    for k, value in state.items():
        key = f"{prefix}{k}"
        if isinstance(value, torch.Tensor):
            out[key] = _checked(key, tuple(value.shape), value.dtype, stamps, value.clone,
                                _constant(value))  # fmt: skip
        elif str(k).endswith(EXTRA_STATE):
            read = _constant(value)
            out[key] = Entry(key, (), torch.uint8, read, _whole(read), extra=True)
        elif isinstance(value, dict):
            _torch_entries(value, f"{key}.", stamps, out)


def _constant(t: Any) -> Callable[[], Any]:
    return lambda: t


def _whole(read: Callable[[], Any]) -> Callable[[int, int], Any]:
    return lambda a, b: read()


def _open_dcp(path: Path) -> dict[str, Entry]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    stamps = tuple(_Stamp.of(f) for f in sorted(path.iterdir()) if f.is_file())
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    entries = {}
    for key, meta in metadata.state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            shape, dtype = tuple(meta.size), meta.properties.dtype
            read = _dcp_reader(path, key, shape, dtype)
            entries[key] = _checked(key, shape, dtype, stamps, read)
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
