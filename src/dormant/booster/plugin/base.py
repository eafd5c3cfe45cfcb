"""What every plugin shares: process-group checks, optimizer rebinding, dataloaders, checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..._lazy_tensor import LazyTensor
from ..._materialize import materialize
from ..._placement import fill_local, to_empty, to_meta
from ...errors import DormantError

_BOOSTED = "_dormant_boosted"
_log = logging.getLogger("dormant")

# ``mixed_precision`` names and the parameter dtype each means.
MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_type() -> str:
    """Where plugins put the model: the accelerator if there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def sharded_in_place(model: nn.Module, device: str) -> Iterator[None]:
    """Shard ``model`` with a PyTorch engine inside the block, before any value exists; then
    allocate each rank's local shards on ``device`` and fill them exactly.

    See [Note: sharded materialization] in ``_placement.py``: the model is moved to meta
    (keeping its lazy or real values aside), the engine shards meta tensors, ``to_empty``
    allocates the local shards, and each shard is filled from the values kept aside.
    """
    sources = to_meta(model)
    yield
    to_empty(model, device)
    whole = fill_local(model, sources)
    del sources
    if whole:  # (logging.getLogger("dormant").setLevel("INFO") shows them)
        _log.info(
            "dormant: %d tensors computed whole on every rank, then sliced (no window rule): %s",
            len(whole),
            "; ".join(f"{w.name} ({w.nbytes / 2**20:.1f} MiB): {w.reason}" for w in whole),
        )
    materialize(model)  # tensors held as plain attributes, if any are lazy


def check_not_boosted(model: nn.Module) -> None:
    if getattr(model, _BOOSTED, False):
        raise DormantError(
            f"{type(model).__name__} was already boosted: boost each model once, then train "
            "the model that boost() returned"
        )


def mark_boosted(model: nn.Module) -> None:
    object.__setattr__(model, _BOOSTED, True)


def require_process_group(plugin: object) -> None:
    if not dist.is_initialized():
        raise DormantError(
            f"{type(plugin).__name__} needs a process group: call dormant.launch() first "
            "(under torchrun, or alone for one process)"
        )


def check_same_program(model: nn.Module) -> None:
    """Fail loudly if ranks would shard different models.

    Lazy tensors: every rank must have recorded the same ops (names, checkpoint keys read) with
    the same random positions. Real tensors: the bytes of a strided sample of each tensor, which
    catches ranks built from different seeds or loaded from different files.
    """
    digest = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}{isinstance(t, LazyTensor)}".encode())
        if isinstance(t, LazyTensor):
            for node in t._lazy_storage.writers:
                digest.update(node.label.encode())  # "read <key>" for checkpoint reads
                if node.rng is not None and node.rng.start is not None:
                    # Where each random op draws: ranks seeded differently disagree here.
                    digest.update(node.rng.start.anchor.numpy().tobytes())
                    digest.update(str(node.rng.start.draws).encode())
        elif t.device.type != "meta" and t.numel():
            digest.update(_checksum(t))
    # One all_reduce of 32 numbers whatever the world size (all_gather_object would bring every
    # rank all world-size digests and unpickle each): the largest of each 16-bit piece of the
    # digest and of its negation, so the ranks agree iff the largest equals the smallest.
    pieces = torch.frombuffer(bytearray(digest.digest()), dtype=torch.int16).to(torch.int64)
    extremes = torch.cat([pieces, -pieces]).to(_collective_device())
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    largest, smallest = extremes.cpu().chunk(2)
    if not torch.equal(largest, -smallest):
        raise DormantError(
            "ranks built the model differently, from different RNG states or from different "
            "checkpoints, so their shards would not form one model: seed every rank the same "
            "before building (dormant.launch(seed=...) or torch.manual_seed) and load the same "
            "files on every rank"
        )


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":  # NCCL reduces accelerator memory only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _checksum(t: torch.Tensor) -> bytes:
    # A strided sample of at most 4096 elements: values built from different seeds or files
    # differ nearly everywhere, and reading all of a large model would cost a second or more.
    flat = t.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4096)].contiguous().cpu()
    return sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b""


class Plugin:
    """Base class of the plugins: subclasses implement :meth:`configure_model`."""

    mixed_precision: str | None = None

    def configure_model(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def check_mixed_precision(self, mixed_precision: str) -> None:
        """Raise :class:`DormantError` if this plugin cannot apply ``mixed_precision``.

        The :class:`~dormant.booster.Booster` calls it when it is made, before any model is built.
        """

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever wrapper the engine adds."""
        return model

    # -- optimizer and data ------------------------------------------------------------------

    def prepare_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, names: dict[int, str]
    ) -> torch.optim.Optimizer:
        """Point an optimizer built on the original parameters at the boosted ones.

        ``names`` maps ``id(original parameter)`` to its name in the module before boosting.
        """
        if optimizer.state:
            raise DormantError("boost() expects an optimizer that has not stepped yet")
        current = dict(self.unwrap(model).named_parameters(remove_duplicate=False))
        for group in optimizer.param_groups:
            group["params"] = [current[names[id(p)]] for p in group["params"]]
        return optimizer

    def prepare_dataloader(self, dataloader: DataLoader) -> DataLoader:
        """The same dataloader, each rank reading its own part of the dataset."""
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataloader.dataset, shuffle=isinstance(dataloader.sampler, RandomSampler)
        )
        return DataLoader(
            dataloader.dataset,
            batch_size=dataloader.batch_size,
            sampler=sampler,
            num_workers=dataloader.num_workers,
            collate_fn=dataloader.collate_fn,
            pin_memory=dataloader.pin_memory,
            drop_last=dataloader.drop_last,
        )

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        yield

    # -- checkpoints ---------------------------------------------------------------------------

    def save_model(self, model: nn.Module, checkpoint_dir: str) -> None:
        dcp.save(get_model_state_dict(self.unwrap(model)), checkpoint_id=checkpoint_dir)

    def load_model(self, model: nn.Module, checkpoint_dir: str) -> None:
        module = self.unwrap(model)
        state = get_model_state_dict(module)
        dcp.load(state, checkpoint_id=checkpoint_dir)
        set_model_state_dict(module, state)

    def save_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str
    ) -> None:
        state = get_optimizer_state_dict(self.unwrap(model), optimizer)
        dcp.save(state, checkpoint_id=checkpoint_dir)

    def load_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str
    ) -> None:
        module = self.unwrap(model)
        state = get_optimizer_state_dict(module, optimizer)
        dcp.load(state, checkpoint_id=checkpoint_dir)
        set_optimizer_state_dict(module, optimizer, state)

    def export_safetensors(self, model: nn.Module, path: str) -> None:
        from safetensors.torch import save_file

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, Any] = get_model_state_dict(self.unwrap(model), options=options)
        if dist.get_rank() == 0:
            seen: set[int] = set()
            unique: dict[str, torch.Tensor] = {}
            for name, t in state.items():  # tied weights are stored once
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    unique[name] = t.contiguous()
            save_file(unique, path)
        dist.barrier()


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: transformers' ``_no_split_modules`` classes,
    otherwise the members of every ``nn.ModuleList``."""
    split: Any = getattr(model, "_no_split_modules", None)
    if split:
        found = [m for m in model.modules() if type(m).__name__ in set(split)]
        if found:
            return found
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
