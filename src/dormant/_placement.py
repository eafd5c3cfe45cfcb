"""Placement: where computed values go.

For a module materialized on one device, every value lands in the module's own tensor objects:
:func:`install` swaps the lazy tensor's contents for the real ones with
``torch.utils.swap_tensors``, so the Python object stays the same. Tied weights stay tied, and
references taken before materializing (an optimizer built early, a dict of parameters) see the
real values.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple, cast

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ._graph import view_of
from ._lazy_tensor import INTERNAL_ATTRS, LazyTensor
from ._replay import compute, compute_each, progress_bar
from ._slices import Unsliceable, Window
from .errors import MaterializationError


class SlotKind(enum.Enum):
    """How a module holds a tensor."""

    PARAMETER = "parameter"
    BUFFER = "buffer"
    ATTRIBUTE = "attribute"  # a plain attribute, or in a list or dict attribute


class Slot(NamedTuple):  # a tuple: made once per tensor at every scan of a model
    """A place where a module holds a tensor: a parameter, a buffer or a plain attribute."""

    name: str  # fully qualified, as in ``state_dict``
    kind: SlotKind
    tensor: torch.Tensor


def module_tensors(module: nn.Module) -> Iterator[Slot]:
    """Every tensor a module holds, tied ones once per place they are held; and every tensor
    those carry (``p.grad``, ``p.main_grad``), named after them."""
    for prefix, mod in module.named_modules(remove_duplicate=True):
        dot = f"{prefix}." if prefix else ""
        for name, p in mod._parameters.items():
            if p is not None and not isinstance(p, _UNINITIALIZED):
                yield Slot(dot + name, SlotKind.PARAMETER, p)
                yield from _carried(dot + name, p)
        for name, b in mod._buffers.items():
            if b is not None and not isinstance(b, _UNINITIALIZED):
                yield Slot(dot + name, SlotKind.BUFFER, b)
                yield from _carried(dot + name, b)
        for name, value in vars(mod).items():
            if name in _MODULE_OWN:
                continue
            # Most attributes hold neither a tensor nor a container: no generator for them. By
            # type: isinstance would also ask an object for ``__class__``, and a transformers
            # config answers that through its own Python ``__getattribute__``.
            holds = _HOLDING.get(type(value))
            if holds or (holds is None and _holds_tensors(type(value))):
                yield from _attribute_tensors(dot + name, value, set())


# ``nn.LazyLinear``'s parameters before its first forward: no shape, no values, nothing to do.
_UNINITIALIZED = (UninitializedParameter, UninitializedBuffer)
_HOLDERS = (torch.Tensor, list, tuple, dict, set, frozenset, SimpleNamespace)
# What every nn.Module keeps for itself (registries and hook dicts, a dozen dicts per module):
# parameters and buffers are read above, hooks hold no tensors.
_MODULE_OWN = frozenset(vars(nn.Module()))


def _holds_tensors(kind: type) -> bool:
    """Whether values of type ``kind`` may hold tensors that materialize must find; the answer
    is kept in ``_HOLDING`` (``hasattr`` on a type without the attribute raises inside)."""
    holds = _HOLDING.get(kind)
    if holds is None:
        holds = _HOLDING[kind] = issubclass(kind, _HOLDERS) or hasattr(kind, "__dataclass_fields__")
    return holds


_HOLDING: dict[type, bool] = {}  # by type, asked at every scan of every module attribute


def _carried(name: str, t: torch.Tensor) -> list[Slot]:
    """Tensors a tensor carries: its gradient (a leaf's only: reading a non-leaf's warns) and
    tensors set as its attributes (Megatron's ``main_grad``). A list, not a generator: most
    tensors carry none, and a generator per tensor doubled the time of a scan."""
    found = []
    if t.is_leaf and (grad := t.grad) is not None:
        found.append(Slot(f"{name}.grad", SlotKind.ATTRIBUTE, grad))
    attrs = t.__dict__
    if attrs and not attrs.keys() <= INTERNAL_ATTRS:
        for key, value in attrs.items():
            if key not in INTERNAL_ATTRS and isinstance(value, torch.Tensor):
                found.append(Slot(f"{name}.{key}", SlotKind.ATTRIBUTE, value))
    return found


def _attribute_tensors(name: str, value: object, seen: set[int]) -> Iterator[Slot]:
    """Tensors held in an attribute, however deep in containers (lists, tuples, dicts, sets,
    dataclasses, namespaces); ``seen`` guards against cycles.

    By type, as in :func:`module_tensors`: ``isinstance`` that fails asks the object for its
    ``__class__``, and a transformers config (held by most of a model's modules) answers every
    attribute through two Python ``__getattribute__``.
    """
    kind = type(value)
    if issubclass(kind, torch.Tensor):
        assert isinstance(value, torch.Tensor)
        yield Slot(name, SlotKind.ATTRIBUTE, value)
        yield from _carried(name, value)
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    items: Iterable[tuple[str, object]]
    if issubclass(kind, dict):
        items = ((f"[{key!r}]", item) for key, item in cast(dict, value).items())
    elif issubclass(kind, (list, tuple, set, frozenset)):
        brackets = "[{}]" if issubclass(kind, (list, tuple)) else "{{{}}}"
        items = ((brackets.format(i), item) for i, item in enumerate(cast(Iterable, value)))
    elif issubclass(kind, SimpleNamespace):
        items = ((f".{key}", item) for key, item in vars(value).items())
    elif dataclasses.is_dataclass(kind):
        # From the instance's own dict where it has one; by ``fields()``, since a slotted
        # dataclass has no ``__dict__`` and a field may be a class default.
        own = getattr(value, "__dict__", {})
        items = (
            (f".{f.name}", own[f.name] if f.name in own else getattr(value, f.name, None))
            for f in dataclasses.fields(kind)
        )
    else:
        return
    for suffix, item in items:
        if _holds_tensors(type(item)):
            yield from _attribute_tensors(name + suffix, item, seen)


def install(
    tensors: dict[int, tuple[str, LazyTensor]],
    values: dict[int, torch.UntypedStorage],
    root: nn.Module | None = None,
) -> None:
    """Turn each lazy tensor into a real one over ``values[id(its storage)]``, in place (``root``,
    the module the names are relative to, for tensors only a TorchScript module can replace)."""
    # Views and results of autograd ops (old-style weight_norm's ``weight``) hold references to
    # other tensors; swap them first so that those are free to swap.
    order = sorted(
        tensors.values(), key=lambda item: (item[1]._base is None, item[1].grad_fn is None)
    )
    done: list[str] = []
    # Gradients live in the C++ tensor that the swap replaces: taken off first (a lazy one is
    # installed in place like any tensor, and must not be held by another), set back at the end.
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _, t in order:
        if t.is_leaf and (grad := t.grad) is not None:
            grads.append((t, grad))
            t.grad = None
    for name, t in order:
        storage = t._lazy_storage
        real = view_of(values[id(storage)], t._meta)
        new: torch.Tensor
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(real, requires_grad=t.requires_grad)
            if (eager_class := type(t).eager_class) is not None:
                new.__class__ = eager_class  # a subclass of nn.Parameter (see lazy_subclass)
        else:
            new = real.requires_grad_(t.requires_grad) if real.is_floating_point() else real
        for key, value in t.__dict__.items():
            if key not in INTERNAL_ATTRS:
                new.__dict__[key] = value
        try:
            _put(root, name, t, new)
            del new  # now the lazy shell: drop it, and the references it held, at once
        except RuntimeError as e:
            for held, grad in grads:  # (back on the lazy ones too: materialize can run again)
                held.grad = grad
            raise MaterializationError(
                f"could not materialize {name!r} in place: {e}. Something else holds a "
                f"reference to its tensor (a view kept outside the module?). Materialized so "
                f"far: {len(done)} of {len(order)}; the rest are still lazy and materialize can "
                "be called again",
                name=name,
                done=tuple(done),
            ) from e
        # The real storage becomes the lazy storage's value: lazy views materialized later
        # share it, as views do in eager.
        storage.cache, storage.cache_version = values[id(storage)], storage.version
        done.append(name)
    for held, grad in grads:
        held.grad = grad


def _put(root: nn.Module | None, name: str, t: LazyTensor, new: torch.Tensor) -> None:
    """Give ``t`` the value of ``new``: in place, by the swap; a tensor that a TorchScript module
    holds, through that module."""
    try:
        _swap(t, new)
    except RuntimeError:
        if _set_in_script(root, name, new):
            return
        # References in garbage not yet collected count too: a traceback's frames (torch.compile
        # run on the lazy model failed, and its frames hold the tensors).
        gc.collect()
        _swap(t, new)
    # Gradient hooks registered while ``t`` was lazy (``register_hook``,
    # ``register_post_accumulate_grad_hook``): their dicts stay with the Python object, but the
    # swap left them registered on the lazy C++ tensor; setting them again registers them on the
    # real one (the same dicts, so the handles still remove them).
    if (hooks := t._backward_hooks) is not None:
        t._backward_hooks = hooks
    if (post := t._post_accumulate_grad_hooks) is not None:
        t._post_accumulate_grad_hooks = post


def _set_in_script(root: nn.Module | None, name: str, new: torch.Tensor) -> bool:
    """Put ``new`` in place of the tensor called ``name`` if a TorchScript module holds it.

    A scripted module (``torch.jit.script`` in model code) holds its tensors in its C++ object,
    which keeps a reference the swap cannot take over; the module's own ``setattr`` replaces it
    there. The lazy tensor object is not the module's any more (a reference taken before, an
    optimizer's, still sees the lazy one: script after materializing to keep identity).
    """
    if root is None:
        return False
    prefix, _, attr = name.rpartition(".")
    try:
        owner = root.get_submodule(prefix)
    except AttributeError:
        return False
    if not isinstance(owner, torch.jit.ScriptModule):
        return False
    setattr(owner, attr, new)
    return True


def _swap(t: torch.Tensor, new: torch.Tensor) -> None:
    """``torch.utils.swap_tensors(t, new)`` for a lazy tensor and its real value.

    The same steps (class, ``__dict__``, then the C++ tensor), without its checks that cannot
    fail here (neither class has slots) and without its refusal of tensors that something holds
    weak references to (``nn.LSTM`` keeps weak references to its weights): the swap keeps the
    Python object, so those references stay valid and see the real tensor. A tensor used
    elsewhere goes to ``swap_tensors`` itself, which handles a gradient edge or raises its own
    precise error.
    """
    if t._use_count() > 1 or new._use_count() > 1:  # type: ignore[attr-defined]
        torch.utils.swap_tensors(t, new)
        return
    t.__class__, new.__class__ = new.__class__, t.__class__
    t.__dict__, new.__dict__ = new.__dict__, t.__dict__
    torch._C._swap_tensor_impl(t, new)


# --- sharded placement ---------------------------------------------------------------------------
# [Note: sharded materialization]
# A parallel engine (FSDP2, DTensor tensor parallelism) shards a module whose parameters are on
# the meta device without allocating them, then ``to_empty`` allocates only the local shards. So
# dormant hands the engine a meta copy of the module's geometry (``to_meta``), lets it shard and
# allocate, and writes each local shard (``fill_local``). A shard is a box of the full tensor; its
# rows are contiguous ranges of elements, which replay computes alone ([Note: windows] in
# ``_slices.py``): a rank draws and computes only its own part, straight into the shard's memory
# (shards split along a later dimension, as tensor parallelism's row-wise layout does, go through
# bounded chunks of whole rows). A storage whose recorded ops have no window rule (orthogonal_'s
# QR, a data-dependent init) is computed whole, once, and named in the report. Every rank replays
# the same program from the same RNG positions, so shards agree across ranks without
# communication.

# Rows of a column-split shard computed at once: bounds the transient memory per rank.
CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class WholeTensor:
    """A tensor that sharded placement computed whole on every rank, and why."""

    name: str
    nbytes: int
    reason: str


def to_meta(module: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every parameter and buffer by a meta tensor of the same geometry, ties kept.

    Returns the original tensors (lazy or real) by fully qualified name, to fill the allocated
    tensors from with :func:`fill_local`.
    """
    sources: dict[str, torch.Tensor] = {}
    replaced: dict[int, torch.Tensor] = {}
    for prefix, mod in module.named_modules(remove_duplicate=True):
        dot = f"{prefix}." if prefix else ""
        for table in (mod._parameters, mod._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                sources[dot + name] = t
                meta = replaced.get(id(t))
                if meta is None:
                    # contiguous: FSDP2 shards contiguous parameters only (a channels_last conv)
                    meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
                    if isinstance(t, nn.Parameter):
                        meta = nn.Parameter(meta, requires_grad=t.requires_grad)
                    replaced[id(t)] = meta
                table[name] = meta  # type: ignore[index]
    return sources


def to_empty(module: nn.Module, device: torch.device | str) -> None:
    """``module.to_empty(device=...)``, keeping tied parameters and buffers tied.

    ``nn.Module.to_empty`` makes one new tensor per place a meta tensor is held, which unties
    weights (``lm_head.weight is embed.weight``); dormant ties them again.
    """
    groups: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mod in module.modules():
        for table_name in ("_parameters", "_buffers"):
            for name, t in getattr(mod, table_name).items():
                if t is not None:
                    groups.setdefault(id(t), []).append((mod, table_name, name))
    module.to_empty(device=device)
    for places in groups.values():
        first_mod, first_table, first_name = places[0]
        first = getattr(first_mod, first_table)[first_name]
        for mod, table_name, name in places[1:]:
            getattr(mod, table_name)[name] = first


def fill_local(
    module: nn.Module, sources: dict[str, torch.Tensor], *, progress: bool | None = None
) -> list[WholeTensor]:
    """Write each allocated parameter and buffer (or its local shard) from ``sources``.

    Returns the lazy tensors that could not be computed shard by shard (see
    [Note: sharded materialization]).
    """
    targets: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    targets.update(module.named_buffers(remove_duplicate=False))
    lazy: list[tuple[str, LazyTensor, torch.Tensor]] = []
    for name, source in sources.items():
        if isinstance(source, LazyTensor):
            lazy.append((name, source, targets[name]))
        else:
            write_local(targets[name], source)
    # In recorded order, so the replay generator mostly moves forward.
    lazy.sort(key=lambda item: _last_write(item[1]))
    window = Window()
    whole: dict[int, list[tuple[str, LazyTensor, torch.Tensor]]] = {}
    report: list[WholeTensor] = []
    done: set[int] = set()
    bar = progress_bar(len(lazy), progress, "filling shards", "tensor", shown_above=200)
    for name, source, target in lazy:
        bar.update(1)
        if id(target) in done:  # a tied weight: one tensor
            continue
        done.add(id(target))
        try:
            with torch.no_grad():
                _fill_shard(window, source, target)
        except Unsliceable as e:
            storage = source._lazy_storage
            if id(storage) not in whole:
                report.append(WholeTensor(name, storage.nbytes, str(e)))
            whole.setdefault(id(storage), []).append((name, source, target))
    bar.close()

    def on_ready(storage: object, value: torch.UntypedStorage) -> None:
        for _, source, target in whole[id(storage)]:
            write_local(target, view_of(value, source._meta))

    storages = [items[0][1]._lazy_storage for items in whole.values()]
    compute_each(storages, on_ready, progress=progress)
    return report


def _last_write(t: LazyTensor) -> int:
    writers = t._lazy_storage.writers
    return writers[-1].seq if writers else -1


def _fill_shard(window: Window, source: LazyTensor, target: torch.Tensor) -> None:
    """Compute ``target``'s local part of ``source`` alone (see [Note: sharded materialization])."""
    from torch.distributed.tensor import DTensor

    local = target.to_local() if isinstance(target, DTensor) else target
    box = _local_box(target, local)
    meta = source._meta
    if box is None or not meta.is_contiguous():
        raise Unsliceable("its shard is not a box of a contiguous tensor")
    if local.numel() == 0:
        return
    storage, offset = source._lazy_storage, int(meta.storage_offset())
    shape = tuple(int(n) for n in meta.shape)
    if not shape:
        local.copy_(window.values(storage, meta.dtype, offset, offset + 1).reshape(()))
        return
    row = math.prod(shape[1:])
    first, rows = box[0]
    whole_rows = all(b == (0, n) for b, n in zip(box[1:], shape[1:]))
    if whole_rows:  # one contiguous range: computed straight into the shard if it can be
        lo, hi = offset + first * row, offset + (first + rows) * row
        direct = (
            local.is_contiguous() and local.dtype == meta.dtype and local.device == storage.device
        )
        values = window.values(storage, meta.dtype, lo, hi, local.view(-1) if direct else None)
        if not direct:
            local.copy_(values.view(local.shape))
        return
    step = max(1, CHUNK_BYTES // (row * meta.element_size()))
    columns = tuple(slice(o, o + n) for o, n in box[1:])
    for r in range(first, first + rows, step):
        end = min(r + step, first + rows)
        values = window.values(storage, meta.dtype, offset + r * row, offset + end * row)
        local[r - first : end - first].copy_(
            values.view(end - r, *shape[1:])[(slice(None), *columns)]
        )


def _local_box(target: torch.Tensor, local: torch.Tensor) -> list[tuple[int, int]] | None:
    """(offset, length) per dimension of the full tensor that ``local`` holds; None if the
    local part is not such a box (a partial sum)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    from torch.distributed.tensor.placement_types import _StridedShard

    if not isinstance(target, DTensor):
        return [(0, n) for n in target.shape]
    # (FSDP2 over tensor parallelism places ``_StridedShard``s; torch computes their box too)
    kinds = [
        p.is_shard() or p.is_replicate() or isinstance(p, _StridedShard) for p in target.placements
    ]
    if not all(kinds):
        return None
    shape, offset = compute_local_shape_and_global_offset(
        target.shape, target.device_mesh, target.placements
    )
    if tuple(shape) != tuple(local.shape):
        return None
    return list(zip(offset, shape, strict=True))


def write_local(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy into ``target`` its own part of ``full``: all of it, or a DTensor's local shard
    (sliced on this rank, no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(target, DTensor):
            mine = distribute_tensor(
                full.to(target.device), target.device_mesh, target.placements, src_data_rank=None
            )
            target.to_local().copy_(mine.to_local())
        else:
            target.copy_(full)


# --- what the user's own sharding code left lazy ------------------------------------------------
# [Note: materializing what the user sharded]
# Sharding code run on a lazy model (FSDP2's ``fully_shard``, DTensor's ``distribute_tensor`` and
# the parallel styles built on it) only slices, pads and copies, and those ops are recorded like
# any others (a scatter or broadcast of a lazy tensor is replaced by its slice: [Note:
# distributing a lazy tensor] in ``_spmd.py``). What it leaves is lazy tensors out of the
# module's direct sight: the local tensor inside a DTensor parameter, and FSDP2's padded shard
# that this local tensor is a view of. A local storage's program reads only its rank's part of
# the full tensor, so it is computed as a window of its own ([Note: windows] in ``_slices.py``):
# a rank draws and computes its shard alone, and never the full tensor (a column shard, read
# through its strides, spans whole rows of it: those rows). A storage whose recorded ops have no
# window rule (``orthogonal_``, a data-dependent init) is replayed whole, from the full tensor,
# and named in the report.


def sharded_lazy(module: nn.Module) -> Iterator[tuple[str, LazyTensor]]:
    """The lazy tensors inside ``module``'s DTensors and FSDP2 parameter shards, with names."""
    import sys

    if "torch.distributed.tensor" not in sys.modules:  # no DTensor can exist
        return
    for slot in module_tensors(module):
        local = lazy_local(slot.tensor)
        if local is not None:
            yield slot.name, local
    paths = {id(mod): f"{prefix}." if prefix else "" for prefix, mod in module.named_modules()}
    for mod in module.modules():
        state_of = getattr(mod, "_get_fsdp_state", None)  # an FSDP2 module (``fully_shard``)
        group = state_of()._fsdp_param_group if callable(state_of) else None
        for param in group.fsdp_params if group is not None else ():
            info = param._module_info
            name = paths.get(id(info.module), "") + info.param_name
            # (the flat padded shard the parameter's local tensor views; after a forward pass
            # with reshard_after_forward=int, the smaller shard kept until backward)
            for attr in ("_sharded_param_data", "_sharded_post_forward_param_data"):
                data = getattr(param, attr, None)
                if isinstance(data, LazyTensor):
                    yield f"{name} (FSDP2 {attr.strip('_')})", data


def lazy_local(t: torch.Tensor) -> LazyTensor | None:
    """The lazy local tensor of a DTensor, else None."""
    local = getattr(t, "_local_tensor", None)  # DTensor's, without importing DTensor
    return local if isinstance(local, LazyTensor) else None


class LocalWork(NamedTuple):
    """What :func:`compute_local` did."""

    elements: int  # local elements computed alone
    drawn: int  # random numbers drawn for them
    whole: list[WholeTensor]  # storages computed from their whole inputs, and why


def compute_local(
    tensors: dict[int, tuple[str, LazyTensor]],
) -> tuple[dict[int, torch.UntypedStorage], LocalWork]:
    """The values of these local tensors' storages, each computed alone where it can be (see
    [Note: materializing what the user sharded]), by ``id(storage)``, and what it took."""
    window = Window()
    values: dict[int, torch.UntypedStorage] = {}
    whole: dict[int, object] = {}
    report: list[WholeTensor] = []
    elements = 0
    # In recorded order, so the replay generator mostly moves forward.
    for name, t in sorted(tensors.values(), key=lambda item: _last_write(item[1])):
        storage = t._lazy_storage
        if id(storage) in values or id(storage) in whole:
            continue
        n = storage.nbytes // t.element_size()
        step = max(1, CHUNK_BYTES // t.element_size())  # bounds what a strided read spans
        try:
            with torch.no_grad():
                out = torch.empty(n, dtype=t.dtype, device=storage.device)
                for lo in range(0, n, step):
                    window.values(storage, t.dtype, lo, min(n, lo + step), out[lo : lo + step])
        except Unsliceable as e:
            whole[id(storage)] = storage
            report.append(WholeTensor(name, storage.nbytes, str(e)))
            continue
        values[id(storage)] = out.untyped_storage()
        elements += n
    if whole:
        values.update(compute(whole.values()))  # type: ignore[arg-type]
    return values, LocalWork(elements, window.drawn, report)
