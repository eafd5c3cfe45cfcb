"""Replay: how lazy storages get their values, exactly as eager construction computed them.

:func:`compute` runs one *pass*: a :class:`~dormant._plan.Plan` (which nodes, in recorded order)
executed on real tensors. Each node's inputs are views of the memory computed so far; each
intermediate storage is freed after its last use, and each requested storage is handed out as
soon as its last write ran, so a caller that keeps a slice (a shard) holds little at once.
Random ops run on private generators placed at their position on eager's stream
(see [Note: RNG positions] in ``_rng.py``); the user's generators are never touched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _rng
from ._graph import Constant, LazyStorage, Node, RandomStep, TensorRef, view_of
from ._plan import COPY, Plan, plan
from ._session import default_dtype, real_execution
from .errors import DormantError, MaterializationError


def _allocate(storage: LazyStorage) -> torch.UntypedStorage:
    return torch.empty(storage.nbytes, dtype=torch.uint8, device=storage.device).untyped_storage()


class _Scratch:
    """Reusable memory for writes whose values nobody needs (an op run for its draws alone)."""

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
        # The thread waits for at most one storage's cost; then it sees ``stop`` and returns.
        for _ in range(max(self.cost.values(), default=0)):
            self.budget.release()


class _Generators:
    """Private generators that replay draws from, placed at each random op's position (see
    [Note: RNG positions] in ``_rng.py``): materializing never touches the user's generators,
    and draws between two needed ops are jumped over, not made."""

    def __init__(self) -> None:
        self.private: dict[torch.device, torch.Generator] = {}
        self.at: dict[torch.device, _rng.Position] = {}  # where each stands, when known

    def _place(self, step: RandomStep) -> torch.Generator:
        start = step.start
        assert start is not None, "positions are resolved before replay runs"
        gen = self.private.get(step.device)
        if gen is None:
            gen = self.private[step.device] = torch.Generator(device=step.device)
        start.place(gen, self.at.pop(step.device, None))
        return gen

    @contextlib.contextmanager
    def placed(self, node: Node, call_kwargs: dict[str, Any]) -> Iterator[Callable[..., Any]]:
        """The random op to call (inside the block) so that it draws from its exact place."""
        step = node.rng
        assert step is not None, "only random ops are placed"
        gen = self._place(step)
        op = with_generator(node.op)
        if op is not None:
            call_kwargs["generator"] = gen
            yield op
        else:  # an op that only draws from the default generator: lend it, then give it back
            with _lending:  # one thread at a time
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


# Held while a replay thread lends its generator's state to the default generator.
_lending = threading.Lock()


@functools.cache
def with_generator(op: Any) -> Any:
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
    execution = _Execution(plan([], draw_only=[step.node]), lambda s, v: None, threads=1)
    execution.run(progress=False)
    return execution.lane.generators.state(step.device)


# [Note: parallel replay]
# Eager construction is sequential only because every random op draws from one stream; replay
# knows each op's position on it, so ops that share no storage can run at once, each random op
# on its replay thread's private generator placed at that position. The plan is cut in three
# steps (:func:`_batches`):
# - *chains*: nodes linked by any storage they read or write (union-find), each in recorded
#   order. Most init is one chain per weight (``normal_``, then ``zero_`` of a padding row);
#   anything shared (a tied weight, ``copy_`` between two lazy tensors) joins one chain, so it
#   runs in eager's order on one thread. Chains share no memory, only the draws' positions.
# - *batches*: consecutive chains (ordered by their first node) of about equal work. Random ops
#   of neighbouring chains lie next to each other on the stream, so a thread places its
#   generator once per batch (a jump, 1-4 ms) and then draws straight on, op after op.
# - threads take batches from a queue until none are left: a thread slowed by the machine's
#   other work takes fewer. Each batch runs in recorded order.
# The calling thread resolves positions first (resolving may itself replay), then waits for
# events: it calls ``on_ready`` and updates the progress bar, so callers see one thread. There
# is no prefetcher then: each thread faults in its own fresh pages.
# Each replay thread runs ops with the caller's intra-op thread count (``torch.set_num_threads``
# is per thread with OpenMP, and a new thread starts from the machine's default), not with one:
# ops such as QR (``orthogonal_``) or sums split their work, hence their rounding, by that count,
# so eager's values need eager's count. The random kernels are single-threaded: they are what
# runs in parallel, so ``threads`` defaults to ``torch.get_num_threads()`` (the cores eager may
# use); the CPU time stays that of one thread and the wall time falls when a core is free
# (figures: ``benchmarks/parallel.py``, docs/benchmarks.md). Everything else (CUDA storages or
# generators, a plan too small to pay for threads) runs on the calling thread.

# Work worth a batch of its own, in bytes written: a jump to place a generator (1-4 ms) costs
# about what writing this many random bytes does.
MIN_BATCH_BYTES = 4 * 2**20
BATCHES_PER_THREAD = 4  # enough that a slow thread leaves little work to wait for at the end
_NODE_BYTES = 64 * 2**10  # the Python around one op costs about what writing this many does


class _Lane:
    """What one replay thread owns: its private generators and its scratch memory."""

    def __init__(self) -> None:
        self.generators = _Generators()
        self.scratch = _Scratch()


_EXITED = object()  # the event a replay thread sends last


class _Execution:
    """Runs a :class:`~dormant._plan.Plan` on real tensors (see the module docstring), on the
    calling thread or on ``threads`` threads (see [Note: parallel replay])."""

    def __init__(
        self, plan: Plan, on_ready: OnReady, stats: ReplayStats | None = None, *, threads: int
    ) -> None:
        self.plan = plan
        self.on_ready = on_ready
        self.stats = stats if stats is not None else ReplayStats()
        self.threads = threads
        self.targets = {id(s): s for s in plan.targets}  # not yet handed over
        self.target_ids = frozenset(self.targets)
        self.usable, self.need = plan.usable, plan.need
        self.uses = dict(plan.uses)  # counted down as nodes run
        self.values: dict[int, torch.UntypedStorage] = {}  # storage id -> real memory
        self.version_now: dict[int, int] = {}  # storage id -> version ``values`` hold
        # Replay threads share the dicts above, keyed by storage. Each storage is one chain's,
        # so only the thread running that chain writes its entries; ``lock`` orders the two
        # ways a value leaves ``values``: its last use (a thread) and its hand-over (the caller).
        self.lock = threading.Lock()
        self.lane = _Lane()  # the calling thread's
        self.prefetch: _Prefetcher | None = None
        self.ready: Callable[[LazyStorage], None] = self._hand_over  # a target's last write ran

    def run(self, progress: bool | None) -> None:
        """Run the plan; hand each target to ``on_ready`` as soon as its last write ran."""
        self._start_from_caches()
        bar = progress_bar(len(self.plan.nodes), progress)
        try:
            # The default dtype recorded ops saw (float32 unless a node says otherwise).
            with real_execution(), default_dtype(torch.float32):
                _resolve_positions(self.plan.nodes)
                for s in list(self.targets.values()):
                    if self.version_now.get(id(s)) == s.version:
                        self._hand_over(s)  # an early value may already be current
                batches = self._batches()
                if len(batches) > 1:
                    self._run_threads(batches, bar)
                else:
                    self._run_here(bar)
            self._advance_caches()
        finally:
            bar.close()
        if self.targets:
            raise AssertionError(f"replay did not produce {len(self.targets)} storages")
        self._count(threads=min(self.threads, len(batches)))

    def _batches(self) -> list[list[tuple[Node, bool]]]:
        on_cpu = all(s.device.type == "cpu" for s in self.plan.storages.values()) and all(
            node.rng is None or node.rng.device.type == "cpu" for node, _ in self.plan.nodes
        )
        if self.threads <= 1 or not on_cpu:
            return [self.plan.nodes]
        # (the default dtype is one per process: a node run under its own needs one thread)
        if any(node.default_dtype is not None for node, _ in self.plan.nodes):
            return [self.plan.nodes]
        return _batches(self.plan.nodes, self.threads)

    def _run_here(self, bar: Any) -> None:
        self.prefetch = _Prefetcher(self.plan.fresh)
        try:
            for node, real in self.plan.nodes:
                self._execute(node, real, self.lane)
                bar.update(1)
        finally:
            self.prefetch.close()

    def _run_threads(self, batches: list[list[tuple[Node, bool]]], bar: Any) -> None:
        """Run ``batches`` on replay threads; hand values over on this thread as they come."""
        todo: queue.SimpleQueue[list[tuple[Node, bool]]] = queue.SimpleQueue()
        for batch in batches:
            todo.put(batch)
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        stop = threading.Event()
        # At most this many values wait for this thread: a thread that finished one more waits
        # too, so a caller that keeps slices holds a few full tensors per thread at most.
        room = threading.Semaphore(self.threads)

        def send(s: LazyStorage) -> None:
            room.acquire()
            events.put(s)

        self.ready = send
        intra_op = torch.get_num_threads()  # the caller's: see the note
        count = min(self.threads, len(batches))
        # Ops run, one counter per replay thread: the bar catches up whenever an event wakes this
        # thread (a value ready), instead of waking it after every op.
        ran = [0] * count
        workers = [
            threading.Thread(
                target=self._work,
                args=(todo, events, stop, intra_op, ran, i),
                name=f"dormant-replay-{i}",
            )
            for i in range(count)
        ]
        error: BaseException | None = None
        try:
            for w in workers:
                w.start()
            running, shown = len(workers), 0
            while running:
                event = events.get()
                if (done := sum(ran)) > shown:
                    bar.update(done - shown)
                    shown = done
                if event is _EXITED:
                    running -= 1
                elif isinstance(event, BaseException):
                    stop.set()
                    error = error or event
                else:
                    assert isinstance(event, LazyStorage)
                    if error is None:
                        self._hand_over(event)
                    room.release()
        finally:
            stop.set()  # after an error here (Ctrl-C, on_ready): threads stop after their op
            room.release(len(workers))  # a thread waiting to send would wait forever
            for w in workers:
                if w.is_alive():
                    w.join()
            self.ready = self._hand_over
        if error is not None:
            raise error

    def _work(
        self,
        todo: queue.SimpleQueue[list[tuple[Node, bool]]],
        events: queue.SimpleQueue[object],
        stop: threading.Event,
        intra_op: int,
        ran: list[int],
        index: int,
    ) -> None:
        """A replay thread: run batches, each in recorded order, until none are left."""
        if torch.get_num_threads() != intra_op:  # (with OpenMP, a setting of this thread's)
            torch.set_num_threads(intra_op)  # see the note above
        lane = _Lane()
        try:
            with real_execution():
                while not stop.is_set():
                    try:
                        batch = todo.get_nowait()
                    except queue.Empty:
                        break
                    for node, real in batch:
                        if stop.is_set():
                            break
                        self._execute(node, real, lane)
                        ran[index] += 1
        except BaseException as e:  # the calling thread raises it
            stop.set()
            events.put(e)
        finally:
            events.put(_EXITED)

    def _hand_over(self, s: LazyStorage) -> None:
        key = id(s)
        with self.lock:
            if self.targets.pop(key, None) is None:
                return  # handed over already
            value = self.values[key]
        self.on_ready(s, value)
        with self.lock:
            if self.uses.get(key, 0) == 0:
                self.values.pop(key, None)

    @staticmethod
    def _call(node: Node, args: Any, kwargs: dict[str, Any], lane: _Lane) -> Any:
        if node.rng is None:
            return node.op(*args, **kwargs)
        with lane.generators.placed(node, kwargs) as op:
            return op(*args, **kwargs)

    def _execute(self, node: Node, real: bool, lane: _Lane) -> None:
        if real and self._move_instead_of_copy(node):
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
                raise error from e
        if real:
            self._keep_outputs(node, out)
            self._release_inputs(node)
            for w in node.writes:
                s = w.storage
                if s is not None and id(s) in self.values:
                    self.version_now[id(s)] = w.version
                    if w.version == s.version and id(s) in self.target_ids:
                        self.ready(s)

    def _value(self, node: Node, x: Any, real: bool, lane: _Lane) -> Any:
        if isinstance(x, TensorRef):
            return self._argument(node, x, real, lane)
        return x() if isinstance(x, Constant) else x  # a real tensor, checked unchanged

    def _move_instead_of_copy(self, node: Node) -> bool:
        """``dst.copy_(src)`` over a whole fresh storage, from a source nothing reads later: hand
        the source's memory to the destination instead of allocating and copying (loading from
        a checkpoint, ``w.data.copy_(init)``)."""
        if node.op is not COPY or len(node.writes) != 1 or len(node.reads) != 1:
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

    def _argument(self, node: Node, ref: TensorRef, real: bool, lane: _Lane) -> torch.Tensor:
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
            fresh = self.prefetch.take(s) if self.prefetch is not None else _allocate(s)
            buf = self.values[id(s)] = fresh
        return view_of(buf, meta)

    def _keep_outputs(self, node: Node, out: Any) -> None:
        outputs = [w for w in node.writes if w.output_index is not None]
        if not outputs or out is None:
            return
        flat = [out] if isinstance(out, torch.Tensor) else tree_flatten(out)[0]
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
                or (node.constant is not None and later_writes)
            ):
                buf = _allocate(s)
                view_of(buf, meta).copy_(value)
            else:
                buf = value.untyped_storage()
            self.values[id(s)] = buf

    def _release_inputs(self, node: Node) -> None:
        touched = [s for r in node.reads if (s := r.storage) is not None]
        touched += [w.storage for w in node.writes if w.keeps_base and w.storage is not None]
        with self.lock:
            for s in touched:
                key = id(s)
                self.uses[key] -= 1
                if self.uses[key] == 0 and key not in self.targets:
                    self.values.pop(key, None)

    def _start_from_caches(self) -> None:
        for key in self.usable:
            s = self.plan.storages.get(key)
            if s is not None and s.cache is not None:
                self.values[key] = s.cache
                self.version_now[key] = s.cache_version

    def _advance_caches(self) -> None:
        # Writes replayed onto an early value moved it to a newer version.
        for key in self.usable:
            s = self.plan.storages.get(key)
            if s is not None and s.cache is not None:
                s.cache_version = max(s.cache_version, max(self.need[key]))

    def _count(self, threads: int) -> None:
        for node, real in self.plan.nodes:
            if real:
                self.stats.ops += 1
                if node.rng is not None:
                    self.stats.random_ops.append(node.label)
        self.stats.threads = max(self.stats.threads, threads)


def _resolve_positions(nodes: list[tuple[Node, bool]]) -> None:
    """Give every random op of a plan its start on its stream, before any of them runs
    (resolving runs uncounted ops for their draws: see [Note: RNG positions])."""
    for node, _ in nodes:
        step = node.rng
        if step is not None and step.start is None:
            assert step.stream is not None
            step.stream.resolve(run_for_draws)


def _batches(nodes: list[tuple[Node, bool]], threads: int) -> list[list[tuple[Node, bool]]]:
    """``nodes`` cut into batches of whole chains for ``threads`` replay threads, each batch in
    recorded order (see [Note: parallel replay]); one batch when threads would not pay."""
    cost = [_cost(node) for node, _ in nodes]
    total = sum(cost)
    if total - _NODE_BYTES * len(nodes) < MIN_BATCH_BYTES:
        # Less data than one batch is worth (checkpoint bytes handed over as they are, tiny
        # tensors): the Python around the ops is the work, and it holds the GIL.
        return [nodes]
    share = max(total / (threads * BATCHES_PER_THREAD), MIN_BATCH_BYTES)
    batch_of = [0] * len(nodes)
    batch, filled = 0, 0
    for chain in _chains(nodes):
        if filled >= share:
            batch, filled = batch + 1, 0
        for i in chain:
            batch_of[i] = batch
            filled += cost[i]
    batches: list[list[tuple[Node, bool]]] = [[] for _ in range(batch + 1)]
    for i, item in enumerate(nodes):
        batches[batch_of[i]].append(item)
    return batches


def _chains(nodes: list[tuple[Node, bool]]) -> list[list[int]]:
    """Indices of ``nodes`` grouped by the storages they touch (two nodes that read or write
    one storage are in one chain), in recorded order; chains ordered by their first node."""
    parent: dict[int, int] = {}

    def root(key: int) -> int:
        while (up := parent.setdefault(key, key)) != key:
            parent[key] = parent.setdefault(up, up)  # halve the path
            key = up
        return key

    keys = []
    for node, _ in nodes:
        touched = [id(s) for r in node.reads if (s := r.storage) is not None]
        touched += [id(s) for w in node.writes if (s := w.storage) is not None]
        if not touched:
            touched = [id(node)]  # touches only scratch memory: a chain of its own
        for key in touched[1:]:
            parent[root(key)] = root(touched[0])
        keys.append(touched[0])
    chains: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        chains.setdefault(root(key), []).append(i)
    return list(chains.values())


def _cost(node: Node) -> int:
    """A node's work, roughly: the bytes it writes, plus the Python around any op."""
    written = _NODE_BYTES
    if node.constant is not None:
        return written  # real bytes handed over as they are (a checkpoint's mapped pages)
    for w in node.writes:
        if w.ref is not None:
            written += w.ref.meta.numel() * w.ref.meta.element_size()
        elif (s := w.storage) is not None:
            written += s.nbytes
    return written


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
