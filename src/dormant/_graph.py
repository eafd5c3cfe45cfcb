"""The op graph: lazy storages, recorded ops and the references between them.

See [Note: the op graph] below; this module holds data only. Recording fills it
(``_record.py`` and the modules of its paths, through ``_emit.emit``), replay reads it
(``_replay.py``).

[Note: the op graph]
Eager PyTorch mutates storages; views, ``.data`` and tied weights are several tensors over one
storage. dormant mirrors that: a :class:`LazyStorage` stands for one storage that does not exist
yet, and every lazy tensor is a view (size, stride, offset, dtype: taken from its meta tensor) of
one lazy storage. Each recorded op is a :class:`Node`; a node that creates or mutates a storage
appends itself to that storage's ``writers`` (:meth:`LazyStorage.add_write`, the only place that
does), so ``writers[i]`` produces *version* ``i + 1``. A
node reads its inputs at the version they had when it ran (:class:`TensorRef`). Aliasing is then
ordinary data flow and cycles cannot arise: a node only reads versions older than the ones it
writes.

Ownership points backwards in time: a storage owns its writers, a writer owns the storages it
reads. Nothing points forward strongly (a node refers to the storages it writes through weak
references), so when the last lazy tensor over a storage dies, the part of the graph only it
needed is freed by reference counting alone.
"""

from __future__ import annotations

import enum
import itertools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch
from torch.utils._pytree import TreeSpec, tree_flatten

from ._mapped import MappedFile
from .errors import MaterializationError

_sequence = itertools.count()


def next_sequence() -> int:
    """Global execution order of recorded nodes (replay runs nodes in this order)."""
    return next(_sequence)


class EarlyRecord:
    """Why a storage was computed during construction instead of at materialization."""

    __slots__ = ("nbytes", "numel", "op", "where")

    def __init__(self, op: str, where: str, numel: int, nbytes: int) -> None:
        self.op = op
        self.where = where
        self.numel = numel
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"EarlyRecord(op={self.op!r}, where={self.where!r})"


class LazyStorage:
    """A storage that has not been computed: the unit of aliasing between lazy tensors."""

    __slots__ = ("__weakref__", "cache", "cache_version", "device", "early", "nbytes", "writers")

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.nbytes = nbytes
        self.device = device
        self.writers: list[Node] = []
        # A real value computed early (``.item()`` and friends), valid at ``cache_version``.
        self.cache: torch.UntypedStorage | None = None
        self.cache_version = 0
        # A tuple, not a list: most storages never get one, and each object that lives as long
        # as the graph makes every garbage collection during recording longer.
        self.early: tuple[EarlyRecord, ...] = ()

    @property
    def version(self) -> int:
        return len(self.writers)

    def add_write(
        self,
        node: Node,
        *,
        ref: TensorRef | None = None,
        output_index: int | None = None,
        keeps_base: bool,
    ) -> Write:
        """Record that ``node`` writes this storage: the one place a new version is made."""
        writers = self.writers
        write = Write(self, len(writers) + 1, ref, output_index, keeps_base)
        node.writes.append(write)
        writers.append(node)
        return write


class TensorRef:
    """A lazy tensor as seen by one node: a view (``meta``) of ``storage`` at ``version``.

    References to storages that the node itself writes are weak (see [Note: the op graph]).
    ``shape_only`` marks arguments whose values the op never reads (``empty_like(x)``).
    """

    __slots__ = ("_storage", "meta", "shape_only", "version")

    def __init__(
        self,
        storage: LazyStorage,
        meta: torch.Tensor,
        version: int,
        *,
        weak: bool = False,
        shape_only: bool = False,
    ) -> None:
        self._storage: LazyStorage | weakref.ref[LazyStorage] = (
            weakref.ref(storage) if weak else storage
        )
        self.meta = meta
        self.version = version
        self.shape_only = shape_only

    @property
    def storage(self) -> LazyStorage | None:
        s = self._storage
        return s() if isinstance(s, weakref.ref) else s


class Write:
    """One storage that a node creates or mutates, and whether the old contents survive it."""

    __slots__ = ("_storage", "keeps_base", "output_index", "ref", "version")

    def __init__(
        self,
        storage: LazyStorage,
        version: int,
        ref: TensorRef | None,
        output_index: int | None,
        keeps_base: bool,
    ) -> None:
        self._storage = weakref.ref(storage)
        self.version = version  # the version this write produces
        self.ref = ref  # the argument written through (in-place and out= ops)
        self.output_index = output_index  # or the flat index of a new output
        self.keeps_base = keeps_base  # False when the write replaces every byte of the storage

    @property
    def storage(self) -> LazyStorage | None:
        return self._storage()


class NodeKind(enum.Enum):
    """What a node's ``op`` is. Readers ask the node (``node.kind``, ``node.is_source``,
    ``node.constant``...), never the class of its op."""

    OP = "op"  # an aten op, called with the node's arguments
    CONSTANT = "constant"  # real data given to the context: ``op`` is a :class:`Constant`
    READ = "read"  # a read from a checkpoint file: ``op`` is a :class:`SourceRead`
    LIBRARY = "library"  # a whole library function: ``op`` is a :class:`DeferredCall`


class SourceRead(Protocol):
    """The op of a checkpoint read: called, the whole tensor; its ``window(a, b)`` (if not None)
    reads elements ``[a, b)`` of it, flat, alone."""

    def __call__(self) -> torch.Tensor: ...

    @property
    def window(self) -> Callable[[int, int], torch.Tensor] | None: ...


class RandomStep(Protocol):
    """A random op's place on its generator's stream (``_rng.RngStep``, which owns its meaning;
    see [Note: RNG positions] in ``_rng``)."""

    @property
    def device(self) -> torch.device: ...  # of the generator drawn from

    @property
    def draws(self) -> int | None: ...  # None: not known without running the op

    @property
    def start(self) -> Any: ...  # an ``_rng.Position``; None until resolved

    @property
    def stream(self) -> Any: ...  # the ``_rng.RngStream`` it waits on to be resolved, or None


class Node:
    """One recorded op: ``op(*args, **kwargs)`` with lazy tensors replaced by :class:`TensorRef`."""

    __slots__ = (
        "__weakref__",
        "_label",
        "default_dtype",
        "flat_args",
        "kind",
        "op",
        "reads",
        "rng",
        "seq",
        "spec",
        "where",
        "writes",
    )

    def __init__(
        self,
        op: Callable[..., Any],
        flat_args: list[Any],
        spec: TreeSpec,
        label: str | None = None,
        kind: NodeKind = NodeKind.OP,
    ) -> None:
        self.seq = next_sequence()
        self.op = op
        self.kind = kind
        self.flat_args = flat_args
        self.spec = spec
        self.reads: Sequence[TensorRef] = ()  # set once, when the node reads anything
        self.writes: list[Write] = []
        self.rng: RandomStep | None = None  # for ops that draw random numbers
        # ``torch.get_default_dtype()`` when recorded, if not float32: it decides the result of
        # ``int_tensor / 3`` (see ``_record._add_node``).
        self.default_dtype: torch.dtype | None = None
        # ``file:line`` of the model code, for ops that can fail on values only replay sees
        # (an index out of range): kept for those alone, since finding it costs a stack walk.
        self.where: str | None = None
        self._label = label

    @property
    def is_source(self) -> bool:
        """A node without inputs: a constant, or a read from a checkpoint file."""
        kind = self.kind
        return kind is NodeKind.CONSTANT or kind is NodeKind.READ

    @property
    def random_step(self) -> RandomStep:
        """The place on its random stream of a node known to draw (``rng`` is not None)."""
        assert self.rng is not None, f"{self.label} draws no random numbers"
        return self.rng

    @property
    def constant(self) -> Constant | None:
        """The real data of a constant node, else None."""
        return cast(Constant, self.op) if self.kind is NodeKind.CONSTANT else None

    @property
    def library(self) -> DeferredCall | None:
        """The library function a node replays whole, else None."""
        return cast(DeferredCall, self.op) if self.kind is NodeKind.LIBRARY else None

    @property
    def window(self) -> Callable[[int, int], torch.Tensor] | None:
        """A checkpoint read's reader of a part (``window(a, b)``: elements ``[a, b)``, flat),
        else None."""
        return cast(SourceRead, self.op).window if self.kind is NodeKind.READ else None

    @property
    def label(self) -> str:
        """What reports and errors call the op; by default ``str(op)``, made when first asked
        (recording makes many nodes, and few are ever named)."""
        return self._label if self._label is not None else str(self.op)

    @label.setter
    def label(self, value: str) -> None:
        self._label = value

    def __repr__(self) -> str:
        return f"Node(#{self.seq} {self.label})"


META = torch.device("meta")  # made once: a device argument parsed from a string costs each call
NO_ARGS = tree_flatten(((), {}))[1]  # the call layout of a node without inputs (``_emit.source``)


def meta_like(value: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``value``'s full geometry, storage offset and storage size included."""
    nbytes = value.untyped_storage().nbytes()
    if value.storage_offset() == 0:
        # The common case (a whole storage: a checkpoint tensor, a constant) in one meta op.
        meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=META)
        if meta.untyped_storage().nbytes() == nbytes:
            return meta
    base = torch.empty(nbytes // value.element_size(), dtype=value.dtype, device=META)
    return base.as_strided(value.size(), value.stride(), value.storage_offset())


def view_of(storage: torch.UntypedStorage, meta: torch.Tensor) -> torch.Tensor:
    """A real tensor over ``storage`` with the geometry of ``meta``, made where no mode (the
    recording mode, a user's) sees it."""
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        t = torch.empty(0, dtype=meta.dtype, device=storage.device)
        t.set_(storage, meta.storage_offset(), meta.size(), meta.stride())
    return t


class Constant:
    """The op of a node whose value was given as real data (``torch.tensor([...])``, a real
    tensor copied into a lazy one). Eager reads it at the copy; dormant reads it at
    materialization, so an in-place change in between is an error, not a silent new value."""

    __slots__ = ("file", "value", "version", "where")

    def __init__(self, value: torch.Tensor, where: str, file: MappedFile | None = None) -> None:
        self.value = value
        self.file = file  # the checkpoint file the bytes are mapped from, if any
        try:
            self.version: int | None = value._version
        except RuntimeError:  # inference tensors keep no version counter (and cannot change)
            self.version = None
        self.where = where  # the model code's file:line, for the error

    def __call__(self) -> torch.Tensor:
        if self.file is not None and (change := self.file.changed()) is not None:
            raise MaterializationError(
                f"checkpoint file {self.file.path} changed after the model was built from it "
                f"({change}), so its {tuple(self.value.shape)} tensor was not read: build the "
                "model again (from_pretrained inside LazyInitContext), or keep checkpoint files "
                "unchanged until the model is materialized"
            )
        if self.version is not None and self.value._version != self.version:
            raise MaterializationError(
                f"a real {tuple(self.value.shape)} {self.value.dtype} tensor copied into the lazy "
                f"model at {self.where} was modified in place afterwards; dormant reads it at "
                "materialization, so its values would not be those of the copy: pass a copy "
                "(tensor.clone()) or stop changing it until the model is materialized"
            )
        return self.value


class DeferredCall:
    """The op of a node that replays a whole library function (see ``_deferred``)."""

    __slots__ = ("fn", "name", "tensor_arg")

    def __init__(self, fn: Callable[..., Any], name: str, tensor_arg: str) -> None:
        self.fn = fn
        self.name = name
        self.tensor_arg = tensor_arg

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)
