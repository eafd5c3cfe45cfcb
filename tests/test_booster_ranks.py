"""Booster and plugins on real 2-rank gloo runs under torchrun.

Each ``scenario_*`` function runs on every rank (through ``distributed/run.py``) and returns what
it found; the tests right after it launch it and check the findings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers import run_ranks
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

import dormant
from dormant import LazyInitContext, is_lazy
from dormant.booster import Booster
from dormant.booster.plugin import (
    GeminiPlugin,
    HybridParallelPlugin,
    LowLevelZeroPlugin,
    TorchDDPPlugin,
    TorchFSDPPlugin,
)
from dormant.errors import DormantError

pytest.importorskip("transformers")
SEED = 1234  # every rank's seed (the runner calls dormant.launch(seed=SEED))


PLUGINS: dict[str, Callable[[], Any]] = {
    "ddp": TorchDDPPlugin,
    "fsdp": TorchFSDPPlugin,
    # fp32 (not the API's fp16 default), so that losses compare to one fp32 process
    "zero1": lambda: LowLevelZeroPlugin(stage=1, precision="fp32"),
    "zero2": lambda: LowLevelZeroPlugin(stage=2, precision="fp32"),
    "gemini": lambda: GeminiPlugin(precision="fp32"),
    "gemini_offload": lambda: GeminiPlugin(precision="fp32", placement_policy="auto"),
    "hybrid_tp2": lambda: HybridParallelPlugin(tp_size=2, zero_stage=3, precision="fp32"),
    "hybrid_tp1": lambda: HybridParallelPlugin(tp_size=1, zero_stage=2, precision="fp32"),
}


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def bert() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=128,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,  # dropout masks differ once activations are split: no
        attention_probs_dropout_prob=0.0,  # dropout, so losses compare to one process
    )
    return BertForMaskedLM(config)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # as for BERT
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    module = model.module if hasattr(model, "module") else model
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return {k: v.detach().clone() for k, v in get_model_state_dict(module, options=options).items()}


def train_losses(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2) -> list[float]:
    torch.manual_seed(7)
    ids = torch.randint(0, 128, (2, 12))
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses


def build(ctor: Callable[[], nn.Module], how: str) -> nn.Module:
    torch.manual_seed(SEED)
    if how == "real":
        return ctor()
    if how == "lazy":
        with LazyInitContext():
            return ctor()
    with LazyInitContext():  # partly lazy: the first block is real
        model = ctor()
    dormant.materialize(next(iter(m for m in model.modules() if isinstance(m, nn.ModuleList)))[0])
    return model


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


# --- shard-only materialization ------------------------------------------------------------------


def wide_llama(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Tensors above the size that is computed whole (65536 elements), rows of 328 elements
    (not a multiple of normal_'s 16-blocks) and an odd vocabulary (uneven FSDP shards)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=328,
        intermediate_size=600,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1001,
        tie_word_embeddings=False,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # what from_pretrained(torch_dtype=...) does while building
    try:
        return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)


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

    from transformers import LlamaConfig, LlamaForCausalLM

    from dormant.cli import peak_rss  # VmHWM: not the parent's peak

    config = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    warm, *_ = Booster(plugin=TorchFSDPPlugin()).boost(build(llama, "lazy"))  # code paths loaded
    del warm
    # (the peak only grows: the growth from here is the boost's, if nothing before was higher)
    before = peak_rss()
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with LazyInitContext():
        model = LlamaForCausalLM(config)
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
