"""Replay: how lazy storages get their values, exactly as eager construction computed them.

:func:`compute` runs one *pass*: a :class:`~dormant._plan.Plan` (which nodes, in recorded order)
executed on real tensors. Each node's inputs are views of the memory computed so far; each
intermediate storage is freed after its last use, and each requested storage is handed out as
soon as its last write ran, so a caller that keeps a slice (a shard) holds little at once.
Random ops run on private generators placed at their position on eager's stream
(see [Note: RNG positions] in ``_rng.py``); the user's generators are never touched.

The pass is in four parts: :class:`_Execution` here runs nodes; ``_values.py`` keeps, frees and
hands out their memory; ``_lanes.py`` holds what each replay thread owns (its generators and
scratch memory); ``_parallel.py`` cuts a pass into batches and runs them on several threads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_unflatten

from . import _rng
from ._graph import Constant, LazyStorage, Node, TensorRef, view_of
from ._lanes import Lane
from ._parallel import Threads, batches
from ._plan import Plan, plan
from ._session import default_dtype, real_execution
from ._values import Prefetcher, Values
from .errors import DormantError, MaterializationError


def run_for_draws(step: _rng.RngStep) -> torch.Tensor:
    """Run a random op for its draws alone, into scratch memory, from its exact position; return
    the generator state after it (an op whose draw count is not known without running it)."""
    assert step.node is not None
    execution = _Execution(plan([], draw_only=[step.node]), lambda s, v: None, threads=1)
    execution.run(progress=False)
    return execution.lane.generators.state(step.device)


class _Execution:
    """Runs a :class:`~dormant._plan.Plan` on real tensors (see the module docstring), on the
    calling thread or on ``threads`` threads (see [Note: parallel replay]): each node's
    arguments are views of the memory computed so far (``memory``), its op is called, and what
    it wrote is recorded as current."""

    def __init__(
        self, plan: Plan, on_ready: OnReady, stats: ReplayStats | None = None, *, threads: int
    ) -> None:
        self.plan = plan
        self.stats = stats if stats is not None else ReplayStats()
        self.threads = threads
        self.memory = Values(plan, on_ready)
        # (the memory's own dicts, read for every argument without a hop through ``memory``)
        self.values, self.need = self.memory.values, self.memory.need
        self.lane = Lane(self.memory.hand_over)  # the calling thread's

    def run(self, progress: bool | None) -> None:
        """Run the plan; hand each target to ``on_ready`` as soon as its last write ran."""
        memory = self.memory
        memory.start_from_caches()
        bar = progress_bar(len(self.plan.nodes), progress)
        try:
            # The default dtype recorded ops saw (float32 unless a node says otherwise).
            with real_execution(), default_dtype(torch.float32):
                _resolve_positions(self.plan.nodes)
                memory.hand_over_current()  # an early value may already be current
                todo = batches(self.plan, self.threads)
                if len(todo) > 1:
                    Threads(todo, self.threads, self._execute, memory.hand_over).run(bar)
                else:
                    self._run_here(bar)
            memory.advance_caches()
        finally:
            bar.close()
        if memory.targets:
            raise AssertionError(f"replay did not produce {len(memory.targets)} storages")
        self._count(threads=min(self.threads, len(todo)))

    def _run_here(self, bar: Any) -> None:
        self.memory.prefetch = prefetch = Prefetcher(self.plan.fresh)
        try:
            for node, real in self.plan.nodes:
                self._execute(node, real, self.lane)
                bar.update(1)
        finally:
            prefetch.close()

    @staticmethod
    def _call(node: Node, args: Any, kwargs: dict[str, Any], lane: Lane) -> Any:
        if node.rng is None:
            return node.op(*args, **kwargs)
        with lane.generators.placed(node, kwargs) as op:
            return op(*args, **kwargs)

    def _execute(self, node: Node, real: bool, lane: Lane) -> None:
        memory = self.memory
        if real and memory.move_instead_of_copy(node):
            out = None
        else:
            if node.is_source:  # a constant or a checkpoint read: most nodes of a load
                call_args, call_kwargs = (), {}
            else:
                args = [self._value(node, x, real, lane) for x in node.flat_args]
                call_args, call_kwargs = tree_unflatten(args, node.spec)
            try:
                if node.default_dtype is not None:
                    with default_dtype(node.default_dtype):
                        out = self._call(node, call_args, call_kwargs, lane)
                elif node.rng is None:  # (the common case, without a call of its own)
                    out = node.op(*call_args, **call_kwargs)
                else:
                    out = self._call(node, call_args, call_kwargs, lane)
            except DormantError:
                raise  # already says what happened (a checkpoint file that changed)
            except Exception as e:
                raise _failed(node, e) from e
        if real:
            memory.keep_outputs(node, out)
            memory.release_inputs(node)
            for w in node.writes:
                s = w.storage
                if s is not None and id(s) in self.values:
                    memory.version_now[id(s)] = w.version
                    if w.version == s.version and id(s) in memory.target_ids:
                        lane.ready(s)

    def _value(self, node: Node, x: Any, real: bool, lane: Lane) -> Any:
        if isinstance(x, TensorRef):
            return self._argument(node, x, real, lane)
        return x() if isinstance(x, Constant) else x  # a real tensor, checked unchanged

    def _argument(self, node: Node, ref: TensorRef, real: bool, lane: Lane) -> torch.Tensor:
        meta = ref.meta
        if ref.shape_only:
            device = _ref_device(ref, node)
            return torch.empty_strided(meta.size(), meta.stride(), dtype=meta.dtype, device=device)
        write = next((w for w in node.writes if w.ref is ref), None)
        if write is None:
            source = ref.storage
            if source is None:
                # Only a random op run for its draws reads a storage that died: it read
                # its own target, and in-place random ops draw independently of the values.
                return lane.scratch.like(meta, _ref_device(ref, node))
            return view_of(self.values[id(source)], meta)
        s = write.storage
        if not real or s is None or write.version not in self.need.get(id(s), ()):
            device = s.device if s is not None else _ref_device(ref, node)
            return lane.scratch.like(meta, device)
        buf = self.values.get(id(s))
        if buf is None:
            buf = self.memory.fresh(s)
        return view_of(buf, meta)

    def _count(self, threads: int) -> None:
        for node, real in self.plan.nodes:
            if real:
                self.stats.ops += 1
                if node.rng is not None:
                    self.stats.random_ops.append(node.label)
        self.stats.threads = max(self.stats.threads, threads)
        self.stats.most_held = max(self.stats.most_held, self.memory.most_held)


def _failed(node: Node, e: Exception) -> MaterializationError:
    """The error of a node whose op raised ``e``: names the op and where it was recorded."""
    at = f", recorded at {node.where}," if node.where is not None else ""
    advice = (
        "; eager construction fails at that line too: fix the model code there"
        if node.where is not None
        else ""
    )
    error = MaterializationError(
        f"replaying {node.label}{at} failed: {type(e).__name__}: {e}{advice}"
    )
    # (what it wrote: materialize names those tensors)
    error.storages = {id(w.storage) for w in node.writes}  # type: ignore[attr-defined]
    return error


def _resolve_positions(nodes: list[tuple[Node, bool]]) -> None:
    """Give every random op of a plan its start on its stream, before any of them runs
    (resolving runs uncounted ops for their draws: see [Note: RNG positions])."""
    for node, _ in nodes:
        step = node.rng
        if step is not None and step.start is None:
            assert step.stream is not None
            step.stream.resolve(run_for_draws)


def _ref_device(ref: TensorRef, node: Node) -> torch.device:
    s = ref.storage
    if s is not None:
        return s.device
    for w in node.writes:
        if w.storage is not None:
            return w.storage.device
    return torch.device("cpu")


def progress_bar(
    total: int,
    progress: bool | None,
    desc: str = "materializing",
    unit: str = "op",
    shown_above: int = 2000,
) -> Any:
    """A tqdm bar: shown if ``progress``, or when None on a terminal for more than
    ``shown_above`` steps."""
    from tqdm.auto import tqdm

    show = progress if progress is not None else (sys.stderr.isatty() and total > shown_above)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False)


OnReady = Callable[[LazyStorage, torch.UntypedStorage], None]


@dataclass
class ReplayStats:
    """What a replay ran, for :class:`~dormant.MaterializeReport`."""

    ops: int = 0
    random_ops: list[str] = field(default_factory=list)  # computed for their values
    threads: int = 1  # the most threads a pass ran on
    most_held: int = 0  # the most storage values a pass held at once


def compute_each(
    storages: Iterable[LazyStorage],
    on_ready: OnReady,
    *,
    progress: bool | None = None,
    stats: ReplayStats | None = None,
    threads: int | None = None,
) -> None:
    """Compute the current values of ``storages`` in one pass, streaming them out.

    ``on_ready(storage, value)`` is called on the calling thread as soon as a storage's last
    write has run; replay keeps the value only as long as later ops still read it, so a caller
    that keeps a slice of each value (a shard) holds about one full tensor per replay thread at
    a time. ``threads`` (default ``torch.get_num_threads()``) replay threads run ops that share
    no storage at once (see [Note: parallel replay]); with more than one, values come in an
    order that depends on timing.
    """
    targets = []
    for s in {id(s): s for s in storages}.values():  # views of one storage: one value
        value = constant_value(s)
        if value is None:
            targets.append(s)
        else:  # nothing to replay: most storages of a lazy ``from_pretrained``
            on_ready(s, value)
            if stats is not None:
                stats.ops += 1
    if targets:
        count = threads if threads is not None else torch.get_num_threads()
        _Execution(plan(targets), on_ready, stats, threads=count).run(progress)


def constant_value(s: LazyStorage) -> torch.UntypedStorage | None:
    """The value of a storage that is real bytes handed to the context and never written
    since (a checkpoint tensor over its file's mapped pages, ``torch.tensor(data)``): those
    bytes themselves, checked unchanged, without planning a pass. None for any other storage.
    """
    if s.version == 1 and (op := s.writers[0].constant) is not None:
        return op().untyped_storage()
    return None


def compute(
    storages: Iterable[LazyStorage],
    *,
    progress: bool | None = None,
    stats: ReplayStats | None = None,
    threads: int | None = None,
) -> dict[int, torch.UntypedStorage]:
    """Compute the current values of ``storages``, keyed by ``id(storage)``."""
    values: dict[int, torch.UntypedStorage] = {}
    compute_each(
        storages,
        lambda s, v: values.__setitem__(id(s), v),
        progress=progress,
        stats=stats,
        threads=threads,
    )
    return values
