"""Booster and plugins: real 2-rank gloo runs under torchrun (see distributed/worker.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dormant.booster import Booster
from dormant.booster.plugin import TorchFSDPPlugin
from dormant.errors import DormantError

pytest.importorskip("transformers")
WORKER = Path(__file__).parent / "distributed" / "worker.py"


def run_ranks(scenario: str, tmp_path: Path, nproc: int = 2) -> list[dict[str, Any]]:
    """Run one scenario on ``nproc`` gloo ranks; fail with every rank's output if one fails."""
    env = {**os.environ, "DORMANT_TEST_TMP": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(nproc), str(WORKER), scenario, str(tmp_path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{scenario}: ranks hung for {e.timeout} s\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"{scenario}: a rank failed (exit {proc.returncode})\n{proc.stderr[-8000:]}")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def plugin_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks("plugins", tmp_path_factory.mktemp("plugins"))


PLUGINS = ["ddp", "fsdp", "zero1", "zero2", "gemini", "hybrid_tp2", "hybrid_tp1"]


@pytest.mark.parametrize("how", ["lazy", "partly", "real"])
@pytest.mark.parametrize("plugin", PLUGINS)
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


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    errors = run_ranks("errors", tmp_path)[0]
    assert "already boosted" in errors["twice"]
    assert "tp_size=3 does not divide the world size 2" in errors["tp_divides"]
    assert "no tensor-parallel plan known for Sequential" in errors["no_plan"]
    assert "tp_plan=" in errors["no_plan"]
    assert "torch.autocast" in errors["ddp_mp"]
    assert "seed every rank the same" in errors["different_seeds"]


def test_checkpoints_round_trip(tmp_path: Path) -> None:
    for results in run_ranks("checkpoint", tmp_path):
        for plugin, r in results.items():
            assert r["model_roundtrip"], plugin
            assert r["export_matches"] and r["export_keys"] >= 20, plugin
            assert r["next_loss_equal"], plugin


def test_dataloader_is_split_across_ranks(tmp_path: Path) -> None:
    rank0, rank1 = run_ranks("dataloader", tmp_path)
    assert rank0["sampler"] == "DistributedSampler"
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(10))


def test_lazy_from_pretrained_boosts_to_the_checkpoint_values(tmp_path: Path) -> None:
    for results in run_ranks("pretrained", tmp_path):
        assert results["shards"] > 2
        for plugin in ("fsdp", "hybrid_tp2", "ddp"):
            r = results[plugin]
            assert r["all_lazy_before_boost"], plugin
            assert r["keys_match"] and r["not_equal"] == [], (plugin, r)


def test_plugin_without_process_group_says_to_launch() -> None:
    assert not torch.distributed.is_initialized()
    with pytest.raises(DormantError, match=r"call dormant\.launch\(\) first"):
        Booster(plugin=TorchFSDPPlugin()).boost(nn.Linear(2, 2))
