"""The verbose report of :func:`dormant.materialize`: what stayed lazy and what did not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ._graph import EarlyRecord
from ._placement import SlotKind, WholeTensor


@dataclass(frozen=True)
class EarlyTensor:
    """A module tensor whose value was computed during construction, and why."""

    name: str
    numel: int
    nbytes: int
    op: str
    where: str


@dataclass
class MaterializeReport:
    """Counts of what :func:`dormant.materialize` did for one module."""

    module: str
    parameters: int = 0
    lazy_parameters: int = 0
    buffers: int = 0
    lazy_buffers: int = 0
    numel: int = 0
    lazy_numel: int = 0  # of ``numel``, the elements of tensors that were lazy
    meta: list[str] = field(default_factory=list)  # tensors on the meta device: no values
    early: list[EarlyTensor] = field(default_factory=list)
    seconds: float = 0.0
    ops_replayed: int = 0
    # Random ops computed for their values (those whose draws were overwritten are jumped over).
    random_ops: list[str] = field(default_factory=list)
    threads: int = 1  # replay threads the values were computed on
    # Elements of local shards (DTensor, FSDP2) computed alone, without their full tensors.
    shard_elements: int = 0
    shard_drawn: int = 0  # random numbers drawn for them (whole-drawn small tensors count whole)
    # Local shards that had to be computed from their whole inputs, and why.
    whole: list[WholeTensor] = field(default_factory=list)

    @property
    def early_numel(self) -> int:
        return sum(e.numel for e in self.early)

    @property
    def lazy_rate(self) -> float:
        """Share of elements (parameters and buffers) that stayed lazy until materialization
        (real tensors, and meta ones, never were)."""
        return (self.lazy_numel - self.early_numel) / self.numel if self.numel else 1.0

    def add(
        self, name: str, kind: SlotKind, numel: int, early: Sequence[EarlyRecord], lazy: bool
    ) -> None:
        if kind is SlotKind.PARAMETER:
            self.parameters += 1
            self.lazy_parameters += lazy and not early
        elif kind is SlotKind.BUFFER:
            self.buffers += 1
            self.lazy_buffers += lazy and not early
        else:
            return
        self.numel += numel
        self.lazy_numel += numel if lazy else 0
        if early:
            first = early[0]
            self.early.append(EarlyTensor(name, numel, first.nbytes, first.op, first.where))

    def __str__(self) -> str:
        early_bytes = sum(e.nbytes for e in self.early)
        lines = [
            f"dormant: materialized {self.module} in {self.seconds:.2f} s",
            f"  parameters lazily initialized: {self.lazy_parameters} of {self.parameters}",
            f"  buffers lazily initialized:    {self.lazy_buffers} of {self.buffers}",
            f"  lazy rate: {self.lazy_rate:.2%} of {self.numel:,} elements",
            f"  materialized early: {len(self.early)} tensors, {self.early_numel:,} elements "
            f"({self.early_numel / self.numel if self.numel else 0:.2%}), {_human(early_bytes)}",
            f"  replayed: {self.ops_replayed} ops, {len(self.random_ops)} of them random, "
            f"on {self.threads} thread{'s' if self.threads > 1 else ''}",
        ]
        lines += [f"    - {e.name}: forced by {e.op} at {e.where}" for e in self.early]
        if self.shard_elements or self.whole:
            lines.append(
                f"  local shards: {self.shard_elements:,} elements computed alone "
                f"({self.shard_drawn:,} random numbers drawn), {len(self.whole)} shards from "
                "their whole tensors"
            )
            lines += [f"    - {w.name}: {w.reason}" for w in self.whole]
        if self.meta:
            lines.append(
                f"  on the meta device, without values: {len(self.meta)} tensors "
                f"({', '.join(self.meta[:5])}{', ...' if len(self.meta) > 5 else ''}); built "
                "under torch.device('meta') or accelerate's init_empty_weights?"
            )
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
