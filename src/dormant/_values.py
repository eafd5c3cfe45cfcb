"""The real memory of a replay pass: which bytes each lazy storage holds while the pass runs.

A pass (``_replay.py``) computes storages node by node; this is the bookkeeping that keeps its
memory small. A value lives while later nodes still read it, a requested storage is handed to the
caller as soon as its last write ran, a copy over a whole fresh storage takes its source's memory
instead of copying it, and fresh CPU memory is faulted in ahead on a second thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ._graph import LazyStorage, Node, view_of
from ._plan import COPY, Plan


def allocate(storage: LazyStorage) -> torch.UntypedStorage:
    """New memory for ``storage``'s value, on its device."""
    return torch.empty(storage.nbytes, dtype=torch.uint8, device=storage.device).untyped_storage()


class Prefetcher:
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
            buf = allocate(s)
            with torch.no_grad():
                torch.empty(0, dtype=torch.uint8).set_(buf)[::4096].zero_()  # fault every page
            self.buffers[id(s)] = buf
            self.ready[id(s)].set()

    def take(self, s: LazyStorage) -> torch.UntypedStorage:
        event = self.ready.get(id(s))
        if event is None:
            return allocate(s)
        event.wait()
        for _ in range(self.cost[id(s)]):
            self.budget.release()
        return self.buffers.pop(id(s))

    def close(self) -> None:
        self.stop = True
        # The thread waits for at most one storage's cost; then it sees ``stop`` and returns.
        for _ in range(max(self.cost.values(), default=0)):
            self.budget.release()


class Values:
    """The real memory of one pass's storages, by ``id(storage)``: kept while later nodes read
    it, handed to ``on_ready`` after its last write, freed after its last use.

    Replay threads share it. Each storage is one chain's (see [Note: parallel replay]), so only
    the thread running that chain writes its entries; ``lock`` orders the two ways a value leaves
    ``values``: its last use (a thread) and its hand-over (the calling thread).
    """

    def __init__(
        self, plan: Plan, on_ready: Callable[[LazyStorage, torch.UntypedStorage], None]
    ) -> None:
        self.storages = plan.storages
        self.on_ready = on_ready
        self.targets = {id(s): s for s in plan.targets}  # not yet handed over
        self.target_ids = frozenset(self.targets)
        self.usable, self.need = plan.usable, plan.need
        self.uses = dict(plan.uses)  # counted down as nodes run
        self.values: dict[int, torch.UntypedStorage] = {}  # storage id -> real memory
        self.version_now: dict[int, int] = {}  # storage id -> version ``values`` hold
        self.lock = threading.Lock()
        self.prefetch: Prefetcher | None = None
        self.most_held = 0  # the most values held at once

    def fresh(self, s: LazyStorage) -> torch.UntypedStorage:
        """New memory for ``s``, kept as its value."""
        buf = self.prefetch.take(s) if self.prefetch is not None else allocate(s)
        self._keep(id(s), buf)
        return buf

    def _keep(self, key: int, buf: torch.UntypedStorage) -> None:
        with self.lock:
            self.values[key] = buf
            self.most_held = max(self.most_held, len(self.values))

    def move_instead_of_copy(self, node: Node) -> bool:
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

    def keep_outputs(self, node: Node, out: Any) -> None:
        """Keep the outputs of ``node`` (an out-of-place op) that the pass needs."""
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
                buf = allocate(s)
                view_of(buf, meta).copy_(value)
            else:
                buf = value.untyped_storage()
            self._keep(id(s), buf)

    def release_inputs(self, node: Node) -> None:
        """Count down the uses of what ``node`` read; free each value at its last use."""
        touched = [s for r in node.reads if (s := r.storage) is not None]
        touched += [w.storage for w in node.writes if w.keeps_base and w.storage is not None]
        with self.lock:
            for s in touched:
                key = id(s)
                self.uses[key] -= 1
                if self.uses[key] == 0 and key not in self.targets:
                    self.values.pop(key, None)

    def hand_over(self, s: LazyStorage) -> None:
        """Give ``s``'s value to ``on_ready`` (once), then drop it unless later nodes read it."""
        key = id(s)
        with self.lock:
            if self.targets.pop(key, None) is None:
                return  # handed over already
            value = self.values[key]
        self.on_ready(s, value)
        with self.lock:
            if self.uses.get(key, 0) == 0:
                self.values.pop(key, None)

    def start_from_caches(self) -> None:
        """Start from the early values the plan uses."""
        for key in self.usable:
            s = self.storages.get(key)
            if s is not None and s.cache is not None:
                self.values[key] = s.cache
                self.version_now[key] = s.cache_version

    def hand_over_current(self) -> None:
        """Hand over the targets whose early value is already current."""
        for s in list(self.targets.values()):
            if self.version_now.get(id(s)) == s.version:
                self.hand_over(s)

    def advance_caches(self) -> None:
        """Writes replayed onto an early value moved it to a newer version."""
        for key in self.usable:
            s = self.storages.get(key)
            if s is not None and s.cache is not None:
                s.cache_version = max(s.cache_version, max(self.need[key]))
