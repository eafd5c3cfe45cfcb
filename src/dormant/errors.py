"""Exceptions raised by dormant.

Every error says what was found and what to do next. Errors about one tensor carry its description
(and its fully qualified name where dormant knows it) so that callers can inspect them.
"""

from __future__ import annotations

__all__ = ["DormantError", "LazyTensorError", "MaterializationError", "UnsupportedOpError"]


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
