"""dormant: build PyTorch models of any size without allocating them, materialize them later.

Example::

    >>> import torch
    >>> from dormant import LazyInitContext, materialize
    >>> with LazyInitContext():
    ...     model = torch.nn.Linear(1024, 1024)   # no storage allocated
    >>> model = materialize(model)              # values equal eager construction, bit for bit
"""

from ._context import LazyInitContext
from ._lazy_tensor import LazyTensor
from ._materialize import is_lazy, materialize
from ._report import MaterializeReport
from ._spmd import check_same_program
from .checkpoint import CheckpointError, LoadResult, load_checkpoint, read_checkpoint
from .errors import DormantError, LazyTensorError, MaterializationError, UnsupportedOpError
from .launch import launch, launch_from_torch

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DormantError",
    "LazyInitContext",
    "LazyTensor",
    "LazyTensorError",
    "LoadResult",
    "MaterializationError",
    "MaterializeReport",
    "UnsupportedOpError",
    "check_same_program",
    "is_lazy",
    "launch",
    "launch_from_torch",
    "load_checkpoint",
    "materialize",
    "read_checkpoint",
]
