"""launch(): set up the process group the Booster's plugins run on."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def launch(
    backend: str | dict[str, Any] | None = None,
    seed: int | None = None,
    timeout: timedelta | None = None,
) -> None:
    """Initialise ``torch.distributed`` from torchrun's environment, pick the device, and seed.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as set by
    ``torchrun``; without them it starts a one-process group on this machine, so the same script
    runs with and without torchrun. The backend defaults to nccl when CUDA is available and gloo
    otherwise. With CUDA, the current device becomes ``cuda:LOCAL_RANK``.

    Pass the same ``seed`` on every rank: lazily built models then get the same values on every
    rank, which sharded materialization relies on (each rank computes its own shards). A dict
    in place of the backend is the config argument of the API dormant follows
    (``launch({})``): dormant has no config, so it must be empty.

    Example::

        # torchrun --nproc_per_node=2 train.py
        import dormant

        dormant.launch(seed=0)
    """
    if isinstance(backend, dict):
        if backend:
            raise TypeError(
                f"dormant.launch() takes no config dict, got keys {sorted(backend)}: pass "
                "launch(backend=..., seed=...)"
            )
        backend = None
    if dist.is_initialized():
        raise RuntimeError("dormant.launch(): torch.distributed is already initialised")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, timeout=timeout or timedelta(minutes=10))
    if seed is not None:
        torch.manual_seed(seed)


def launch_from_torch(backend: str | None = None, seed: int = 1024, verbose: bool = True) -> None:
    """:func:`launch` with the name and seed default (1024) of the API dormant follows.

    Example::

        # torchrun --nproc_per_node=2 train.py
        import dormant

        dormant.launch_from_torch(seed=42)
    """
    launch(backend, seed=seed)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
