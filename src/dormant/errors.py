"""Exceptions raised by dormant.

Every error says what was found and what to do next. Errors about one tensor carry its description
(and its fully qualified name where dormant knows it) so that callers can inspect them.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "DormantError",
    "LazyTensorError",
    "MaterializationError",
    "UnsupportedOpError",
]


class DormantError(RuntimeError):
    """Base class of every error dormant raises on purpose."""


class LazyTensorError(DormantError):
    """A lazy tensor was used where real values are needed and cannot be computed.

    Raised, for example, when a lazy tensor reaches a kernel that needs its data (``.item()``,
    ``.numpy()``, ``torch.save``) outside :class:`~dormant.LazyInitContext`: materialize the
    module first with :func:`dormant.materialize`.
    """

    def __init__(self, message: str, *, tensor: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor
        self.op = op


class UnsupportedOpError(DormantError):
    """An op cannot be recorded on a lazy tensor (for example an in-place metadata change)."""

    def __init__(self, message: str, *, op: str) -> None:
        super().__init__(message)
        self.op = op


class MaterializationError(DormantError):
    """Computing or installing the value of a lazy tensor failed.

    ``name`` is the fully qualified name of the tensor in the module being materialized (when
    known); ``done`` lists the names that were materialized before the failure, so nothing is
    half-done without saying so.
    """

    def __init__(
        self, message: str, *, name: str | None = None, done: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.name = name
        self.done = done


class CheckpointError(DormantError):
    """The checkpoint does not fit the model, cannot be read, or changed since it was loaded.

    Raised by :func:`load_checkpoint` before anything is loaded, or while materializing when a
    file changed after :func:`load_checkpoint` (then nothing is read from it and the model stays
    lazy). ``missing`` and ``unexpected`` list keys; ``mismatched`` lists
    ``(key, in model, in file)`` descriptions of shape or dtype differences; ``path`` and ``key``
    name the file and the tensor when the error is about one of them.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, str, str]] = (),
        *,
        path: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.path = path
        self.key = key
