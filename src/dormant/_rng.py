"""Random number streams: eager's draws, replayed in recorded order.

[Note: RNG]
Recording draws nothing: every generator keeps its state while a model is built lazily. Each
random op recorded is appended, in order, as an :class:`RngStep` of the stream of the generator
it would have drawn from (the default generator of its device, or the explicit
``torch.Generator`` it was given). The first step of a stream remembers the generator's state;
replay sets that state and runs the steps in order, so step ``k`` sees exactly the state eager
construction gave it. Every step that replay passes remembers its ``state_before``, so later
passes (another submodule, another order) jump straight to any step already passed.

A step whose values nobody needs still consumed numbers in eager, so replay *advances* over it:
it runs the same op into scratch memory of the same size, stride and dtype. Steps with nothing
left to compute are dropped once a later step's state is known, so streams do not grow across
build/materialize cycles.

Each ``LazyInitContext`` starts a new segment from the generator's state at that moment, and so
does any change of state while steps are being recorded (``torch.manual_seed`` inside the model
code, or a real random op), as eager would see it. Since recording draws nothing, two contexts
entered one after the other from the same state draw the same numbers: build modules that must
differ in one context, or seed in between.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ._graph import Node


class RngStep:
    """One recorded random op in a stream."""

    __slots__ = ("index", "node", "state_before", "stream")

    def __init__(self, stream: RngStream, index: int, node: Node) -> None:
        self.stream = stream
        self.index = index  # absolute position in the stream (survives compaction)
        # The step owns its node, to advance over it even when its values are no longer wanted.
        # A node holds the storages it writes only weakly, so this keeps no tensor alive.
        self.node = node
        self.state_before: torch.Tensor | None = None

    def wanted(self) -> bool:
        """Whether some live storage may still need this step's values."""
        return any(w.storage is not None for w in self.node.writes)


class RngStream:
    """The recorded draws of one generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        # Steps by absolute index, in order. Compaction may leave gaps, but only before a step
        # whose ``state_before`` is known, so replay never needs to cross one.
        self.steps: dict[int, RngStep] = {}
        self.next_index = 0
        self.untouched = generator.get_state()  # what the generator holds if nobody drew
        self.resume: torch.Tensor | None = self.untouched  # state before the next new step
        self.end_state: torch.Tensor | None = None  # state after the last step, once replayed
        self.new_segment = True  # the next step starts from the generator's current state

    def append(self, node: Node) -> RngStep:
        step = RngStep(self, self.next_index, node)
        current = self.generator.get_state()
        if self.new_segment or not torch.equal(current, self.untouched):
            # A new context, or someone seeded or drew for real: eager would continue from here.
            self.untouched = current
            self.new_segment = False
            step.state_before = current
        elif not self.steps:
            step.state_before = self.resume
        self.end_state = None
        self.steps[step.index] = step
        self.next_index += 1
        return step

    def fast_step(self, node: Node) -> RngStep:
        """A step for ``rng="fast"``: its own state, derived from the generator's state and the
        step's position, so nothing before it needs to be replayed (index -1: not in order)."""
        current = self.generator.get_state()
        if self.new_segment or not torch.equal(current, self.untouched):
            self.untouched = current
            self.new_segment = False
            self.fast_count = 0
        self.fast_count = getattr(self, "fast_count", 0) + 1
        digest = hashlib.blake2b(self.untouched.numpy().tobytes(), digest_size=8)
        digest.update(self.fast_count.to_bytes(8, "little"))
        derived = torch.Generator(device=self.generator.device)
        derived.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        step = RngStep(self, -1, node)
        step.state_before = derived.get_state()
        return step

    def step_at(self, index: int) -> RngStep:
        return self.steps[index]

    def is_last(self, step: RngStep) -> bool:
        return step.index == self.next_index - 1

    def compact(self) -> None:
        """Drop runs of steps that nothing needs and after which the generator state is known."""
        run: list[int] = []
        for index, step in list(self.steps.items()):
            if step.state_before is not None:
                for dead in run:
                    del self.steps[dead]
                run = []
            if not step.wanted():
                run.append(index)
            else:
                run = []
        if run and self.end_state is not None:
            for dead in run:
                del self.steps[dead]
            if not self.steps:
                self.resume = self.end_state


_streams: dict[int, RngStream] = {}


def default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    raise NotImplementedError(f"dormant has no random stream for device type {device.type!r}")


def stream_for(generator: torch.Generator | None, device: torch.device) -> RngStream:
    """The stream of ``generator``, or of ``device``'s default generator when it is None."""
    gen = generator if generator is not None else default_generator(device)
    # Generators passed through the dispatcher come back as new Python objects over the same
    # C++ generator: key by the latter. The stream keeps it alive, so the key stays unique.
    key: int = gen._cdata  # type: ignore[attr-defined]
    stream = _streams.get(key)
    if stream is None:
        stream = _streams[key] = RngStream(gen)
    return stream


def compact_all() -> None:
    """Forget the steps that no live lazy tensor needs (after materializing)."""
    for stream in _streams.values():
        stream.compact()


def start_segments() -> None:
    """Called when a LazyInitContext is entered: every stream restarts from its current state."""
    for stream in _streams.values():
        stream.new_segment = True
        stream.compact()
