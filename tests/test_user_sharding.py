"""materialize after the user's own sharding code, on real 2-rank gloo runs under torchrun.

The user builds the model in ``LazyInitContext``, shards it with their own code (FSDP2's
``fully_shard``, DTensor's ``parallelize_module``, a pipeline split), and calls
``dormant.materialize(model)`` where they would call ``to_empty`` and ``init_weights``.
``parallelize_llama`` below follows torchtitan's recipe on transformers' Llama (``fully_shard``
per block, then the root; tensor parallelism with ``ColwiseParallel`` / ``RowwiseParallel``
plans); torchtitan's own code, Lightning and accelerate's ``Accelerator`` are in
``test_clients.py``.

Each ``scenario_*`` function runs on every rank (through ``distributed/run.py``) and returns what
it found; the tests right after it launch it and check the findings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from booster_cases import memory_llama, resident_bytes, wide_llama
from helpers import run_ranks
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import (
    DTensor,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

import dormant
from dormant import LazyInitContext, is_lazy

SEED = 1234  # every rank's seed (the runner calls dormant.launch(seed=SEED))


def llama(layers: int = 2, tied: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


# torchtitan's tensor-parallel plan for a Llama block, in transformers' module names.
BLOCK_PLAN = {
    "self_attn.q_proj": ColwiseParallel(),
    "self_attn.k_proj": ColwiseParallel(),
    "self_attn.v_proj": ColwiseParallel(),
    "self_attn.o_proj": RowwiseParallel(),
    "mlp.gate_proj": ColwiseParallel(),
    "mlp.up_proj": ColwiseParallel(),
    "mlp.down_proj": RowwiseParallel(),
}


def parallelize_llama(model: nn.Module, mesh: DeviceMesh, *, tp: bool, dp: bool) -> None:
    """torchtitan's recipe, on transformers' Llama: tensor parallelism on ``mesh["tp"]``, then
    ``fully_shard`` per block and the root on ``mesh["dp"]``."""
    if tp:
        for block in model.model.layers:
            parallelize_module(block, mesh["tp"], BLOCK_PLAN)
    if dp:
        for block in model.model.layers:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])


class Eager:
    """The single-process eager build from ``SEED``: its values and where it leaves the RNG."""

    def __init__(self, ctor: Callable[[], nn.Module]) -> None:
        torch.manual_seed(SEED)
        model = ctor()
        self.rng = torch.get_rng_state()
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def not_equal(self, model: nn.Module) -> list[str]:
        """Names whose gathered full values differ from eager's (or are missing)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        state = get_model_state_dict(model, options=options)
        return sorted(
            k for k, v in self.state.items() if k not in state or not torch.equal(v, state[k])
        )


def lazy(ctor: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(SEED)
    with LazyInitContext():
        return ctor()


def materialized(model: nn.Module, eager: Eager) -> dict[str, Any]:
    """materialize ``model`` and say what came out: exactness, RNG, laziness, shard-only work."""
    before = is_lazy(model)
    rng = torch.get_rng_state()
    report = dormant.materialize(model, report=True)
    local = sum(
        p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters()
    )
    return {
        "lazy_before": before,
        "lazy_after": is_lazy(model),
        "not_equal": eager.not_equal(model),
        "rng_untouched": torch.equal(rng, torch.get_rng_state()),
        "rng_as_eager": torch.equal(rng, eager.rng),
        "shard_elements": report.shard_elements,
        "drawn": report.shard_drawn,
        "whole": [w.name for w in report.whole],
        "local_params": local,
        "dtensors": sum(isinstance(p, DTensor) for p in model.parameters()),
        "full_params": sum(v.numel() for k, v in eager.state.items() if "rotary" not in k),
    }


def scenario_fsdp() -> dict[str, Any]:
    results = {}
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("dp",))
    for tied in (False, True):
        ctor = functools.partial(llama, tied=tied)
        eager = Eager(ctor)
        model = lazy(ctor)
        parallelize_llama(model, mesh, tp=False, dp=True)
        found_block = True
        if not tied:  # one block first, then the rest: the same values
            dormant.materialize(model.model.layers[1])
            found_block = not is_lazy(model.model.layers[1]) and is_lazy(model.model.layers[0])
        found = materialized(model, eager)
        found["one_block_first"] = found_block
        found["still_tied"] = model.lm_head.weight is model.model.embed_tokens.weight
        ids = torch.arange(12).reshape(2, 6) % 128
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        found["trains"] = bool(torch.isfinite(loss))
        results[f"tied={tied}"] = found
    return results


def test_fully_shard_then_materialize_is_exact_and_shard_only(tmp_path: Path) -> None:
    for found in (f for rank in run_ranks(scenario_fsdp, tmp_path) for f in rank.values()):
        assert found["lazy_before"] and not found["lazy_after"]
        assert found["not_equal"] == []
        assert found["rng_untouched"] and found["rng_as_eager"]
        assert found["dtensors"] > 0 and found["trains"] and found["one_block_first"]
        assert found["whole"] == []
        # every local element computed alone, and nothing more than the rank's half (padding)
        assert found["shard_elements"] <= 0.55 * found["full_params"]
    assert found["still_tied"]  # (the last one is the tied model)


class Table(nn.Module):
    """Parameters to distribute by hand, one per layout."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.randn(37, 24))  # Shard(0), uneven
        self.cols = nn.Parameter(torch.empty(24, 40).uniform_(-1, 1))  # Shard(1)
        self.rep = nn.Parameter(torch.randn(16, 16))  # Replicate
        self.register_buffer("steps", torch.arange(10, dtype=torch.float32) * 0.5)
        # no window rule, and too large (above 65536 elements) to be drawn whole by a window
        self.orth = nn.Parameter(nn.init.orthogonal_(torch.empty(320, 300)))


def scenario_tensor_parallel() -> dict[str, Any]:
    results: dict[str, Any] = {}
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    # parallelize_module with torchtitan's plan on every block
    eager = Eager(llama)
    model = lazy(llama)
    for block in model.model.layers:
        parallelize_module(block, mesh, BLOCK_PLAN)
    results["parallelize_module"] = materialized(model, eager)
    # the same, sharding inside the context
    torch.manual_seed(SEED)
    with LazyInitContext():
        model = llama()
        for block in model.model.layers:
            parallelize_module(block, mesh, BLOCK_PLAN)
    results["inside_context"] = materialized(model, eager)
    # distribute_tensor on each dimension, and Replicate
    eager = Eager(Table)
    table = lazy(Table)
    layouts = {"rows": [Shard(0)], "cols": [Shard(1)], "rep": [Replicate()], "orth": [Shard(0)]}
    for name, placements in layouts.items():
        param = getattr(table, name)
        table.register_parameter(name, nn.Parameter(distribute_tensor(param, mesh, placements)))
    results["distribute_tensor"] = materialized(table, eager)
    # distribute_module's default: every parameter and buffer replicated
    eager = Eager(Table)
    results["distribute_module"] = materialized(distribute_module(lazy(Table), mesh), eager)
    return results


def test_tensor_parallel_then_materialize_is_exact(tmp_path: Path) -> None:
    for found in run_ranks(scenario_tensor_parallel, tmp_path):
        for layout, result in found.items():
            assert result["lazy_before"] and not result["lazy_after"], layout
            assert result["not_equal"] == [], layout
            assert result["rng_untouched"] and result["rng_as_eager"], layout
            assert result["dtensors"] > 0, layout
        # every local shard computed alone (a padded uneven last chunk too), but for an init
        # without a window rule: computed whole, still exact
        assert found["parallelize_module"]["whole"] == []
        assert found["distribute_tensor"]["whole"] == ["orth"]


def scenario_pipeline() -> dict[str, Any]:
    # torchtitan's manual pipeline split: each stage deletes the layers other stages own (its
    # layers live in a ModuleDict, so names stay those of the whole model).
    eager = Eager(lambda: llama(layers=4))
    model = lazy(lambda: llama(layers=4))
    stage, stages = dist.get_rank(), dist.get_world_size()
    layers = nn.ModuleDict({str(i): block for i, block in enumerate(model.model.layers)})
    per = len(layers) // stages
    for i in range(len(layers)):
        if not stage * per <= i < (stage + 1) * per:
            del layers[str(i)]
    model.model.layers = layers
    if stage != 0:
        model.model.embed_tokens = None
    if stage != stages - 1:
        model.model.norm = None
        model.lm_head = None
    before = is_lazy(model)
    rng = torch.get_rng_state()
    report = dormant.materialize(model, report=True)
    state = model.state_dict()
    return {
        "lazy_before": before,
        "lazy_after": is_lazy(model),
        "not_equal": sorted(k for k in state if not torch.equal(state[k], eager.state[k])),
        "keys": sorted(state),
        "rng_untouched": torch.equal(rng, torch.get_rng_state()),
        "replayed_numel": report.numel,
        "full_numel": sum(v.numel() for v in eager.state.values()),
    }


@pytest.mark.parametrize("stages", [2, 4])
def test_pipeline_stage_materializes_only_its_layers(tmp_path: Path, stages: int) -> None:
    found = run_ranks(scenario_pipeline, tmp_path, nproc=stages)
    per = 4 // stages
    for rank, stage in enumerate(found):
        assert stage["lazy_before"] and not stage["lazy_after"]
        assert stage["not_equal"] == [] and stage["rng_untouched"]
        layers = {k.split(".")[2] for k in stage["keys"] if k.startswith("model.layers.")}
        assert layers == {str(per * rank + i) for i in range(per)}
        assert stage["replayed_numel"] < (1 / stages + 0.1) * stage["full_numel"]
    assert "lm_head.weight" in found[-1]["keys"] and "lm_head.weight" not in found[0]["keys"]


def scenario_four_ranks() -> dict[str, Any]:
    results: dict[str, Any] = {}
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    eager = Eager(llama)
    flat = init_device_mesh("cpu", (4,), mesh_dim_names=("dp",))
    tp4 = init_device_mesh("cpu", (1, 4), mesh_dim_names=("dp", "tp"))
    for name, layout, tp, dp in (
        ("tp_x_fsdp", mesh, True, True),
        ("fsdp4", flat, False, True),
        ("tp4", tp4, True, False),
    ):
        model = lazy(llama)
        parallelize_llama(model, layout, tp=tp, dp=dp)
        results[name] = materialized(model, eager)
    # HSDP: replicate across dp, shard across the other dimension
    model = lazy(llama)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    results["hsdp"] = materialized(model, eager)
    return results


def test_layouts_at_four_ranks_are_exact(tmp_path: Path) -> None:
    for found in run_ranks(scenario_four_ranks, tmp_path, nproc=4):
        for layout, result in found.items():
            assert result["lazy_before"] and not result["lazy_after"], layout
            assert result["not_equal"] == [], layout
            assert result["rng_untouched"] and result["rng_as_eager"], layout
            assert result["dtensors"] > 0, layout
            assert result["whole"] == [], layout  # every local shard computed alone


def scenario_ranks_disagree() -> dict[str, Any]:
    torch.manual_seed(SEED + dist.get_rank())  # a user who forgot to seed every rank the same
    with LazyInitContext():
        model = llama()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    errors: dict[str, str] = {}
    for name, call in (
        ("check_same_program", lambda: dormant.check_same_program(model)),
        ("parallelize_module", lambda: parallelize_module(model.model.layers[0], mesh, BLOCK_PLAN)),
        ("distribute_tensor", lambda: distribute_tensor(model.lm_head.weight, mesh, [Replicate()])),
    ):
        try:
            call()
            errors[name] = ""
        except dormant.DormantError as e:
            errors[name] = str(e)
    torch.manual_seed(SEED)
    with LazyInitContext():
        same = llama()
    dormant.check_same_program(same)  # ranks that agree pass
    return errors


def test_ranks_built_differently_get_a_clear_error_not_a_scatter(tmp_path: Path) -> None:
    for errors in run_ranks(scenario_ranks_disagree, tmp_path):
        for name, message in errors.items():
            assert "seed every rank the same" in message, name


def scenario_accelerate() -> dict[str, Any]:
    # accelerate's Accelerator enables its FSDP2 plugin on GPU-family devices only (on a CPU
    # process group it stays DistributedType.MULTI_CPU and prepare() does not shard), so this
    # calls what its prepare() runs for FSDP2, with the plugin an Accelerator would hold.
    from types import SimpleNamespace

    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_ram_efficient_loading=False)
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        parallelism_config=None,
        mixed_precision="no",
        is_main_process=dist.get_rank() == 0,
        device=torch.device("cpu"),
    )
    eager = Eager(llama)
    model = fsdp2_prepare_model(accelerator, lazy(llama))
    return materialized(model, eager)


def test_accelerate_fsdp2_preparation_then_materialize_is_exact(tmp_path: Path) -> None:
    for found in run_ranks(scenario_accelerate, tmp_path):
        assert found["lazy_before"] and not found["lazy_after"]
        assert found["not_equal"] == [] and found["whole"] == []
        assert found["rng_untouched"] and found["rng_as_eager"] and found["dtensors"] > 0


def scenario_memory_and_uneven() -> dict[str, Any]:
    """Per-rank peak memory of fully_shard + materialize on a 400 MB lazy Llama (default
    allocator), then uneven shards of a wide Llama under FSDP2 and TP x FSDP2."""

    from dormant.cli import peak_rss  # VmHWM: not the parent's peak

    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    warm = lazy(llama)  # the code paths loaded
    parallelize_llama(warm, mesh, tp=False, dp=True)
    dormant.materialize(warm)
    del warm
    before = peak_rss()
    now = resident_bytes()
    with LazyInitContext():
        model = memory_llama()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    parallelize_llama(model, mesh, tp=False, dp=True)
    report = dormant.materialize(model, report=True)
    results: dict[str, Any] = {
        "drawn": report.shard_drawn,
        "numel": report.numel,
        "growth": peak_rss() - now,
        "before": before - now,
        "model": nbytes,
        "world": world,
    }
    del model
    eager = Eager(wide_llama)
    model = lazy(wide_llama)
    parallelize_llama(model, mesh, tp=False, dp=True)
    results["fsdp"] = materialized(model, eager)
    model = lazy(wide_llama)
    two = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
    parallelize_llama(model, two, tp=True, dp=True)
    results["tp_x_fsdp"] = materialized(model, eager)
    return results


def test_rank_holds_about_its_share_and_uneven_shards_are_exact(tmp_path: Path) -> None:
    for found in run_ranks(scenario_memory_and_uneven, tmp_path):
        assert found["before"] < 0.05 * found["model"]  # the earlier peak hides nothing
        share = found["growth"] / found["model"]
        assert share <= 1 / found["world"] + 0.1, f"peak growth {share:.2f}x the model's bytes"
        # each rank draws about its share of the random numbers, not the model's
        assert found["drawn"] <= (1 / found["world"] + 0.05) * found["numel"]
        assert found["fsdp"]["drawn"] <= 0.6 * found["fsdp"]["full_params"]
        for layout in ("fsdp", "tp_x_fsdp"):
            result = found[layout]
            assert result["lazy_before"] and not result["lazy_after"], layout
            assert result["not_equal"] == [] and result["rng_as_eager"], layout
            assert result["whole"] == [], layout


def scenario_fsdp_options() -> dict[str, Any]:
    """fully_shard's options the Booster plugins use: mixed precision, CPU offload, keeping
    parameters gathered after forward (ZeRO-2); each then trains two steps."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    options: dict[str, dict[str, Any]] = {
        "bf16": {"mp_policy": MixedPrecisionPolicy(torch.bfloat16, torch.float32)},
        "offload": {"offload_policy": CPUOffloadPolicy(pin_memory=False)},
        "zero2": {"reshard_after_forward": False},
    }
    eager = Eager(llama)
    results = {}
    for name, kwargs in options.items():
        model = lazy(llama)
        for block in model.model.layers:
            fully_shard(block, mesh=mesh, **kwargs)
        fully_shard(model, mesh=mesh, **kwargs)
        found = materialized(model, eager)
        ids = torch.arange(12).reshape(2, 6) % 128
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
        found["trains"] = bool(torch.isfinite(loss))
        results[name] = found
    return results


def test_fully_shard_options_then_materialize_are_exact_and_train(tmp_path: Path) -> None:
    for found in run_ranks(scenario_fsdp_options, tmp_path):
        for name, result in found.items():
            assert not result["lazy_after"] and result["not_equal"] == [], name
            assert result["whole"] == [] and result["trains"], name
