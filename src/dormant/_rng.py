"""Random streams: where each recorded random op draws, and where eager leaves each generator.

[Note: RNG positions]
Recording draws nothing. Each random op recorded gets the *position* on its generator's stream
where eager construction would have drawn it (:class:`Position`): an *anchor*, a generator state
seen for real (the state at context entry, after ``torch.manual_seed`` in model code, or after
an op that had to run to be counted), plus the number of 32-bit draws eager made since then
(``_draws``). ``_mt19937.advance`` turns a position into the exact generator state in at most
a few ms (at most about 8), whatever the distance. Hence:

- when a :class:`~dormant.LazyInitContext` exits, every generator the model code drew from is
  set where eager construction leaves it (:func:`end_session`), so two contexts in a row
  continue one stream and a seeded training run is the same as after an eager build;
- replay places a private generator at each needed op's position: draws that later code
  overwrote are skipped, and the user's generators are never touched by materialization;
- an op whose count is not known without running it (no rule; CUDA; ``trunc_normal_`` whose
  bounds a sample can reach) ends the run of known positions. It is run for its draws alone, from
  its exact position into scratch memory, when a later position is first needed: at context
  exit at the latest (:meth:`RngStream.resolve`).

A random op on a lazy tensor *outside* the context (an init after building) is a session of its
own: its position is the generator's state at that moment, and the generator is moved past it
at once, as eager would.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import _mt19937
from ._session import RngMode, session

if TYPE_CHECKING:
    from ._graph import Node


class Position:
    """A place on a generator's stream: ``draws`` 32-bit draws after the state ``anchor``.

    Never changed once made (every recorded random op makes one: a plain class with slots,
    which a frozen dataclass is not, costs a third of one).
    """

    __slots__ = ("anchor", "draws")

    def __init__(self, anchor: torch.Tensor, draws: int = 0) -> None:
        self.anchor = anchor
        self.draws = draws

    def __repr__(self) -> str:
        return f"Position(draws={self.draws})"

    def state(self) -> torch.Tensor:
        """The exact generator state at this position."""
        return _mt19937.advance(self.anchor, self.draws) if self.draws else self.anchor

    def after(self, draws: int) -> Position:
        return Position(self.anchor, self.draws + draws)

    def place(self, generator: torch.Generator, here: Position | None) -> None:
        """Set ``generator``, standing at ``here`` if known, to this position: moving forward on
        the same stream costs only the gap (short gaps draw, long ones jump)."""
        if here is not None and here.anchor is self.anchor and here.draws <= self.draws:
            if self.draws > here.draws:
                generator.set_state(
                    _mt19937.advance(generator.get_state(), self.draws - here.draws)
                )
        else:
            generator.set_state(self.state())


class RngStep:
    """One recorded random op: where it starts drawing and how many draws it takes."""

    __slots__ = ("device", "draws", "node", "start", "stream")

    def __init__(
        self, node: Node, device: torch.device, start: Position | None, draws: int | None
    ) -> None:
        self.device = device  # of the generator drawn from
        # The node is owned here only while the step's draws may still have to be run.
        self.node: Node | None = node
        self.start = start  # None until an uncounted op before it has run
        self.draws = draws  # None: not known without running the op
        self.stream: RngStream | None = None  # set while the step waits to be resolved


def _raw(state: torch.Tensor) -> bytes:
    """The bytes of a generator state (a contiguous CPU uint8 tensor). Not ``numpy()``: under
    the recording mode that dispatches an ``aten.detach`` per call (about 5 us, against 0.5)."""
    return ctypes.string_at(state.data_ptr(), state.numel())


# Runs a step's op for its draws alone, from ``step.start``; returns the generator state after.
Runner = Callable[[RngStep], torch.Tensor]


class RngStream:
    """The random ops recorded on one generator during one session."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.device = generator.device  # a new torch.device at every read of the property
        self.seen = generator.get_state()  # what the generator held when last looked at
        self._held = _raw(self.seen)  # what it holds now: compared at every random op
        self.marked = False  # whether it holds a marker (see [Note: seeing a re-seed])
        self.cursor: Position | None = Position(self.seen)  # after the last step, if known
        self.pending: list[RngStep] = []  # steps waiting for an uncounted step to run
        self.fast_count = 0

    def _notice_changes(self) -> None:
        # Model code seeded the generator, or drew from it for real: eager goes on from there.
        if self.marked and self.generator.initial_seed() == _MARK_SEED:
            # Still the marker: a seed or a state set since would have replaced its seed field,
            # and a real draw inside the context sets a real state first (place_for_real_draw).
            return
        current = self.generator.get_state()
        raw = _raw(current)
        if raw != self._held:
            self.seen, self._held, self.marked = current, raw, False
            self.cursor = Position(current)

    def mark(self) -> None:
        """Put a marker state into the generator ([Note: seeing a re-seed])."""
        if self.marked or self.device.type != "cpu":
            return
        marker = _marker(self.seen)
        self.generator.set_state(marker)
        self._held, self.marked = _raw(marker), True

    def unmark(self) -> None:
        """Give the generator back the state the marker stands for (model code failed)."""
        if self.marked and _raw(self.generator.get_state()) == self._held:
            self.generator.set_state(self.seen)
        self.marked = False

    def append(self, node: Node, draws: int | None) -> RngStep:
        self._notice_changes()
        step = RngStep(node, self.device, self.cursor, draws)
        if self.cursor is not None and draws is not None:
            self.cursor = self.cursor.after(draws)
            step.node = None  # a counted step never has to run for its draws
        else:
            step.stream = self
            self.pending.append(step)
            self.cursor = None
        return step

    def fast_step(self, node: Node) -> RngStep:
        """A step for ``rng="fast"``: its own state, derived from the generator's state and the
        step's position in the model code; it does not move the stream."""
        self._notice_changes()
        self.fast_count += 1
        digest = hashlib.blake2b(_raw(self.seen), digest_size=8)
        digest.update(self.fast_count.to_bytes(8, "little"))
        derived = torch.Generator(device=self.device)
        derived.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        return RngStep(node, self.device, Position(derived.get_state()), None)

    def resolve(self, run: Runner) -> None:
        """Run the uncounted steps for their draws, in order, so every step has a start."""
        cursor: Position | None = None
        for step in self.pending:
            if step.start is None:
                if cursor is None:
                    raise AssertionError("random stream without a starting state")
                step.start = cursor
            cursor = step.start.after(step.draws) if step.draws is not None else Position(run(step))
            step.stream, step.node = None, None
        self.pending.clear()
        if self.cursor is None:
            self.cursor = cursor

    def end_state(self, run: Runner) -> torch.Tensor:
        """Where eager construction leaves the generator."""
        self._notice_changes()
        self.resolve(run)
        assert self.cursor is not None
        return self.cursor.state()


# [Note: seeing a re-seed]
# Recording draws nothing, so the real generator does not move; a change of its state is how
# dormant sees model code seeding it (``manual_seed``) or drawing from it for real. Re-seeding
# to the state it already holds would go unseen (``manual_seed(0)`` before each of two layers),
# so after each recorded random op the generator holds a *marker*: the same state, with its
# recorded initial seed (the one field no draw reads) set to a value nobody seeds with. Any
# ``manual_seed`` then changes the state. The context's exit sets the generator where eager
# leaves it; an exception gives back the state the marker stands for.
_MARK_SEED = int.from_bytes(b"dormant!", "little")


def _marker(state: torch.Tensor) -> torch.Tensor:
    marker = state.clone()
    marker.numpy()[:8] = np.frombuffer(_MARK_SEED.to_bytes(8, "little"), np.uint8)
    return marker


def default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    raise NotImplementedError(f"dormant has no random stream for device type {device.type!r}")


class Streams:
    """The streams of one recording session: a context (``RecordingSession.streams``), or one
    op on lazy tensors outside it."""

    def __init__(self) -> None:
        # Keyed by the C++ generator: the dispatcher hands out new Python objects for it.
        self.streams: dict[int, RngStream] = {}
        self._cpu_default: RngStream | None = None  # what most random ops draw from

    def stream_for(self, generator: torch.Generator | None, device: torch.device) -> RngStream:
        if generator is None and device.type == "cpu":
            if self._cpu_default is None:
                self._cpu_default = self.stream_for(torch.default_generator, device)
            return self._cpu_default
        gen = generator if generator is not None else default_generator(device)
        key: int = gen._cdata  # type: ignore[attr-defined]
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = RngStream(gen)
        return stream

    def abandon(self) -> None:
        """Model code failed: leave every generator where model code left it."""
        for stream in self.streams.values():
            stream.unmark()
        self.streams.clear()
        self._cpu_default = None

    def finish(self, run: Runner) -> None:
        """Set every generator where eager construction would have left it."""
        try:
            for stream in self.streams.values():
                stream.generator.set_state(stream.end_state(run))
        finally:
            self.streams.clear()
            self._cpu_default = None


def end_session(run: Runner | None) -> None:
    """The context exits: move the generators where eager leaves them (``run`` is None after
    an exception in model code: the generators then stay where they were). The session's
    streams are taken off it first."""
    streams, session.streams = session.streams, None
    if streams is not None:
        if run is not None:
            streams.finish(run)
        else:
            streams.abandon()


def record_step(
    node: Node,
    generator: torch.Generator | None,
    device: torch.device,
    draws: int | None,
    *,
    run: Runner,
) -> RngStep:
    """Place a recorded random op on its stream. Outside a context the op is a session of its
    own: the generator moves past it now, as eager's would."""
    active: Streams | None = session.streams
    streams = active if active is not None else Streams()
    stream = streams.stream_for(generator, device)
    step = stream.fast_step(node) if session.rng is RngMode.FAST else stream.append(node, draws)
    if streams is not active:
        # Finishing runs an uncounted op for its draws now, which places it by ``node.rng``.
        node.rng = step
        streams.finish(run)
    else:
        stream.mark()
    return step


def place_for_real_draw(
    generator: torch.Generator | None, device: torch.device, run: Runner
) -> None:
    """Model code is about to draw for real inside the context (a random op on a real tensor):
    put the generator where eager construction would have it by now."""
    streams: Streams | None = session.streams
    if streams is None:
        return
    stream = streams.stream_for(generator, device)
    stream.generator.set_state(stream.end_state(run))
