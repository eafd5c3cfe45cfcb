"""What one replay thread owns: its private generators, its scratch memory, where its values go.

Replay (``_replay.py``) runs ops on the calling thread or on several replay threads (see
[Note: parallel replay] in ``_parallel.py``). Each of them is a *lane*: random ops draw from the
lane's own generators, placed at each op's position on eager's stream (see [Note: RNG positions]
in ``_rng.py``), and writes nobody reads go to the lane's scratch memory; lanes share nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _rng
from ._graph import LazyStorage, Node, RandomStep


class Scratch:
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


class Generators:
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


class Lane:
    """What one replay thread owns: its private generators, its scratch memory, and ``ready``,
    called with each requested storage whose last write it ran (on the calling thread: the
    hand-over itself; on a replay thread: a message to the calling thread)."""

    def __init__(self, ready: Callable[[LazyStorage], None]) -> None:
        self.generators = Generators()
        self.scratch = Scratch()
        self.ready = ready
