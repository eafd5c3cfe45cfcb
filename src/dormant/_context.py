"""LazyInitContext: the context manager under which models are built lazily."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import _rng
from ._materialize import materialize
from ._record import record_op
from ._replay import run_for_draws
from ._session import (
    RngMode,
    lock,
    normalize_device,
    real_execution,
    recording_active,
    session,
)
from .errors import DormantError


class _RecordingMode(TorchDispatchMode):
    """Sends every aten op to the recorder."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch wraps a mode's ``__torch_dispatch__`` in ``torch._dynamo.disable`` unless the
        # mode opts out: it imports torch._dynamo at the first op (about 1 s and 70 MiB), then
        # swaps frame evaluation twice around every op (0.75 us). Model construction is not
        # compiled, and the lazy tensors' own ``__torch_dispatch__`` (a classmethod) is never
        # wrapped either.
        return False

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return record_op(func, args, kwargs or {}, in_context=True)


# transformers' ``from_pretrained`` reads checkpoint tensors on worker threads, where this
# thread's recording mode does not apply: they would load for real. Loading on the recording
# thread keeps them lazy (read at materialization, and only the slices a rank keeps).
_LIBRARY_SETTINGS = {"HF_DEACTIVATE_ASYNC_LOAD": "1"}


@contextlib.contextmanager
def _library_settings() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in _LIBRARY_SETTINGS}
    os.environ.update(_LIBRARY_SETTINGS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _young_collections_only() -> Iterator[None]:
    """No full garbage collection while recording; young objects are still collected.

    The graph that recording builds (about a dozen objects per op) lives until materialization:
    a full collection could free none of it, yet it scans every object of the process (all of
    torch and the model library: 0.2 s in a diffusers UNet's build), at whichever op happens to
    cross the threshold. The user's thresholds come back at exit, and the next collection that
    is due then is a full one as usual.
    """
    saved = gc.get_threshold()
    gc.set_threshold(saved[0], saved[1], 1_000_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _context_device(device: str | int | torch.device | None) -> torch.device:
    try:
        resolved = normalize_device(device)
    except RuntimeError as e:  # CUDA asked for, not available
        raise RuntimeError(f"LazyInitContext(default_device={device!r}): {e}") from None
    if resolved.type == "meta":
        raise ValueError(
            "LazyInitContext(default_device='meta') would build tensors that hold no values, "
            "which materialize cannot fill: leave default_device unset (cpu) or name the device "
            "the values should be computed on (they stay lazy until materialize either way)"
        )
    return resolved


def _synced(read: Any) -> Any:
    """``read`` (a read of the default CPU generator), after putting the generator where eager
    construction would have it by now, when called on the recording thread."""

    @functools.wraps(read)
    def synced(*args: Any, **kwargs: Any) -> Any:
        if recording_active():
            with real_execution():  # (positions are computed with real ops)
                _rng.place_for_real_draw(None, torch.device("cpu"), run_for_draws)
        return read(*args, **kwargs)

    return synced


@contextlib.contextmanager
def _exact_state_reads() -> Iterator[None]:
    """Model code that reads the default generator's state (``torch.get_rng_state()``,
    ``torch.random.fork_rng()``, ``torch.initial_seed()``) reads eager's state.

    Recording draws nothing, so the real generator does not move while random ops are recorded;
    these reads first place it where eager's would stand (as a real draw inside the context
    does). ``fork_rng`` then restores eager's state, which the next random op sees as a seed.
    ``torch.default_generator.get_state()`` itself is a method of a C type, not replaceable.
    """
    saved = [
        (module, name, getattr(module, name))
        for module in (torch, torch.random)
        for name in ("get_rng_state", "initial_seed")
    ]
    for module, name, read in saved:
        setattr(module, name, _synced(read))
    try:
        yield
    finally:
        for module, name, read in saved:
            setattr(module, name, read)


_REGISTER_PARAMETER = torch.nn.Module.register_parameter
_REGISTER_BUFFER = torch.nn.Module.register_buffer


def _meta_habit() -> str | None:
    """What puts every tensor built inside on the meta device, if something does: accelerate's
    ``init_empty_weights`` (it patches ``register_parameter``), ``with torch.device("meta")``."""
    if torch.get_default_device().type == "meta":
        return 'torch.device("meta") (or accelerate\'s init_empty_weights(include_buffers=True))'
    for original, name in (
        (_REGISTER_PARAMETER, "register_parameter"),
        (_REGISTER_BUFFER, "register_buffer"),
    ):
        patched = getattr(torch.nn.Module, name)
        if patched is original:
            continue
        cells = getattr(patched, "__closure__", None) or ()
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, torch.device) and value.type == "meta":
                where = getattr(patched, "__module__", None) or "a library"
                return f"nn.Module.{name} patched by {where} (accelerate's init_empty_weights)"
    return None


class LazyInitContext:
    """Build modules without allocating their tensors.

    Inside the context every tensor that model code creates is a lazy tensor: it reports its
    shape, dtype, device and strides but holds no data. :func:`dormant.materialize` later
    computes the values, bit for bit those that eager construction from the same RNG state gives.

    Random numbers: after the context every generator the model code drew from stands where eager
    construction would have left it (recording draws nothing; it jumps the generator ahead by the
    draws it counted), so training after a lazy build draws the same numbers as after an eager
    one. Materializing draws from private generators and never changes the user's.

    The context is re-entrant on one thread: a nested ``LazyInitContext`` joins the outer one (it
    must ask for the same ``default_device``). Entering it on a second thread while another
    thread records raises ``RuntimeError``.

    Args:
        default_device: where tensors created without an explicit device live, and therefore
            where materialization computes them: ``None`` (cpu), a string, an int (a CUDA index)
            or a ``torch.device``. Equivalent to eager construction under ``with
            torch.device(default_device):``.
        rng: ``"exact"`` (default): random values equal eager construction's (draws that later
            code overwrote are jumped over, never made). ``"fast"``: each random op draws from
            its own generator state, derived from the generator's state at entry and the op's
            position in the model code; no jumps. Values then differ from eager but are the
            same for a given seed and model code, whatever the world size, sharding or
            materialization order; the generators are left as they were at entry.

    Example::

        >>> import torch
        >>> from dormant import LazyInitContext, materialize
        >>> with LazyInitContext():
        ...     model = torch.nn.Linear(4096, 4096)  # no memory allocated
        >>> model.weight.shape
        torch.Size([4096, 4096])
        >>> _ = materialize(model)
    """

    def __init__(
        self, default_device: str | int | torch.device | None = None, rng: str = "exact"
    ) -> None:
        if rng not in ("exact", "fast"):
            raise ValueError(f"LazyInitContext(rng=...) must be 'exact' or 'fast', got {rng!r}")
        self.default_device = _context_device(default_device)
        self.rng = RngMode(rng)
        self._entered: list[Any] = []

    def __enter__(self) -> LazyInitContext:
        me = threading.get_ident()
        with lock:
            if session.owner is not None and session.owner != me:
                raise RuntimeError(
                    "LazyInitContext is already recording on another thread; build lazy models "
                    "on one thread at a time"
                )
            if session.owner == me:
                if (self.default_device, self.rng) != (session.device, session.rng):
                    raise RuntimeError(
                        f"nested LazyInitContext(default_device={str(self.default_device)!r}, "
                        f"rng={self.rng.value!r}) inside one with default_device="
                        f"{str(session.device)!r}, rng={session.rng.value!r}"
                    )
                session.depth += 1
                self._entered.append(None)
                return self
            habit = _meta_habit()
            if habit is not None:
                raise DormantError(
                    f"LazyInitContext entered under {habit}: every parameter would be built on "
                    "the meta device, with no values for materialize to compute. LazyInitContext "
                    "replaces it: drop the outer context (materialize(model) gives the values; "
                    "booster.boost(model) shards first)"
                )
            session.start(self.default_device, self.rng, _rng.Streams())
        try:
            modes: list[Any] = []
            if self.default_device.type != "cpu":
                modes.append(torch.device(self.default_device))
            modes.append(_library_settings())
            modes.append(_exact_state_reads())
            modes.append(_young_collections_only())
            modes.append(_RecordingMode())
            for mode in modes:
                mode.__enter__()
                self._entered.append(mode)
        except BaseException:
            self._exit_modes()
            raise
        return self

    def _exit_modes(self, failed: bool = True) -> None:
        try:
            while self._entered:
                mode = self._entered.pop()
                if mode is not None:
                    mode.__exit__(None, None, None)
            # After the recording mode is gone: resolving may run random ops for their draws.
            _rng.end_session(None if failed else run_for_draws)  # (the session's streams)
        finally:
            with lock:
                session.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered and self._entered[-1] is None:
            self._entered.pop()
            session.depth -= 1
            return
        self._exit_modes(failed=exc_type is not None)

    @staticmethod
    def materialize(module: torch.nn.Module, verbose: bool = False) -> torch.nn.Module:
        """Same as :func:`dormant.materialize` (kept for users of the API dormant follows)."""
        return materialize(module, verbose=verbose)
