"""Replay on several threads: cutting a pass into batches, and running them at once.

See [Note: parallel replay]. :func:`batches` plans the cut; :class:`Threads` runs the batches
and hands each value over on the calling thread; what a node does is the caller's (``execute``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

from ._graph import LazyStorage, Node
from ._lanes import Lane
from ._plan import Plan
from ._session import real_execution

# [Note: parallel replay]
# Eager construction is sequential only because every random op draws from one stream; replay
# knows each op's position on it, so ops that share no storage can run at once, each random op
# on its replay thread's private generator placed at that position. The plan is cut in three
# steps (:func:`batches`):
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
# about what writing this many random bytes does. The environment variable overrides it (0: cut
# even a tiny model into many batches, as the tests of threaded replay do).
MIN_BATCH_BYTES = 4 * 2**20
MIN_BATCH_BYTES_VARIABLE = "DORMANT_MIN_BATCH_BYTES"
BATCHES_PER_THREAD = 4  # enough that a slow thread leaves little work to wait for at the end
_NODE_BYTES = 64 * 2**10  # the Python around one op costs about what writing this many does

Batch = list[tuple[Node, bool]]


def batches(plan: Plan, threads: int) -> list[Batch]:
    """The plan's nodes cut into batches of whole chains for ``threads`` replay threads, each
    batch in recorded order; one batch when threads would not pay or cannot be used."""
    on_cpu = all(s.device.type == "cpu" for s in plan.storages.values()) and all(
        node.rng is None or node.rng.device.type == "cpu" for node, _ in plan.nodes
    )
    if threads <= 1 or not on_cpu:
        return [plan.nodes]
    # (the default dtype is one per process: a node run under its own needs one thread)
    if any(node.default_dtype is not None for node, _ in plan.nodes):
        return [plan.nodes]
    return _cut(plan.nodes, threads)


def _min_batch_bytes() -> int:
    return int(os.environ.get(MIN_BATCH_BYTES_VARIABLE, MIN_BATCH_BYTES))


def _cut(nodes: Batch, threads: int) -> list[Batch]:
    cost = [_cost(node) for node, _ in nodes]
    total = sum(cost)
    least = _min_batch_bytes()
    if total - _NODE_BYTES * len(nodes) < least:
        # Less data than one batch is worth (checkpoint bytes handed over as they are, tiny
        # tensors): the Python around the ops is the work, and it holds the GIL.
        return [nodes]
    share = max(total / (threads * BATCHES_PER_THREAD), least)
    batch_of = [0] * len(nodes)
    batch, filled = 0, 0
    for chain in _chains(nodes):
        if filled >= share:
            batch, filled = batch + 1, 0
        for i in chain:
            batch_of[i] = batch
            filled += cost[i]
    cut: list[Batch] = [[] for _ in range(batch + 1)]
    for i, item in enumerate(nodes):
        cut[batch_of[i]].append(item)
    return cut


def _chains(nodes: Batch) -> list[list[int]]:
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


_EXITED = object()  # the event a replay thread sends last


class Threads:
    """Runs batches on replay threads (``execute(node, real, lane)`` runs one node), and hands
    each value over on the calling thread (``hand_over``) as it comes."""

    def __init__(
        self,
        todo: list[Batch],
        threads: int,
        execute: Callable[[Node, bool, Lane], None],
        hand_over: Callable[[LazyStorage], None],
    ) -> None:
        self.todo: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        for batch in todo:
            self.todo.put(batch)
        self.count = min(threads, len(todo))
        self.execute, self.hand_over = execute, hand_over
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.stop = threading.Event()
        # At most this many values wait for this thread: a thread that finished one more waits
        # too, so a caller that keeps slices holds a few full tensors per thread at most.
        self.room = threading.Semaphore(threads)
        self.intra_op = torch.get_num_threads()  # the caller's: see the note
        # Ops run, one counter per replay thread: the bar catches up whenever an event wakes this
        # thread (a value ready), instead of waking it after every op.
        self.ran = [0] * self.count

    def run(self, bar: Any) -> None:
        """Run every batch; return when all threads have stopped, raising the first error."""
        workers = [
            threading.Thread(target=self._work, args=(i,), name=f"dormant-replay-{i}")
            for i in range(self.count)
        ]
        error: BaseException | None = None
        try:
            for w in workers:
                w.start()
            running, shown = len(workers), 0
            while running:
                event = self.events.get()
                if (done := sum(self.ran)) > shown:
                    bar.update(done - shown)
                    shown = done
                if event is _EXITED:
                    running -= 1
                elif isinstance(event, BaseException):
                    self.stop.set()
                    error = error or event
                else:
                    assert isinstance(event, LazyStorage)
                    if error is None:
                        self.hand_over(event)
                    self.room.release()
        finally:
            self.stop.set()  # after an error here (Ctrl-C, on_ready): threads stop after their op
            self.room.release(len(workers))  # a thread waiting to send would wait forever
            for w in workers:
                if w.is_alive():
                    w.join()
        if error is not None:
            raise error

    def _send(self, s: LazyStorage) -> None:
        self.room.acquire()
        self.events.put(s)

    def _work(self, index: int) -> None:
        """A replay thread: run batches, each in recorded order, until none are left."""
        if torch.get_num_threads() != self.intra_op:  # (with OpenMP, a setting of this thread's)
            torch.set_num_threads(self.intra_op)  # see the note above
        lane = Lane(self._send)
        stop, execute, ran = self.stop, self.execute, self.ran
        try:
            with real_execution():
                while not stop.is_set():
                    try:
                        batch = self.todo.get_nowait()
                    except queue.Empty:
                        break
                    for node, real in batch:
                        if stop.is_set():
                            break
                        execute(node, real, lane)
                        ran[index] += 1
        except BaseException as e:  # the calling thread raises it
            self.stop.set()
            self.events.put(e)
        finally:
            self.events.put(_EXITED)
