"""Replay: how lazy storages get their values, exactly as eager construction computed them.

:func:`compute` plans and runs one *pass* over the op graph:

1. **Plan** the nodes needed for the requested storages, walking back from each storage's current
   version through its writers and their inputs. A write that replaces every byte of a storage
   without reading it (``normal_`` on a whole weight) cuts the walk: the older contents are dead
   and are never computed.
2. **Keep the random streams whole** (see [Note: RNG] in ``_rng.py``): every random step between
   the last known generator state and a needed step is *advanced*: run into scratch memory of the
   same geometry, because eager consumed those numbers.
3. **Run** the needed nodes in recorded order on real tensors, freeing each intermediate storage
   after its last use, and restore every generator's state at the end.

Values computed early (``.item()`` during construction) are kept on the lazy storage and reused.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _mt19937, _rng
from ._graph import Constant, EarlyRecord, LazyStorage, Node, TensorRef, Write
from ._lazy_tensor import LazyTensor, describe
from .errors import DormantError, LazyTensorError, MaterializationError

_COPY = torch.ops.aten.copy_.default


def view_of(storage: torch.UntypedStorage, meta: torch.Tensor) -> torch.Tensor:
    """A real tensor over ``storage`` with the geometry of ``meta``."""
    t = torch.empty(0, dtype=meta.dtype, device=storage.device)
    t.set_(storage, meta.storage_offset(), meta.size(), meta.stride())
    return t


def _allocate(storage: LazyStorage) -> torch.UntypedStorage:
    return torch.empty(storage.nbytes, dtype=torch.uint8, device=storage.device).untyped_storage()


@contextlib.contextmanager
def _real_execution() -> Iterator[None]:
    """Run real ops: no recording modes, no torch-function overrides, no autograd."""
    with _disable_current_modes(), torch._C.DisableTorchFunction(), torch.no_grad():
        yield


class _Scratch:
    """Reusable memory for writes whose values nobody needs (advancing a random stream)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(self, meta: torch.Tensor, device: torch.device) -> torch.Tensor:
        extent = 1 + sum((n - 1) * s for n, s in zip(meta.shape, meta.stride()) if n > 0)
        if meta.numel() == 0:
            extent = 0
        key = (meta.dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < extent:
            buf = self.buffers[key] = torch.empty(extent, dtype=meta.dtype, device=device)
        return buf.as_strided(meta.shape, meta.stride(), 0)


class _Prefetcher:
    """Allocates and touches the memory of fresh CPU storages on a second thread.

    Writing a new tensor first pays a page fault per 4 KiB page; eager construction pays them
    inside the init kernels. Replay knows which storages it will fill next, so a helper thread
    faults their pages in while the main thread draws random numbers. It stays at most
    ``ahead`` bytes ahead, so streaming passes (sharded placement) still hold little at once.
    """

    def __init__(self, storages: list[LazyStorage], ahead: int = 256 * 2**20) -> None:
        self.order = [s for s in storages if s.device.type == "cpu"]
        self.ready: dict[int, threading.Event] = {id(s): threading.Event() for s in self.order}
        self.buffers: dict[int, torch.UntypedStorage] = {}
        self.budget = threading.Semaphore(max(1, ahead // (1 << 20)))
        self.cost = {id(s): max(1, min(s.nbytes >> 20, ahead >> 20)) for s in self.order}
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        if self.order:
            self.thread.start()

    def _run(self) -> None:
        for s in self.order:
            for _ in range(self.cost[id(s)]):
                self.budget.acquire()
            if self.stop:
                return
            buf = _allocate(s)
            with torch.no_grad():
                torch.empty(0, dtype=torch.uint8).set_(buf)[::4096].zero_()  # fault every page
            self.buffers[id(s)] = buf
            self.ready[id(s)].set()

    def take(self, s: LazyStorage) -> torch.UntypedStorage:
        event = self.ready.get(id(s))
        if event is None:
            return _allocate(s)
        event.wait()
        for _ in range(self.cost[id(s)]):
            self.budget.release()
        return self.buffers.pop(id(s))

    def close(self) -> None:
        self.stop = True
        for _ in range(len(self.order) * 256):
            self.budget.release()


class _Generators:
    """Private generators that replay draws from, placed at each random op's position (see
    [Note: RNG positions] in ``_rng.py``): materializing never touches the user's generators,
    and draws between two needed ops are jumped over, not made."""

    def __init__(self) -> None:
        self.private: dict[torch.device, torch.Generator] = {}
        self.at: dict[torch.device, _rng.Position] = {}  # where each stands, when known

    def _place(self, step: _rng.RngStep) -> torch.Generator:
        if step.start is None:
            assert step.stream is not None
            step.stream.resolve(run_for_draws)
        start = step.start
        assert start is not None
        gen = self.private.get(step.device)
        if gen is None:
            gen = self.private[step.device] = torch.Generator(device=step.device)
        here = self.at.pop(step.device, None)
        if here is not None and here.anchor is start.anchor and here.draws <= start.draws:
            if start.draws > here.draws:  # short gaps draw, long ones jump
                gen.set_state(_mt19937.advance(gen.get_state(), start.draws - here.draws))
        else:
            gen.set_state(start.state())
        return gen

    @contextlib.contextmanager
    def placed(self, node: Node, call_kwargs: dict[str, Any]) -> Iterator[Callable[..., Any]]:
        """The op to call (inside the block) so that it draws from its exact place."""
        step = node.rng
        if step is None:
            yield node.op
            return
        gen = self._place(step)
        op = _with_generator(node.op)
        if op is not None:
            call_kwargs["generator"] = gen
            yield op
        else:  # an op that only draws from the default generator: lend it, then give it back
            default = _rng.default_generator(step.device)
            saved = default.get_state()
            default.set_state(gen.get_state())
            try:
                yield node.op
                gen.set_state(default.get_state())
            finally:
                default.set_state(saved)
        if step.draws is not None:
            self.at[step.device] = step.start.after(step.draws)  # type: ignore[union-attr]

    def state(self, device: torch.device) -> torch.Tensor:
        return self.private[device].get_state()


@functools.cache
def _with_generator(op: Any) -> Any:
    """``op``, or its overload that takes a ``generator`` (``randperm.default`` ->
    ``randperm.generator``); None if it has none (``native_dropout``)."""
    if isinstance(op, torch._ops.OpOverload):
        names = [a.name for a in op._schema.arguments]
        if "generator" in names:
            return op
        packet = op.overloadpacket
        for name in packet.overloads():
            other = getattr(packet, name)
            other_names = [a.name for a in other._schema.arguments]
            if "generator" in other_names and [n for n in other_names if n != "generator"] == names:
                return other
        return None
    fn = getattr(op, "fn", None)  # a recorded library call
    return op if fn is not None and "generator" in inspect.signature(fn).parameters else None


def run_for_draws(step: _rng.RngStep) -> torch.Tensor:
    """Run a random op for its draws alone, into scratch memory, from its exact position; return
    the generator state after it (an op whose draw count is not known without running it)."""
    assert step.node is not None
    p = _Pass([], draw_only=[step.node])
    p.execute(lambda s, v: None, progress=False)
    return p.generators.state(step.device)


class _Pass:
    """One replay pass (see the module docstring)."""

    def __init__(
        self,
        targets: list[LazyStorage],
        draw_only: Iterable[Node] = (),
        stats: ReplayStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else ReplayStats()
        self.targets = {id(s): s for s in targets}  # not yet handed over
        self.target_ids = frozenset(self.targets)
        # Use an early value only if the pass needs no version older than it.
        self.usable = self._usable_caches(self._oldest_needed(targets))
        self.run: dict[Node, None] = {}
        self.need: dict[int, set[int]] = defaultdict(set)
        self.storages: dict[int, LazyStorage] = {}
        self._walk([(s, s.version) for s in targets])
        # Nodes run only to find where their random draws end (see [Note: RNG positions]).
        self.draw_only = {n: None for n in draw_only if n not in self.run}
        for n in self.draw_only:
            self._walk([(s, r.version) for r in n.reads if (s := r.storage) is not None])
        self.generators = _Generators()

    # -- planning ------------------------------------------------------------------------------

    @staticmethod
    def _oldest_needed(targets: list[LazyStorage]) -> dict[int, tuple[LazyStorage, int]]:
        oldest: dict[int, tuple[LazyStorage, int]] = {}
        seen: set[tuple[int, int]] = set()
        stack = [(s, s.version) for s in targets]
        while stack:
            s, v = stack.pop()
            if (id(s), v) in seen:
                continue
            seen.add((id(s), v))
            if id(s) not in oldest or v < oldest[id(s)][1]:
                oldest[id(s)] = (s, v)
            if s.cache is not None and v == s.cache_version:
                continue
            node = s.writers[v - 1]
            write = _write_of(node, s, v)
            stack.extend((_storage(r), r.version) for r in node.reads)
            if write.keeps_base:
                stack.append((s, v - 1))
        return oldest

    @staticmethod
    def _usable_caches(oldest: dict[int, tuple[LazyStorage, int]]) -> set[int]:
        return {
            key for key, (s, v) in oldest.items() if s.cache is not None and s.cache_version <= v
        }

    def _walk(self, roots: list[tuple[LazyStorage, int]]) -> None:
        stack = list(roots)
        while stack:
            s, v = stack.pop()
            versions = self.need[id(s)]
            if v in versions:
                continue
            versions.add(v)
            self.storages[id(s)] = s
            if id(s) in self.usable and v == s.cache_version:
                continue
            node = s.writers[v - 1]
            if node not in self.run:
                self.run[node] = None
                stack.extend((_storage(r), r.version) for r in node.reads)
            if _write_of(node, s, v).keeps_base:
                stack.append((s, v - 1))

    # -- execution -----------------------------------------------------------------------------

    def execute(self, on_ready: OnReady, progress: bool | None) -> None:
        """Run the pass; hand each target to ``on_ready`` as soon as its last write ran."""
        items: list[tuple[int, Node, bool]] = [(n.seq, n, True) for n in self.run]
        items += [(n.seq, n, False) for n in self.draw_only]
        items.sort(key=lambda item: item[0])
        self.values: dict[int, torch.UntypedStorage] = {}
        self._start_from_caches()
        self.uses = self._count_uses()
        self.scratch = _Scratch()
        self.on_ready = on_ready
        self.prefetch = _Prefetcher(self._fresh_targets())
        bar = _progress_bar(len(items), progress)
        try:
            with _real_execution():
                for s in list(self.targets.values()):
                    self._hand_over_if_done(s)  # an early value may already be current
                for _, node, real in items:
                    self._execute(node, real)
                    bar.update(1)
            self._advance_caches()
        finally:
            self.prefetch.close()
            bar.close()
        if self.targets:
            raise AssertionError(f"replay did not produce {len(self.targets)} storages")

    def _fresh_targets(self) -> list[LazyStorage]:
        """Targets whose first write in this pass fills new memory, in the order written."""
        fresh: list[tuple[int, LazyStorage]] = []
        for key, s in self.targets.items():
            if key in self.usable:
                continue
            first = min(self.need[key])
            writer = s.writers[first - 1]
            write = _write_of(writer, s, first)
            # (a whole-storage copy_ usually takes its source's memory instead)
            if (
                write.output_index is None
                and not write.keeps_base
                and writer in self.run
                and writer.op is not _COPY
            ):
                fresh.append((writer.seq, s))
        return [s for _, s in sorted(fresh, key=lambda item: item[0])]

    def _hand_over_if_done(self, s: LazyStorage) -> None:
        key = id(s)
        if key in self.targets and self._version_now.get(key) == s.version:
            del self.targets[key]
            self.on_ready(s, self.values[key])
            if self.uses.get(key, 0) == 0:
                self.values.pop(key, None)

    def _count_uses(self) -> dict[int, int]:
        uses: dict[int, int] = defaultdict(int)
        for node in self.run:
            for r in node.reads:
                if (s := r.storage) is not None:
                    uses[id(s)] += 1
            for w in node.writes:
                if w.keeps_base and w.storage is not None:
                    uses[id(w.storage)] += 1
        return uses

    def _execute(self, node: Node, real: bool) -> None:
        if real and self._move_instead_of_copy(node):
            out = None
        else:
            args = [
                self._argument(node, x, real) if isinstance(x, TensorRef) else x
                for x in node.flat_args
            ]
            call_args, call_kwargs = tree_unflatten(args, node.spec)
            try:
                with self.generators.placed(node, call_kwargs) as op:
                    out = op(*call_args, **call_kwargs)
            except DormantError:
                raise  # already says what happened (a checkpoint file that changed)
            except Exception as e:
                raise MaterializationError(
                    f"replaying {node.label} failed: {type(e).__name__}: {e}"
                ) from e
        if real:
            self.stats.ops += 1
            if node.rng is not None:
                self.stats.random_ops.append(node.label)
            self._keep_outputs(node, out)
            self._release_inputs(node)
            for w in node.writes:
                s = w.storage
                if s is not None and id(s) in self.values:
                    self._version_now[id(s)] = w.version
                    self._hand_over_if_done(s)

    def _move_instead_of_copy(self, node: Node) -> bool:
        """``dst.copy_(src)`` over a whole fresh storage, from a source nothing reads later: hand
        the source's memory to the destination instead of allocating and copying (loading from
        a checkpoint, ``w.data.copy_(init)``)."""
        if node.op is not _COPY or len(node.writes) != 1 or len(node.reads) != 1:
            return False
        write, source = node.writes[0], node.reads[0]
        dst, src = write.storage, source.storage
        if dst is None or src is None or write.keeps_base or write.ref is None:
            return False
        a, b = write.ref.meta, source.meta
        if (
            id(dst) in self.values
            or write.version not in self.need.get(id(dst), ())
            or id(src) not in self.values
            or id(src) in self.target_ids
            or id(src) in self.usable  # an early or handed-out value: someone else holds it
            or self.uses.get(id(src)) != 1
            or src.nbytes != dst.nbytes
            or src.device != dst.device
            or (a.dtype, a.shape, a.stride(), a.storage_offset())
            != (b.dtype, b.shape, b.stride(), b.storage_offset())
        ):
            return False
        self.values[id(dst)] = self.values[id(src)]
        return True

    def _argument(self, node: Node, ref: TensorRef, real: bool) -> torch.Tensor:
        meta = ref.meta
        if ref.shape_only:
            device = _ref_device(ref, node)
            return torch.empty_strided(meta.size(), meta.stride(), dtype=meta.dtype, device=device)
        write = next((w for w in node.writes if w.ref is ref), None)
        if write is None:
            source = ref.storage
            if source is None:
                # Only a random op advanced for its draws reads a storage that died: it read
                # its own target, and in-place random ops draw independently of the values.
                return self.scratch.like(meta, _ref_device(ref, node))
            return view_of(self.values[id(source)], meta)
        s = write.storage
        if not real or s is None or write.version not in self.need.get(id(s), ()):
            device = s.device if s is not None else _ref_device(ref, node)
            return self.scratch.like(meta, device)
        buf = self.values.get(id(s))
        if buf is None:
            buf = self.values[id(s)] = self.prefetch.take(s)
        return view_of(buf, meta)

    def _keep_outputs(self, node: Node, out: Any) -> None:
        outputs = [w for w in node.writes if w.output_index is not None]
        if not outputs or out is None:
            return
        flat = tree_flatten(out)[0]
        for w in outputs:
            s = w.storage
            if s is None or w.output_index is None or w.version not in self.need.get(id(s), ()):
                continue
            value = flat[w.output_index]
            meta = w.ref.meta if w.ref is not None else value
            later_writes = max(self.need[id(s)]) > w.version
            if (
                value.stride() != meta.stride()
                or value.storage_offset() != meta.storage_offset()
                or (isinstance(node.op, Constant) and later_writes)
            ):
                buf = _allocate(s)
                view_of(buf, meta).copy_(value)
            else:
                buf = value.untyped_storage()
            self.values[id(s)] = buf

    def _release_inputs(self, node: Node) -> None:
        touched = [s for r in node.reads if (s := r.storage) is not None]
        touched += [w.storage for w in node.writes if w.keeps_base and w.storage is not None]
        for s in touched:
            key = id(s)
            self.uses[key] -= 1
            if self.uses[key] == 0 and key not in self.targets:
                self.values.pop(key, None)

    def _start_from_caches(self) -> None:
        self._version_now: dict[int, int] = {}
        for key in self.usable:
            s = self.storages.get(key)
            if s is not None and s.cache is not None:
                self.values[key] = s.cache
                self._version_now[key] = s.cache_version

    def _advance_caches(self) -> None:
        # Writes replayed onto an early value moved it to a newer version.
        for key in self.usable:
            s = self.storages.get(key)
            if s is not None and s.cache is not None:
                s.cache_version = max(s.cache_version, max(self.need[key]))


def _storage(ref: TensorRef) -> LazyStorage:
    s = ref.storage
    if s is None:
        raise AssertionError("a node read a storage that no longer exists")
    return s


def _ref_device(ref: TensorRef, node: Node) -> torch.device:
    s = ref.storage
    if s is not None:
        return s.device
    for w in node.writes:
        if w.storage is not None:
            return w.storage.device
    return torch.device("cpu")


def _write_of(node: Node, storage: LazyStorage, version: int) -> Write:
    for w in node.writes:
        if w.version == version and w.storage is storage:
            return w
    raise AssertionError(f"{node} does not write version {version} of this storage")


def _progress_bar(total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    show = progress if progress is not None else (sys.stderr.isatty() and total > 2000)
    return tqdm(total=total, desc="materializing", unit="op", disable=not show, leave=False)


OnReady = Callable[[LazyStorage, torch.UntypedStorage], None]


@dataclass
class ReplayStats:
    """What a replay ran, for :class:`~dormant.MaterializeReport`."""

    ops: int = 0
    random_ops: list[str] = field(default_factory=list)  # computed for their values


def compute_each(
    storages: Iterable[LazyStorage],
    on_ready: OnReady,
    *,
    progress: bool | None = None,
    stats: ReplayStats | None = None,
) -> None:
    """Compute the current values of ``storages`` in one pass, streaming them out.

    ``on_ready(storage, value)`` is called as soon as a storage's last write has run; replay
    keeps the value only as long as later ops still read it, so a caller that keeps a slice of
    each value (a shard) holds about one full tensor at a time.
    """
    targets = list({id(s): s for s in storages}.values())
    if targets:
        _Pass(targets, stats=stats).execute(on_ready, progress)


def compute(
    storages: Iterable[LazyStorage],
    *,
    progress: bool | None = None,
    stats: ReplayStats | None = None,
) -> dict[int, torch.UntypedStorage]:
    """Compute the current values of ``storages``, keyed by ``id(storage)``."""
    values: dict[int, torch.UntypedStorage] = {}
    compute_each(
        storages, lambda s, v: values.__setitem__(id(s), v), progress=progress, stats=stats
    )
    return values


def evaluate(t: LazyTensor, reason: str) -> torch.Tensor:
    """The exact value of a lazy tensor, computed now and kept (early materialization)."""
    from ._context import recording_active
    from ._record import user_frame

    if not recording_active():
        raise LazyTensorError(
            f"{reason} needs the values of a lazy {describe(t)} outside LazyInitContext: call "
            "dormant.materialize(module) first (or run this code inside the context)",
            tensor=describe(t),
            op=reason,
        )
    s = t._lazy_storage
    if s.cache is None or s.cache_version != s.version:
        buf = compute([s])[id(s)]
        s.cache, s.cache_version = buf, s.version
        if not s.early:
            s.early.append(EarlyRecord(reason, user_frame(), t.numel(), s.nbytes))
    assert s.cache is not None
    with _real_execution():
        return view_of(s.cache, t._meta)
