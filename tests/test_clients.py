"""materialize with the libraries people shard with: torchtitan, Lightning, accelerate.

Each client runs its own code at 2 gloo ranks under torchrun; the only change to its recipe is
that the model is built in ``LazyInitContext`` and ``dormant.materialize(model)`` replaces
``to_empty`` + ``init_weights``. Full values (``DTensor.full_tensor()`` of every parameter and
buffer) must equal an eager single-process build bit for bit, and the generator must stand where
the eager build leaves it.

The clients are the ``clients`` extra plus torchtitan without its training dependencies
(``pip install -e ".[test,clients]" && pip install --no-deps torchtitan==0.3.0``, as
``tools/test.sh`` does). A client that is not installed fails its test: CI must run them all.

Each ``scenario_*`` function runs on every rank (through ``distributed/run.py``) and returns what
it found; the tests right after it launch it and check the findings.
"""

from __future__ import annotations

import dataclasses
import importlib
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers import run_ranks
from test_user_sharding import BLOCK_PLAN, Eager, lazy, llama, materialized
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import dormant
from dormant import LazyInitContext, is_lazy

SEED = 1234  # every rank's seed (the runner calls dormant.launch(seed=SEED))
TIMEOUT = 300  # seconds for one multi-process test; each takes 10-40 s on 2 cores


def require(module: str) -> None:
    """Fail (not skip) when a client is missing: CI installs the ``clients`` extra."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.fail(
            f"{module} is not installed ({e}). Install the clients as tools/test.sh does: "
            "pip install -e '.[test,clients]' && pip install --no-deps torchtitan==0.3.0"
        )


def full_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, a DTensor gathered to its full value."""
    named = chain(model.named_parameters(), model.named_buffers())
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in named}


def compare(model: nn.Module, eager: dict[str, torch.Tensor], rng: torch.Tensor) -> dict[str, Any]:
    """materialize ``model`` and compare it with the eager build's values and generator state."""
    before = is_lazy(model)
    rng_lazy = torch.get_rng_state()
    report = dormant.materialize(model, report=True)
    found = full_values(model)
    return {
        "lazy_before": before,
        "lazy_after": is_lazy(model),
        "names": len(found),
        "not_equal": sorted(
            k for k, v in eager.items() if k not in found or not torch.equal(v, found[k])
        ),
        "rng_untouched": torch.equal(rng_lazy, torch.get_rng_state()),
        "rng_as_eager": torch.equal(rng_lazy, rng),
        "whole": [f"{w.name}: {w.reason}" for w in report.whole],
        "placements": sorted(
            {str(p.placements) for p in model.parameters() if isinstance(p, DTensor)}
        ),
    }


def assert_exact(found: dict[str, Any], what: str) -> None:
    assert found["lazy_before"] and not found["lazy_after"], what
    assert found["names"] > 0 and found["not_equal"] == [], what
    assert found["rng_untouched"] and found["rng_as_eager"], what


# --- torchtitan: its Llama 3 model and its parallelize_llama -----------------------------------


def titan_model() -> nn.Module:
    """torchtitan's Llama 3 debug model (2 of its 6 layers), built as its trainer builds it:
    sharding declarations set on the config, RoPE cut to the training sequence length."""
    from torchtitan.models.llama3 import llama3_configs
    from torchtitan.models.llama3.sharding import set_llama3_sharding_config

    config = llama3_configs["debugmodel"](attn_backend="flex")
    config.layers = config.layers[:2]
    for layer in config.layers:
        layer.attention.rope = dataclasses.replace(layer.attention.rope, max_seq_len=64)
    set_llama3_sharding_config(config, enable_sp=True)
    return config.build()


def scenario_torchtitan() -> dict[str, Any]:
    import torchtitan.distributed.parallel_dims
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.llama3 import parallelize_llama

    # torchtitan takes its device type from the accelerator it finds at import and falls back to
    # "cuda", so on a CPU-only machine ParallelDims.build_mesh fails in init_device_mesh("cuda")
    # (AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'): point it at the CPU.
    torchtitan.distributed.parallel_dims.device_type = "cpu"
    torch.manual_seed(SEED)
    eager_model = titan_model()
    eager_model.init_weights(buffer_device=None)
    eager, rng = full_values(eager_model), torch.get_rng_state()
    results = {}
    # torchtitan's default backend, spmd_types, fails on gloo without dormant too (fully_shard:
    # "all parameters must be DTensors on the full SPMD mesh"); its two DTensor backends run.
    layouts = {"fsdp": (1, "partial_dtensor"), "tp": (2, "partial_dtensor")}
    layouts["fsdp_full_dtensor"] = (1, "full_dtensor")
    for name, (tp, backend) in layouts.items():
        parallelism = ParallelismConfig(tensor_parallel_degree=tp, spmd_backend=backend)
        dims = ParallelDims.from_config(parallelism, dist.get_world_size())
        dims.build_mesh()
        torch.manual_seed(SEED)
        with LazyInitContext():
            model = titan_model()
            model.init_weights(buffer_device=None)
        model = parallelize_llama(
            model,
            parallel_dims=dims,
            training=TrainingConfig(mixed_precision_param="float32"),
            parallelism=parallelism,
            compile_config=CompileConfig(),
            ac_config=None,
            dump_folder="",
        )
        results[name] = compare(model, eager, rng)
    return results


@pytest.mark.timeout(TIMEOUT)
def test_torchtitan_parallelize_llama_then_materialize_is_exact(tmp_path: Path) -> None:
    require("torchtitan")
    for found in run_ranks(scenario_torchtitan, tmp_path):
        for layout, result in found.items():
            assert_exact(result, layout)
            # Exact, and torchtitan's trunc_normal_ inits computed shard by shard, except the
            # head's: its bounds at 3 std make trunc_normal_ a rejection loop whose draws depend
            # on the values. The fused QKV weight's cat and the RoPE cache's polar have no
            # window rule either, so those shards are computed from their whole tensors.
            known = (
                "lm_head.weight: torch.nn.init.trunc_normal_((2048, 256)): a rejection loop",
                "aten.cat",
                "aten.polar",
            )
            assert all(any(k in w for k in known) for w in result["whole"]), result["whole"]
        # FSDP shards every parameter on dim 0; TP x FSDP (a 2-D mesh, FSDP of degree 1) shards
        # the embeddings, head and every projection over the TP ranks too
        assert found["fsdp"]["placements"] == ["(Shard(dim=0),)"]
        tp = found["tp"]["placements"]
        assert "(_StridedShard(dim=0, sf=2), Shard(dim=0))" in tp, tp
        assert "(Shard(dim=0), Shard(dim=1))" in tp, tp


# --- Lightning: ModelParallelStrategy, the model built and sharded in configure_model ----------


def scenario_lightning() -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader

    eager = Eager(llama)

    class LitLlama(pl.LightningModule):
        def __init__(self, tensor_parallel: bool) -> None:
            super().__init__()
            self.tensor_parallel = tensor_parallel
            self.model: nn.Module | None = None
            self.found: dict[str, Any] = {}

        def configure_model(self) -> None:
            if self.model is not None:
                return
            torch.manual_seed(SEED)
            with LazyInitContext():
                self.model = llama()
            if self.tensor_parallel:
                for block in self.model.model.layers:
                    parallelize_module(block, self.device_mesh["tensor_parallel"], BLOCK_PLAN)
            else:
                mesh = self.device_mesh["data_parallel"]
                for block in self.model.model.layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(self.model, mesh=mesh)
            self.found = materialized(self.model, eager)  # calls dormant.materialize

        def training_step(self, batch: torch.Tensor) -> torch.Tensor:
            assert self.model is not None
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    results = {}
    world = dist.get_world_size()
    for name, (dp, tp) in {"fsdp": (world, 1), "tp": (1, world)}.items():
        module = LitLlama(tensor_parallel=tp > 1)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=world,
            strategy=ModelParallelStrategy(data_parallel_size=dp, tensor_parallel_size=tp),
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        batches = DataLoader([torch.arange(6) % 128 for _ in range(4)], batch_size=2)
        trainer.fit(module, batches)
        results[name] = {**module.found, "steps": trainer.global_step}
    return results


@pytest.mark.timeout(TIMEOUT)
def test_lightning_model_parallel_strategy_then_materialize_is_exact(tmp_path: Path) -> None:
    require("lightning")
    for found in run_ranks(scenario_lightning, tmp_path):
        for layout, result in found.items():
            assert result["lazy_before"] and not result["lazy_after"], layout
            assert result["not_equal"] == [] and result["whole"] == [], layout
            assert result["rng_untouched"] and result["rng_as_eager"], layout
            assert result["dtensors"] > 0 and result["steps"] == 2, layout
        # each rank holds about half: the strategy's mesh really shards
        assert found["fsdp"]["local_params"] <= 0.55 * found["fsdp"]["full_params"]


# --- accelerate: Accelerator(fsdp_plugin=...) on a CPU process group ---------------------------


def scenario_accelerator_on_cpu() -> dict[str, Any]:
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_ram_efficient_loading=False)
    accelerator = Accelerator(fsdp_plugin=plugin, cpu=True)
    found: dict[str, Any] = {"type": str(accelerator.distributed_type)}
    try:
        accelerator.prepare(lazy(llama))
    except dormant.LazyTensorError as e:
        found["error"] = str(e)
    eager = Eager(llama)
    model = lazy(llama)
    found["materialized"] = materialized(model, eager)
    model = accelerator.prepare(model)  # the materialized model, replicated over the ranks (DDP)
    ids = torch.arange(12).reshape(2, 6) % 128
    accelerator.backward(model(input_ids=ids, labels=ids).loss)
    found["prepared"] = type(model).__name__
    return found


@pytest.mark.timeout(TIMEOUT)
def test_accelerator_on_cpu_does_not_shard_and_says_to_materialize_first(tmp_path: Path) -> None:
    """accelerate turns its FSDP plugin on for GPU-family devices only: on a CPU process group
    ``prepare`` wraps the model in DDP, whose first broadcast needs values. That fails with
    dormant's error naming ``materialize``; materializing first works, unsharded. (FSDP2 itself,
    what ``prepare`` runs on a GPU, is tested through ``fsdp2_prepare_model`` in
    ``test_user_sharding.py``.)"""
    require("accelerate")
    for found in run_ranks(scenario_accelerator_on_cpu, tmp_path):
        assert found["type"] == "DistributedType.MULTI_CPU"
        assert "dormant.materialize(module)" in found["error"]
        assert found["materialized"]["not_equal"] == []
        assert found["prepared"] == "DistributedDataParallel"


# --- torchtitan's whole tensor-parallel plan, on transformers' Llama ---------------------------


def parallelize_whole(model: nn.Module, mesh: Any) -> None:
    """torchtitan's tensor-parallel plan, in transformers' module names: the embeddings and head
    are sharded too (only the norms' weights stay whole). Without its sequence parallelism,
    which transformers' Llama cannot run (it computes positions from the local sequence)."""
    head = {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
        "lm_head": ColwiseParallel(output_layouts=Replicate()),
    }
    parallelize_module(model, mesh, head)
    for block in model.model.layers:
        parallelize_module(block, mesh, BLOCK_PLAN)


def scenario_whole_tp_plan() -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    eager = Eager(llama)
    model = lazy(llama)
    parallelize_whole(model, mesh)
    found = materialized(model, eager)
    ids = torch.arange(12).reshape(2, 6) % 128
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    found["trains"] = bool(torch.isfinite(loss))
    found["whole_matrices"] = [  # a matrix not sharded on the TP mesh
        k
        for k, p in model.named_parameters()
        if p.dim() > 1 and (not isinstance(p, DTensor) or p.placements[0].is_replicate())
    ]
    return found


@pytest.mark.timeout(TIMEOUT)
def test_whole_tensor_parallel_plan_then_materialize_is_exact(tmp_path: Path) -> None:
    for found in run_ranks(scenario_whole_tp_plan, tmp_path):
        assert found["lazy_before"] and not found["lazy_after"]
        assert found["not_equal"] == [] and found["whole"] == []
        assert found["rng_untouched"] and found["rng_as_eager"]
        assert found["whole_matrices"] == []  # embeddings and head sharded, not replicated
        assert found["trains"]
        assert found["local_params"] <= 0.55 * found["full_params"]
