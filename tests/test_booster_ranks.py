"""Booster and plugins on real 2-rank gloo runs under torchrun.

Each ``scenario_*`` function runs on every rank (through ``distributed/run.py``) and returns what
it found; the tests right after it launch it and check the findings. Shard-only materialization
(each rank computing only its own shards) is in ``test_booster_shards.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from booster_cases import PLUGINS, SEED, bert, build, full_state, gpt2, llama, train_losses
from helpers import run_ranks
from torch import nn
from torch.distributed.tensor import DTensor

from dormant import LazyInitContext, is_lazy
from dormant.booster import Booster
from dormant.booster.plugin import (
    HybridParallelPlugin,
    TorchDDPPlugin,
    TorchFSDPPlugin,
)
from dormant.errors import DormantError


def scenario_plugins() -> dict[str, Any]:
    results: dict[str, Any] = {}
    reference = build(llama, "real")
    ref_state = {k: v.clone() for k, v in reference.state_dict().items()}
    ref_losses = train_losses(reference, torch.optim.SGD(reference.parameters(), lr=0.1))
    for name, make in PLUGINS.items():
        for how in ("lazy", "partly", "real"):
            model = build(llama, how)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            model, optimizer, *_ = Booster(plugin=make()).boost(model, optimizer)
            state = full_state(model)
            exact = sorted(k for k in ref_state if not torch.equal(ref_state[k], state[k]))
            losses = train_losses(model, optimizer)
            results[f"{name}/{how}"] = {
                "not_equal": exact,
                "keys_match": sorted(ref_state) == sorted(state),
                "losses": losses,
                "ref_losses": ref_losses,
                "lazy_left": is_lazy(model),
            }
            del model, optimizer
    # BERT and GPT-2 under tensor parallelism (built-in plans)
    for family, ctor in (("bert", bert), ("gpt2", gpt2)):
        reference = build(ctor, "real")
        ref_state = {k: v.clone() for k, v in reference.state_dict().items()}
        model = build(ctor, "lazy")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer, *_ = Booster(
            plugin=HybridParallelPlugin(tp_size=2, precision="fp32")
        ).boost(model, optimizer)
        state = full_state(model)
        results[f"hybrid_tp2/{family}"] = {
            "not_equal": sorted(k for k in ref_state if not torch.equal(ref_state[k], state[k])),
            "keys_match": sorted(ref_state) == sorted(state),
            "sharded": sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor)),
            "losses": train_losses(model, optimizer),
            "ref_losses": train_losses(reference, torch.optim.SGD(reference.parameters(), lr=0.1)),
        }
    return results


@pytest.fixture(scope="module")
def plugin_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(scenario_plugins, tmp_path_factory.mktemp("plugins"))


@pytest.mark.parametrize("how", ["lazy", "partly", "real"])
@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_boosted_model_equals_eager_single_process(
    plugin_results: list[dict[str, Any]], plugin: str, how: str
) -> None:
    for rank, results in enumerate(plugin_results):
        r = results[f"{plugin}/{how}"]
        assert r["keys_match"], f"rank {rank}: state dict keys differ"
        assert r["not_equal"] == [], f"rank {rank}: not bit-identical to eager: {r['not_equal']}"
        assert not r["lazy_left"]
        # one training step: the engine's reductions may reorder sums, so a tolerance here
        for got, want in zip(r["losses"], r["ref_losses"], strict=True):
            assert math.isclose(got, want, rel_tol=1e-5), (r["losses"], r["ref_losses"])


@pytest.mark.parametrize(
    ("family", "split"), [("bert", "intermediate.dense.weight"), ("gpt2", "mlp.c_fc.weight")]
)
def test_tensor_parallel_plans_are_exact_and_train(
    plugin_results: list[dict[str, Any]], family: str, split: str
) -> None:
    for results in plugin_results:
        r = results[f"hybrid_tp2/{family}"]
        assert r["keys_match"] and r["not_equal"] == [], r["not_equal"]
        assert any(name.endswith(split) for name in r["sharded"]), r["sharded"]
        for got, want in zip(r["losses"], r["ref_losses"], strict=True):
            assert math.isclose(got, want, rel_tol=1e-5), (r["losses"], r["ref_losses"])


def scenario_errors() -> dict[str, Any]:
    out: dict[str, Any] = {}

    def message(fn: Callable[[], Any]) -> str:
        try:
            fn()
        except (DormantError, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        return "no error"

    model = build(llama, "lazy")
    booster = Booster(plugin=TorchFSDPPlugin())
    booster.boost(model)
    out["twice"] = message(lambda: booster.boost(model))
    out["tp_divides"] = message(
        lambda: Booster(plugin=HybridParallelPlugin(tp_size=3)).boost(build(llama, "lazy"))
    )
    out["no_plan"] = message(
        lambda: Booster(plugin=HybridParallelPlugin(tp_size=2)).boost(
            nn.Sequential(nn.Linear(4, 4))
        )
    )
    out["ddp_mp"] = message(
        lambda: Booster(plugin=TorchDDPPlugin(), mixed_precision="bf16").boost(build(llama, "lazy"))
    )
    torch.manual_seed(SEED + dist.get_rank())  # ranks disagree on the RNG state
    with LazyInitContext():
        skewed = llama()
    out["different_seeds"] = message(lambda: Booster(plugin=TorchFSDPPlugin()).boost(skewed))
    torch.manual_seed(SEED + dist.get_rank())
    with LazyInitContext(rng="fast"):
        skewed_fast = llama()
    out["different_fast"] = message(lambda: Booster(plugin=TorchFSDPPlugin()).boost(skewed_fast))
    torch.manual_seed(SEED + dist.get_rank())
    skewed_real = llama()  # built eagerly, from rank-dependent seeds
    out["different_real"] = message(lambda: Booster(plugin=TorchFSDPPlugin()).boost(skewed_real))
    return out


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    errors = run_ranks(scenario_errors, tmp_path)[0]
    assert "already boosted" in errors["twice"]
    assert "tp_size=3 does not divide the world size 2" in errors["tp_divides"]
    assert "no tensor-parallel plan known for Sequential" in errors["no_plan"]
    assert "tp_plan=" in errors["no_plan"]
    assert "torch.autocast" in errors["ddp_mp"]
    assert "seed every rank the same" in errors["different_seeds"]
    assert "from different RNG states" in errors["different_real"]
    assert "seed every rank the same" in errors["different_fast"]


def scenario_checkpoint() -> dict[str, Any]:
    out: dict[str, Any] = {}
    tmp = os.environ["DORMANT_TEST_TMP"]
    for name in ("fsdp", "ddp", "hybrid_tp2"):
        model = build(llama, "lazy")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        booster = Booster(plugin=PLUGINS[name]())
        model, optimizer, *_ = booster.boost(model, optimizer)
        train_losses(model, optimizer, steps=1)
        before = full_state(model)
        booster.save_model(model, f"{tmp}/{name}-model")
        booster.save_optimizer(optimizer, f"{tmp}/{name}-optim", shard=True)
        booster.save_model(model, f"{tmp}/{name}.safetensors", use_safetensors=True)
        # a fresh lazy model, boosted the same way, then loaded
        other = build(llama, "lazy")
        other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
        other, other_opt, *_ = Booster(plugin=PLUGINS[name]()).boost(other, other_opt)
        booster.load_model(other, f"{tmp}/{name}-model")
        booster.load_optimizer(other_opt, f"{tmp}/{name}-optim")
        after = full_state(other)
        from safetensors.torch import load_file

        exported = load_file(f"{tmp}/{name}.safetensors")
        out[name] = {
            "model_roundtrip": all(torch.equal(before[k], after[k]) for k in before),
            "export_matches": all(torch.equal(before[k], exported[k]) for k in exported),
            "export_keys": len(exported),
            "next_loss_equal": train_losses(model, optimizer, 1)
            == train_losses(other, other_opt, 1),
        }
    return out


def test_checkpoints_round_trip(tmp_path: Path) -> None:
    for results in run_ranks(scenario_checkpoint, tmp_path):
        for plugin, r in results.items():
            assert r["model_roundtrip"], plugin
            assert r["export_matches"] and r["export_keys"] >= 20, plugin
            assert r["next_loss_equal"], plugin


def scenario_dataloader() -> dict[str, Any]:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    model = build(llama, "lazy")
    _, _, _, loader, _ = Booster(plugin=TorchDDPPlugin()).boost(model, dataloader=loader)
    seen = [int(x) for (batch,) in loader for x in batch]
    model2 = build(llama, "lazy")
    booster = Booster(plugin=TorchFSDPPlugin())
    model2, *_ = booster.boost(model2)
    with booster.no_sync(model2):
        model2(input_ids=torch.ones(1, 4, dtype=torch.long)).logits.sum().backward()
    return {"seen": seen, "sampler": type(loader.sampler).__name__}


def test_dataloader_is_split_across_ranks(tmp_path: Path) -> None:
    rank0, rank1 = run_ranks(scenario_dataloader, tmp_path)
    assert rank0["sampler"] == "DistributedSampler"
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(10))


def scenario_pretrained() -> dict[str, Any]:
    """from_pretrained inside LazyInitContext, boosted: equal to the eager from_pretrained."""
    from transformers import AutoModelForCausalLM

    path = os.path.join(os.environ["DORMANT_TEST_TMP"], "pretrained")
    if dist.get_rank() == 0:
        build(llama, "real").save_pretrained(path, max_shard_size="100KB")  # sharded, indexed
    dist.barrier()
    reference = AutoModelForCausalLM.from_pretrained(path).state_dict()
    out: dict[str, Any] = {"shards": len([f for f in os.listdir(path) if "safetensors" in f])}
    for name in ("fsdp", "hybrid_tp2", "ddp"):
        with LazyInitContext():
            model = AutoModelForCausalLM.from_pretrained(path)
        all_lazy = all(is_lazy(t) for t in model.state_dict().values())
        model, *_ = Booster(plugin=PLUGINS[name]()).boost(model)
        state = full_state(model)
        out[name] = {
            "all_lazy_before_boost": all_lazy,
            "keys_match": state.keys() == reference.keys(),
            "not_equal": [k for k in reference if not torch.equal(state[k], reference[k])],
        }
    return out


def test_lazy_from_pretrained_boosts_to_the_checkpoint_values(tmp_path: Path) -> None:
    for results in run_ranks(scenario_pretrained, tmp_path):
        assert results["shards"] > 2
        for plugin in ("fsdp", "hybrid_tp2", "ddp"):
            r = results[plugin]
            assert r["all_lazy_before_boost"], plugin
            assert r["keys_match"] and r["not_equal"] == [], (plugin, r)
