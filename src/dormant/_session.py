"""The recording session: which thread records, where new tensors go, how random ops record,
and the random streams model code draws from.

One :class:`~dormant.LazyInitContext` at a time records, on one thread (nested contexts on that
thread join it). Everything below the context reads the session from here, so this module
imports nothing from dormant.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes


class RngMode(enum.Enum):
    """How random ops are recorded (``LazyInitContext(rng=...)``)."""

    EXACT = "exact"  # eager's values: each op at its place on eager's stream
    FAST = "fast"  # each op from its own derived state: reproducible, not eager's


@dataclass
class RecordingSession:
    """The state of the recording session (one per process): the one owner of it, started and
    stopped by :class:`~dormant.LazyInitContext` (under ``lock``)."""

    owner: int | None = None  # the thread that records
    depth: int = 0  # nesting of contexts on that thread
    device: torch.device | None = None
    rng: RngMode = RngMode.EXACT
    # The random streams of the session (an ``_rng.Streams``, which the context makes: this
    # module imports nothing of dormant); finished by ``_rng.end_session`` before ``stop``.
    streams: Any = None

    def start(self, device: torch.device, rng: RngMode, streams: Any) -> None:
        self.owner, self.depth, self.device, self.rng = threading.get_ident(), 1, device, rng
        self.streams = streams

    def stop(self) -> None:
        self.owner, self.depth, self.device, self.rng = None, 0, None, RngMode.EXACT
        self.streams = None


session = RecordingSession()
lock = threading.Lock()  # guards starting and stopping the session


def recording_active() -> bool:
    """Whether the calling thread is inside a :class:`~dormant.LazyInitContext`."""
    return session.owner == threading.get_ident()


@contextlib.contextmanager
def real_execution() -> Iterator[None]:
    """Run real ops: no recording modes, no torch-function overrides, no autograd, and none of the
    caller's modes that change values or kinds of tensors (autocast, inference mode): values are
    those the build computed, whatever mode ``materialize`` is called in."""
    with (
        _disable_current_modes(),
        torch._C.DisableTorchFunction(),
        torch.inference_mode(False),  # (before no_grad: it enables grad mode)
        torch.no_grad(),
        torch._C._DisableAutocast(),
    ):
        yield


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` for the block (a process-wide setting)."""
    saved = torch.get_default_dtype()
    if saved is dtype:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


_CPU = torch.device("cpu")


def normalize_device(device: str | int | torch.device | None) -> torch.device:
    """A ``torch.device`` with its index filled in (``"cuda"`` -> ``cuda:<current>``)."""
    if device is None:
        return _CPU
    if type(device) is torch.device and device.type == "cpu":
        return device  # the common case, without making a new device
    if isinstance(device, int):
        device = torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} but CUDA is not available; use 'cpu'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device
