"""load_checkpoint(): load weights into a lazy (or real) model without a second copy.

For a lazy model, loading records one op per tensor, ``param.copy_(<tensor in the file>)``,
whose source is read from the file only when the model is materialized. The copy overwrites the
whole parameter, so replay never computes the random initialization it replaces (see
``_plan``); tensors the checkpoint lacks still start at their own place on the random stream
(see [Note: RNG positions] in ``_rng``), so they get exactly the values eager gives them.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._emit import source
from ._graph import meta_like
from ._lazy_tensor import LazyTensor
from .errors import DormantError

__all__ = ["CheckpointError", "LoadResult", "load_checkpoint", "read_checkpoint"]

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
class _Entry:
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


class CheckpointError(DormantError):
    """The checkpoint does not fit the model, cannot be read, or changed since it was loaded.

    Raised by :func:`load_checkpoint` before anything is loaded, or while materializing when a
    file changed after :func:`load_checkpoint` (then nothing is read from it and the model stays
    lazy). ``missing`` and ``unexpected`` list keys; ``mismatched`` lists
    ``(key, in model, in file)`` descriptions of shape or dtype differences; ``path`` and ``key``
    name the file and the tensor when the error is about one of them.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, str, str]] = (),
        *,
        path: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.path = path
        self.key = key


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: keys loaded, and keys absent on either side."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # How the model's keys were found in a trainer's layout (``"keys under the prefix
    # 'state_dict.module.'"``), or "" when they were the checkpoint's own keys.
    layout: str = ""


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike[str], strict: bool = True
) -> LoadResult:
    """Load a checkpoint into ``model``, lazily if ``model`` is lazy.

    ``source`` may be a safetensors file, a directory of safetensors files (sharded, with or
    without an index), a ``torch.save`` state dict file (``pytorch_model.bin``, sharded with
    ``pytorch_model.bin.index.json``), an index file, or a ``torch.distributed.checkpoint``
    directory. Keys are the model's ``state_dict`` keys. A directory's index says which file
    holds each key (other files there are ignored); without one, a key in two files is an error.

    Lazy tensors get their values from the file when the model is materialized (safetensors and
    ``torch.save`` files are memory-mapped, so loading holds about one tensor at a time beyond
    the model), and the random initialization they replace is never computed. Real tensors are
    copied at once. The whole checkpoint is checked before anything is loaded: with
    ``strict=True`` missing or unexpected keys raise :class:`CheckpointError`; a shape or dtype
    mismatch always does. Tied weights load once, through either name. A file changed after
    loading (size, modification time or inode), or a tensor read with another shape or dtype
    than loading found, raises :class:`CheckpointError` at materialization before its bytes
    reach the model: load again, or keep the files unchanged until then.

    Example::

        >>> from dormant import LazyInitContext, load_checkpoint, materialize
        >>> with LazyInitContext():
        ...     model = build_model()  # doctest: +SKIP
        >>> load_checkpoint(model, "model.safetensors")  # doctest: +SKIP
        >>> materialize(model)  # doctest: +SKIP
    """
    entries = _open(Path(source))
    targets = model.state_dict(keep_vars=True)
    entries, layout = _layout(source, entries, targets)
    # Extra state (``get_extra_state``) is restored through ``set_extra_state``, as
    # ``load_state_dict`` does: any object, not a tensor of the model.
    extra = [k for k in targets if k.rpartition(".")[2] == _EXTRA_STATE]
    for key in extra:
        del targets[key]
    extra_entries: dict[str, _Entry | None] = {k: entries.pop(k) for k in extra if k in entries}
    for key in [k for k, e in entries.items() if e.extra]:
        del entries[key]  # extra state of a module the model lacks: unexpected
        extra_entries[key] = None
    in_file = {id(t) for k, t in targets.items() if k in entries}
    tied = sorted(k for k, t in targets.items() if k not in entries and id(t) in in_file)
    missing = sorted(
        [k for k in targets if k not in entries and k not in tied]
        + [k for k in extra if k not in extra_entries]
    )
    unexpected = sorted(
        [k for k in entries if k not in targets]
        + [k for k, e in extra_entries.items() if e is None]
    )
    if targets and not (targets.keys() & entries.keys()) and not extra_entries:
        raise CheckpointError(
            f"checkpoint {source} holds no key of the model, so nothing would be loaded "
            f"(strict={strict}): it holds {_some(entries)}; the model expects {_some(targets)}. "
            "Save the model's own state_dict(), or rename the keys",
            missing,
            unexpected,
        )
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
    _check_ties(source, targets, entries)
    result = LoadResult(missing=missing, unexpected=unexpected, layout=layout)
    with torch.no_grad():
        for key in sorted(targets.keys() & entries.keys()):
            t, e = targets[key], entries[key]
            t.copy_(_file_tensor(e) if isinstance(t, LazyTensor) else e.read())
            result.loaded.append(key)
    for key in extra:
        entry = extra_entries.get(key)
        if entry is not None:
            prefix = key[: -len(_EXTRA_STATE)].rstrip(".")
            model.get_submodule(prefix).set_extra_state(entry.read())
            result.loaded.append(key)
    result.loaded = sorted(result.loaded + tied)
    return result


_EXTRA_STATE = "_extra_state"  # (``nn.Module``'s suffix of extra-state keys)


def _some(keys: object) -> str:
    names = sorted(keys)  # type: ignore[call-overload]
    shown = ", ".join(repr(k) for k in names[:3])
    return f"{len(names)} keys ({shown}{', ...' if len(names) > 3 else ''})" if names else "none"


def _layout(
    source: object, entries: dict[str, _Entry], targets: dict[str, torch.Tensor]
) -> tuple[dict[str, _Entry], str]:
    """The checkpoint's keys as the model names them, and how they were found.

    Trainers save the model's state dict inside a larger one (``{"state_dict": ..., "epoch":
    n}``, read with the outer keys joined by dots) or under a wrapper's prefix (``module.`` of
    DistributedDataParallel, ``_orig_mod.`` of torch.compile, ``model.`` of Lightning). When no
    key matches as it is, the one prefix under which the most keys match is taken.
    """
    if not targets or targets.keys() & entries.keys():
        return entries, ""
    matches: dict[str, int] = {}
    for key in entries:
        start = key.find(".")
        while start != -1:
            if key[start + 1 :] in targets:
                prefix = key[: start + 1]
                matches[prefix] = matches.get(prefix, 0) + 1
            start = key.find(".", start + 1)
    if not matches:
        return entries, ""
    best = max(matches.values())
    prefixes = sorted(p for p, n in matches.items() if n == best)
    if len(prefixes) > 1:
        raise CheckpointError(
            f"checkpoint {source} holds the model's keys under several prefixes "
            f"({', '.join(repr(p) for p in prefixes)}); load the state dict you mean (or save "
            "the model's own state_dict())",
            path=str(source),
        )
    prefix = prefixes[0]
    found = {k[len(prefix) :]: e for k, e in entries.items() if k.startswith(prefix)}
    return found, f"keys under the prefix {prefix!r}"


def _check_ties(
    source: object, targets: dict[str, torch.Tensor], entries: dict[str, _Entry]
) -> None:
    """Both names of a tied weight in the checkpoint must hold one value: which one a loader
    keeps is an accident of key order (``load_state_dict`` keeps the last)."""
    names: dict[int, list[str]] = {}
    for key in sorted(targets.keys() & entries.keys()):
        names.setdefault(id(targets[key]), []).append(key)
    for keys in names.values():
        if len(keys) < 2:
            continue
        first = entries[keys[0]].read()
        for other in keys[1:]:
            if not torch.equal(first, entries[other].read()):
                raise CheckpointError(
                    f"checkpoint {source} holds different values for {keys[0]!r} and {other!r}, "
                    "which are one tied tensor in the model; nothing was loaded. Save the "
                    "checkpoint from a model with the same ties, or drop the key you do not want",
                    key=other,
                )


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
    meta = meta_like(torch.empty(entry.shape, dtype=entry.dtype, device="meta"))
    # (the entry is the op: replay reads it whole, sharded placement reads its ``window``)
    return LazyTensor(meta, source(entry, meta, torch.device("cpu"), f"read {entry.key}"))


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
) -> _Entry:
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

    return _Entry(key, shape, dtype, read_checked, window)


# --- checkpoint formats --------------------------------------------------------------------------


def read_checkpoint(source: str | os.PathLike[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """Every tensor of a checkpoint by key, each read from the file only when called.

    Accepts what :func:`load_checkpoint` accepts.

    Example::

        >>> tensors = read_checkpoint("model.safetensors")  # doctest: +SKIP
        >>> weight = tensors["weight"]()  # doctest: +SKIP
    """
    return dict(_open(Path(source)))


def _open(path: Path) -> dict[str, _Entry]:
    if path.is_dir():
        return _open_dir(path)
    if path.name.endswith(".index.json"):
        return _open_index(path)
    return _open_file(path)


def _open_dir(path: Path) -> dict[str, _Entry]:
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


def _open_index(index: Path) -> dict[str, _Entry]:
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index} has no weight_map (key -> file); load_checkpoint accepts {_FORMATS}",
            path=str(index),
        )
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_file.setdefault(name, []).append(key)
    entries: dict[str, _Entry] = {}
    for name, keys in sorted(by_file.items()):
        entries.update(_open_indexed(index, index.parent / name, keys))
    return entries


def _open_indexed(index: Path, file: Path, keys: list[str]) -> dict[str, _Entry]:
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


def _open_shards(files: list[Path]) -> dict[str, _Entry]:
    """Shards without an index: a key in two files is ambiguous, never "the last one wins"."""
    entries: dict[str, _Entry] = {}
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


def _open_file(path: Path) -> dict[str, _Entry]:
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


def _open_safetensors(path: Path) -> dict[str, _Entry]:
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


def _open_torch(path: Path) -> dict[str, _Entry]:
    stamps = (_Stamp.of(path),)
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as e:
        raise _unreadable(path, f"torch.load says {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict):
        raise _unreadable(path, f"it holds a {type(state).__name__}, not a state dict")
    # The tensors stay mapped until read: the stamps are checked before any page is touched.
    entries: dict[str, _Entry] = {}
    _torch_entries(state, "", stamps, entries)
    return entries


def _torch_entries(
    state: dict[object, object], prefix: str, stamps: Sequence[_Stamp], out: dict[str, _Entry]
) -> None:
    """The tensors of a torch.save dict; those of dicts inside it (a trainer's ``{"state_dict":
    ..., "epoch": n}``) under their keys joined by dots; extra states whole."""
    for k, value in state.items():
        key = f"{prefix}{k}"
        if isinstance(value, torch.Tensor):
            out[key] = _checked(key, tuple(value.shape), value.dtype, stamps, value.clone,
                                _constant(value))  # fmt: skip
        elif str(k).endswith(_EXTRA_STATE):
            read = _constant(value)
            out[key] = _Entry(key, (), torch.uint8, read, _whole(read), extra=True)
        elif isinstance(value, dict):
            _torch_entries(value, f"{key}.", stamps, out)


def _constant(t: Any) -> Callable[[], Any]:
    return lambda: t


def _whole(read: Callable[[], Any]) -> Callable[[int, int], Any]:
    return lambda a, b: read()


def _open_dcp(path: Path) -> dict[str, _Entry]:
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
