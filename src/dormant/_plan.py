"""Planning a replay: which recorded nodes must run to give storages their current values.

:func:`plan` walks the op graph back from each requested storage's current version through its
writers and their inputs. A write that replaces every byte of a storage without reading it
(``normal_`` on a whole weight) ends the walk: the older contents are dead and are never
computed. A value computed early (``.item()`` during construction) ends it too, if the pass needs
no version older than it. Random ops need no walk over the draws before them: each carries its
own position on its generator's stream (see [Note: RNG positions] in ``_rng.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ._graph import LazyStorage, Node, TensorRef, Write

COPY = torch.ops.aten.copy_.default


@dataclass
class Plan:
    """What one replay pass runs, and what it keeps."""

    targets: list[LazyStorage]
    nodes: list[tuple[Node, bool]]  # in recorded order; False: run only for its random draws
    need: dict[int, set[int]]  # id(storage) -> versions the pass produces or reads
    storages: dict[int, LazyStorage]  # every storage the pass touches, by id
    usable: set[int]  # storages whose early value the pass starts from
    uses: dict[int, int]  # reads (and read-modify-writes) of each storage by the nodes run
    fresh: list[LazyStorage]  # targets whose first write fills new memory, in the order written


def plan(targets: Iterable[LazyStorage], draw_only: Iterable[Node] = ()) -> Plan:
    """The plan that computes ``targets`` at their current versions, and runs the ``draw_only``
    nodes for their random draws (their inputs computed, their outputs dropped)."""
    targets = list({id(s): s for s in targets}.values())
    roots = [(s, s.version) for s in targets]
    # Use an early value only if the pass needs no version older than it.
    seen: dict[int, set[int]] = defaultdict(set)
    seen_storages: dict[int, LazyStorage] = {}
    _walk(roots, lambda s, v: s.cache is not None and v == s.cache_version, seen, seen_storages, {})
    usable = {
        key
        for key, s in seen_storages.items()
        if s.cache is not None and s.cache_version <= min(seen[key])
    }

    def at_usable_cache(s: LazyStorage, v: int) -> bool:
        return id(s) in usable and v == s.cache_version

    need: dict[int, set[int]] = defaultdict(set)
    storages: dict[int, LazyStorage] = {}
    run: dict[Node, None] = {}
    _walk(roots, at_usable_cache, need, storages, run)
    extra = [n for n in draw_only if n not in run]
    for n in extra:
        inputs = [(s, r.version) for r in n.reads if (s := r.storage) is not None]
        _walk(inputs, at_usable_cache, need, storages, run)
    nodes = sorted([(n, True) for n in run] + [(n, False) for n in extra], key=lambda x: x[0].seq)
    return Plan(
        targets=targets,
        nodes=nodes,
        need=need,
        storages=storages,
        usable=usable,
        uses=_count_uses(run),
        fresh=_fresh_targets(targets, usable, need, run),
    )


def _walk(
    roots: list[tuple[LazyStorage, int]],
    stop: Callable[[LazyStorage, int], bool],
    need: dict[int, set[int]],
    storages: dict[int, LazyStorage],
    run: dict[Node, None],
) -> None:
    """Add the versions needed per storage and the nodes to run, walking back from ``roots``
    (storage, version) pairs until ``stop(storage, version)``."""
    stack = list(roots)
    while stack:
        s, v = stack.pop()
        versions = need[id(s)]
        if v in versions:
            continue
        versions.add(v)
        storages[id(s)] = s
        if stop(s, v):
            continue
        node = s.writers[v - 1]
        if node not in run:
            run[node] = None
            if node.reads:  # (constants and checkpoint reads have none)
                stack.extend((storage_of(r), r.version) for r in node.reads)
        if write_of(node, s, v).keeps_base:
            stack.append((s, v - 1))


def _count_uses(run: dict[Node, None]) -> dict[int, int]:
    uses: dict[int, int] = defaultdict(int)
    for node in run:
        for r in node.reads:
            if (s := r.storage) is not None:
                uses[id(s)] += 1
        for w in node.writes:
            if w.keeps_base and w.storage is not None:
                uses[id(w.storage)] += 1
    return uses


def _fresh_targets(
    targets: list[LazyStorage], usable: set[int], need: dict[int, set[int]], run: dict[Node, None]
) -> list[LazyStorage]:
    fresh: list[tuple[int, LazyStorage]] = []
    for s in targets:
        if id(s) in usable:
            continue
        first = min(need[id(s)])
        writer = s.writers[first - 1]
        write = write_of(writer, s, first)
        # (a whole-storage copy_ usually takes its source's memory instead)
        if (
            write.output_index is None
            and not write.keeps_base
            and writer in run
            and writer.op is not COPY
        ):
            fresh.append((writer.seq, s))
    return [s for _, s in sorted(fresh, key=lambda item: item[0])]


def storage_of(ref: TensorRef) -> LazyStorage:
    s = ref.storage
    if s is None:
        raise AssertionError("a node read a storage that no longer exists")
    return s


def write_of(node: Node, storage: LazyStorage, version: int) -> Write:
    for w in node.writes:
        if w.version == version and w.storage is storage:
            return w
    raise AssertionError(f"{node} does not write version {version} of this storage")
