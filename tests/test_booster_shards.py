"""Shard-only materialization on real gloo runs under torchrun: a boosted lazy model's ranks
compute only their own shards, exactly eager's values, holding about their share of memory.

Each ``scenario_*`` function runs on every rank (through ``distributed/run.py``) and returns what
it found; the tests right after it launch it and check the findings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from booster_cases import (
    PLUGINS,
    SEED,
    build,
    full_state,
    llama,
    memory_llama,
    resident_bytes,
    wide_llama,
)
from helpers import run_ranks
from torch import nn

import dormant
from dormant import LazyInitContext
from dormant.booster import Booster
from dormant.booster.plugin import (
    HybridParallelPlugin,
    TorchFSDPPlugin,
)
from dormant.errors import DormantError


class Orthogonal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(400, 400)
        nn.init.orthogonal_(self.proj.weight)


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def scenario_shards() -> dict[str, Any]:
    """Shard-only boosting at this world size: exact for FSDP and TP x FSDP, fp32 and bf16."""
    records = LogRecords()
    logger = logging.getLogger("dormant")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    out: dict[str, Any] = {}
    cases = {
        "fp32": lambda: wide_llama(),
        "bf16": lambda: wide_llama(torch.bfloat16),
        "orthogonal": Orthogonal,
    }
    for name in ("fsdp", "hybrid_tp2"):
        for case, ctor in cases.items():
            if case == "orthogonal" and name == "hybrid_tp2":
                continue  # no tensor-parallel plan for it
            reference = build(ctor, "real").state_dict()
            records.messages.clear()
            model, *_ = Booster(plugin=PLUGINS[name]()).boost(build(ctor, "lazy"))
            state = full_state(model)
            out[f"{name}/{case}"] = {
                "not_equal": sorted(
                    k for k in reference if not torch.equal(reference[k], state[k])
                ),
                "keys_match": state.keys() == reference.keys(),
                "log": records.messages[:],
            }
    return out


@pytest.fixture(scope="module")
def shard_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(scenario_shards, tmp_path_factory.mktemp("shards"), nproc=4)


@pytest.mark.parametrize(
    "case", ["fsdp/fp32", "fsdp/bf16", "hybrid_tp2/fp32", "hybrid_tp2/bf16", "fsdp/orthogonal"]
)
def test_shard_only_boost_is_exact_at_four_ranks(
    shard_results: list[dict[str, Any]], case: str
) -> None:
    for rank, results in enumerate(shard_results):
        r = results[case]
        assert r["keys_match"] and r["not_equal"] == [], (rank, r["not_equal"])
        log = " ".join(r["log"])
        if case.endswith("orthogonal"):  # QR needs the whole matrix: computed whole, and said
            assert "proj.weight" in log and "orthogonal_" in log, log
        else:  # only the tiny rotary tables (arange) are computed whole
            assert "layers.0" not in log and "embed_tokens" not in log, log


def scenario_shard_memory() -> dict[str, Any]:
    """Per-rank peak memory of boosting a 400 MB lazy Llama with FSDP2, default allocator."""

    from dormant.cli import peak_rss  # VmHWM: not the parent's peak

    warm, *_ = Booster(plugin=TorchFSDPPlugin()).boost(build(llama, "lazy"))  # code paths loaded
    del warm
    # (the peak only grows: the growth from here is the boost's, if nothing before was higher)
    before = peak_rss()
    now = resident_bytes()
    with LazyInitContext():
        model = memory_llama()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(model)
    peak = peak_rss()
    return {
        "growth": peak - now,
        "before": before - now,
        "model": nbytes,
        "world": dist.get_world_size(),
    }


def test_shard_only_boost_holds_about_the_rank_share(tmp_path: Path) -> None:
    for r in run_ranks(scenario_shard_memory, tmp_path):
        assert r["before"] < 0.05 * r["model"]  # the earlier peak hides nothing
        share = r["growth"] / r["model"]
        # Ideal 1/world (0.5); benchmarks/sharded_boost.py reports the exact figures. Computing
        # each full tensor and slicing it, as before, measured about 1.2x here.
        assert share <= 1 / r["world"] + 0.1, f"peak growth {share:.2f}x the model's bytes"


class AnonPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``: the page cache of
    checkpoint files does not count), sampled every millisecond on a thread."""

    def __init__(self) -> None:
        import threading

        self.start = self.peak = self.now()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no RssAnon in /proc/self/status")

    def _run(self) -> None:
        import time

        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def growth(self) -> int:
        self.running = False
        self.thread.join()
        return max(self.peak, self.now()) - self.start


def scenario_checkpoint_shards() -> dict[str, Any]:
    """load_checkpoint into a lazy 230 MB Llama, then FSDP2: each rank reads only its slices."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    tmp = os.environ["DORMANT_TEST_TMP"]
    reference = build(lambda: LlamaForCausalLM(config), "real")
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    if dist.get_rank() == 0:
        from safetensors.torch import save_file

        save_file(state, f"{tmp}/model.safetensors")
        torch.save(state, f"{tmp}/model.pt")
    dist.barrier()
    Booster(plugin=TorchFSDPPlugin()).boost(build(llama, "lazy"))  # code paths loaded
    out: dict[str, Any] = {"model": nbytes, "world": dist.get_world_size()}
    for fmt in ("safetensors", "pt"):
        with LazyInitContext():
            model = LlamaForCausalLM(config)
        peak = AnonPeak()
        dormant.load_checkpoint(model, f"{tmp}/model.{fmt}")
        model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(model)
        growth = peak.growth()
        got = full_state(model)
        out[fmt] = {
            "not_equal": sorted(k for k in state if not torch.equal(state[k], got[k])),
            "anon_growth": growth,
        }
        del model, got
    return out


def test_checkpoint_shards_read_only_the_rank_slices(tmp_path: Path) -> None:
    for r in run_ranks(scenario_checkpoint_shards, tmp_path):
        for fmt in ("safetensors", "pt"):
            assert r[fmt]["not_equal"] == [], (fmt, r[fmt]["not_equal"])
            share = r[fmt]["anon_growth"] / r["model"]
            # Ideal 1/world: the rank's shards (file pages are page cache, not anonymous): 0.50
            # measured. Reading each tensor whole and slicing it measured 0.8x and more; reading
            # a shard's window into a transient, then copying it into the shard, 0.64x.
            assert share <= 1 / r["world"] + 0.08, f"{fmt}: anonymous peak {share:.2f}x the model"


class OddShapes(nn.Module):
    """A channels_last conv and a 0-dim parameter: FSDP2 shards neither as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)) * self.scale)


def scenario_odd_models() -> dict[str, Any]:
    from torch.distributed.tensor.parallel import ColwiseParallel

    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(SEED)
    eager = OddShapes().to(memory_format=torch.channels_last)
    built = {k: v.clone() for k, v in eager.state_dict().items()}
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    eager(x).square().sum().backward()
    eager_opt.step()
    out: dict[str, Any] = {}
    for name in ("fsdp", "gemini", "zero2"):
        torch.manual_seed(SEED)
        model = OddShapes().to(memory_format=torch.channels_last)  # real, as users have
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt, *_ = Booster(plugin=PLUGINS[name]()).boost(model, opt)
        state = full_state(model)
        not_equal = sorted(k for k, v in built.items() if not torch.equal(v, state[k]))
        model(x).square().sum().backward()  # the same batch on both ranks: grads as eager's
        opt.step()
        state = full_state(model)
        # (the boosted conv weight is contiguous: its kernel may round differently)
        far = sorted(k for k, v in eager.state_dict().items() if not torch.allclose(v, state[k]))
        out[name] = {"not_equal": not_equal, "trained_far": far, "scale": float(state["scale"])}
    # A sharding that fails half-way leaves the model as it was, weights and all.
    torch.manual_seed(SEED)
    model = OddShapes()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = model(x)
    plugin = HybridParallelPlugin(tp_size=2, precision="fp32", tp_plan={"conv": ColwiseParallel()})
    try:
        Booster(plugin=plugin).boost(model)
        out["failure"] = "no error"
    except DormantError as e:
        out["failure"] = str(e)
    out["restored"] = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    out["same_class"] = type(model) is OddShapes and type(model.conv) is nn.Conv2d
    out["same_output"] = torch.equal(model(x), y)
    model, *_ = Booster(plugin=PLUGINS["fsdp"]()).boost(model)  # and it can be boosted again
    out["boosted_after"] = torch.equal(full_state(model)["conv.weight"], before["conv.weight"])
    return out


def test_odd_models_boost_and_a_failed_boost_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    for r in run_ranks(scenario_odd_models, tmp_path):
        for name in ("fsdp", "gemini", "zero2"):
            assert r[name]["not_equal"] == [], f"{name}: boosted values are not eager's"
            assert r[name]["trained_far"] == [], f"{name}: one step is not eager's"
            assert r[name]["scale"] != 1.5  # the 0-dim parameter trained
        assert "boost() failed while sharding OddShapes: NotImplementedError" in r["failure"]
        assert "The model is as it was before boost()" in r["failure"]
        assert r["restored"] and r["same_class"] and r["same_output"] and r["boosted_after"]
