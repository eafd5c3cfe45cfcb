"""load_checkpoint(): load weights into a lazy (or real) model without a second copy.

For a lazy model, loading records one op per tensor, ``param.copy_(<tensor in the file>)``,
whose source is read from the file only when the model is materialized. The copy overwrites the
whole parameter, so replay never computes the random initialization it replaces (see
``_plan``); tensors the checkpoint lacks still start at their own place on the random stream
(see [Note: RNG positions] in ``_rng``), so they get exactly the values eager gives them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._checkpoint_files import EXTRA_STATE, Entry, open_checkpoint
from ._emit import source
from ._graph import meta_like
from ._lazy_tensor import LazyTensor
from .errors import CheckpointError

__all__ = ["CheckpointError", "LoadResult", "load_checkpoint", "read_checkpoint"]


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
    entries = open_checkpoint(Path(source))
    targets = model.state_dict(keep_vars=True)
    entries, layout = _layout(source, entries, targets)
    extra, extra_entries = _split_extra(targets, entries)
    tied, missing, unexpected = _check_fit(source, targets, entries, extra, extra_entries, strict)
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
            prefix = key[: -len(EXTRA_STATE)].rstrip(".")
            model.get_submodule(prefix).set_extra_state(entry.read())
            result.loaded.append(key)
    result.loaded = sorted(result.loaded + tied)
    return result


def _split_extra(
    targets: dict[str, torch.Tensor], entries: dict[str, Entry]
) -> tuple[list[str], dict[str, Entry | None]]:
    """Take extra state (``get_extra_state``) out of ``targets`` and ``entries``: the model's
    extra-state keys, and the checkpoint's entries for them (None: a module the model lacks).

    It is restored through ``set_extra_state``, as ``load_state_dict`` does: any object, not a
    tensor of the model.
    """
    extra = [k for k in targets if k.rpartition(".")[2] == EXTRA_STATE]
    for key in extra:
        del targets[key]
    extra_entries: dict[str, Entry | None] = {k: entries.pop(k) for k in extra if k in entries}
    for key in [k for k, e in entries.items() if e.extra]:
        del entries[key]  # extra state of a module the model lacks: unexpected
        extra_entries[key] = None
    return extra, extra_entries


def _check_fit(
    source: object,
    targets: dict[str, torch.Tensor],
    entries: dict[str, Entry],
    extra: list[str],
    extra_entries: dict[str, Entry | None],
    strict: bool,
) -> tuple[list[str], list[str], list[str]]:
    """The keys that load through a tie, the missing and the unexpected keys; raise
    :class:`CheckpointError` if the checkpoint does not fit the model."""
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
    return tied, missing, unexpected


def _some(keys: object) -> str:
    names = sorted(keys)  # type: ignore[call-overload]
    shown = ", ".join(repr(k) for k in names[:3])
    return f"{len(names)} keys ({shown}{', ...' if len(names) > 3 else ''})" if names else "none"


def _layout(
    source: object, entries: dict[str, Entry], targets: dict[str, torch.Tensor]
) -> tuple[dict[str, Entry], str]:
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
    source: object, targets: dict[str, torch.Tensor], entries: dict[str, Entry]
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


def _file_tensor(entry: Entry) -> LazyTensor:
    """A lazy tensor whose value is read from the checkpoint at materialization."""
    meta = meta_like(torch.empty(entry.shape, dtype=entry.dtype, device="meta"))
    # (the entry is the op: replay reads it whole, sharded placement reads its ``window``)
    return LazyTensor(meta, source(entry, meta, torch.device("cpu"), f"read {entry.key}"))


def read_checkpoint(source: str | os.PathLike[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """Every tensor of a checkpoint by key, each read from the file only when called.

    Accepts what :func:`load_checkpoint` accepts.

    Example::

        >>> tensors = read_checkpoint("model.safetensors")  # doctest: +SKIP
        >>> weight = tensors["weight"]()  # doctest: +SKIP
    """
    return dict(open_checkpoint(Path(source)))
