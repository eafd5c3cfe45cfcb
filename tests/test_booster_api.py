"""Scripts written for the Booster API dormant follows run with only their imports changed.

Each scenario is the body of such a script (the plugin arguments, ``booster.backward``,
``optimizer.clip_grad_by_norm`` / ``get_grad_norm``, the checkpoint calls with their keyword
arguments, ``plugin.prepare_dataloader``), on real 2-rank gloo runs over lazily built models.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers import run_ranks
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

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

SEED = 2024

# The plugin arguments of the peer's own plugin tests, spelled as there.
PLUGINS: dict[str, Callable[[], Any]] = {
    "low_level_zero": lambda: LowLevelZeroPlugin(stage=2, max_norm=1.0, initial_scale=2**5),
    "low_level_zero_stage1": lambda: LowLevelZeroPlugin(max_norm=1.0, initial_scale=2**5),
    "gemini": lambda: GeminiPlugin(max_norm=1.0, initial_scale=2**5),
    "torch_fsdp": TorchFSDPPlugin,
    "torch_ddp": TorchDDPPlugin,
    "hybrid": lambda: HybridParallelPlugin(tp_size=2, pp_size=1, precision="bf16", max_norm=1.0),
}

# Families whose tensor-parallel plan dormant knows; the others run with tp_size=1.
TP_PLANNED = {"gpt2", "bert", "llama"}


def HYBRID_TP1() -> HybridParallelPlugin:
    return HybridParallelPlugin(tp_size=1, pp_size=1, precision="bf16", max_norm=1.0)


CLIPPING = {"low_level_zero", "low_level_zero_stage1", "gemini", "hybrid"}  # max_norm=1.0


def models() -> dict[str, Callable[[], nn.Module]]:
    """Tiny members of the families of the peer's common model zoo that the core test
    environment has (transformers and diffusers; the vision zoos live in the zoo environment)."""
    from diffusers import AutoencoderKL, UNet2DModel
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BloomConfig,
        BloomForCausalLM,
        CLIPTextConfig,
        CLIPTextModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
        ViTConfig,
        ViTForImageClassification,
    )

    return {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2,
                                                   vocab_size=64, n_positions=16)),
        "bert": lambda: BertForSequenceClassification(BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            vocab_size=64, max_position_embeddings=16)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=64)),
        "opt": lambda: OPTForCausalLM(OPTConfig(
            hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=64, max_position_embeddings=16, word_embed_proj_dim=32)),
        "bloom": lambda: BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=2,
                                                      vocab_size=64)),
        "t5": lambda: T5ForConditionalGeneration(T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=2)),
        "vit": lambda: ViTForImageClassification(ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            image_size=16, patch_size=8, num_labels=3)),
        "clip_text": lambda: CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=64, max_position_embeddings=16)),
        "unet2d": lambda: UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
            layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D")),
        "vae": lambda: AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(16,), latent_channels=4,
            norm_num_groups=8, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",)),
    }  # fmt: skip


def loss_of(name: str, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    labels = torch.zeros(ids.shape[0], dtype=torch.long)
    if name == "bert":
        return model(input_ids=ids, labels=labels).loss
    if name == "vit":
        return model(pixel_values=images, labels=labels).loss
    if name == "clip_text":
        return model(input_ids=ids).pooler_output.square().mean()
    if name == "unet2d":
        return model(images[:, :, :8, :8], 3).sample.square().mean()
    if name == "vae":
        return model(images).sample.square().mean()
    if name == "t5":
        return model(input_ids=ids, decoder_input_ids=ids, labels=ids).loss
    return model(input_ids=ids, labels=ids).loss


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    module = model.module if hasattr(model, "module") else model
    options = StateDictOptions(full_state_dict=True)
    return {k: v.detach().clone() for k, v in get_model_state_dict(module, options=options).items()}


def scenario_peer_plugin_tests() -> dict[str, Any]:
    out: dict[str, Any] = {}
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    for plugin_name, make in PLUGINS.items():
        for model_name, ctor in models().items():
            if plugin_name == "hybrid" and model_name not in TP_PLANNED:
                make = HYBRID_TP1
            torch.manual_seed(SEED)
            with LazyInitContext():
                model = ctor()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            booster = Booster(plugin=make())
            model, optimizer, *_ = booster.boost(model, optimizer)
            before = full_state(model)
            loss = loss_of(model_name, model, ids)
            booster.backward(loss, optimizer)
            norm = optimizer.clip_grad_by_norm(1.0)  # as the peer's tests call it
            optimizer.step()
            after = full_state(model)
            out[f"{plugin_name}/{model_name}"] = {
                "loss": float(loss),
                "norm": float(norm),
                "grad_norm": optimizer.get_grad_norm(),
                "stepped": sum(not torch.equal(before[k], after[k]) for k in before),
                "lazy_left": is_lazy(model),
            }
            del model, optimizer
    return out


@pytest.fixture(scope="module")
def peer_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(scenario_peer_plugin_tests, tmp_path_factory.mktemp("peer"))


MODELS = ["gpt2", "bert", "llama", "opt", "bloom", "t5", "vit", "clip_text", "unet2d", "vae"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_peer_plugin_test_bodies_pass(
    peer_results: list[dict[str, Any]], plugin: str, model: str
) -> None:
    for rank, results in enumerate(peer_results):
        r = results[f"{plugin}/{model}"]
        assert math.isfinite(r["loss"]) and math.isfinite(r["norm"]), (rank, r)
        # the norm the last clipping saw: step()'s own with max_norm, after the user's
        # clip_grad_by_norm(1.0) had clipped to 1; otherwise the user's call, before clipping
        seen = min(r["norm"], 1.0) if plugin in CLIPPING else r["norm"]
        assert r["norm"] > 0 and r["grad_norm"] == pytest.approx(seen, rel=1e-4), (rank, r)
        assert r["stepped"] > 0, f"rank {rank}: optimizer.step() changed no parameter"
        assert not r["lazy_left"]
    # every rank sees the same loss and norm (one model, one batch)
    assert peer_results[0][f"{plugin}/{model}"] == peer_results[1][f"{plugin}/{model}"]


def scenario_checkpoint_layouts() -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = os.environ["DORMANT_TEST_TMP"]
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=512)  # fmt: skip

    def ctor() -> nn.Module:  # 6 MB: several shards of size_per_shard=1 (MB)
        return LlamaForCausalLM(config)

    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    out: dict[str, Any] = {}
    layouts: dict[str, dict[str, Any]] = {
        "file": {},
        "safetensors_file": {"use_safetensors": True},
        "folder": {"shard": True, "size_per_shard": 1},
        "safetensors_folder": {"shard": True, "use_safetensors": True, "size_per_shard": 1},
        "dcp": {"shard": True, "gather_dtensor": False},
    }
    for layout, kwargs in layouts.items():
        plugin = GeminiPlugin(precision="fp32")
        booster = Booster(plugin=plugin)
        torch.manual_seed(SEED)
        with LazyInitContext():
            model = ctor()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        model, optimizer, _, _, scheduler = booster.boost(model, optimizer, lr_scheduler=scheduler)
        booster.backward(loss_of("llama", model, ids), optimizer)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        path = f"{tmp}/{layout}" + (".safetensors" if layout == "safetensors_file" else "")
        booster.save_model(model, path, **kwargs)
        booster.save_optimizer(optimizer, f"{tmp}/{layout}-optim", shard=layout == "dcp")
        booster.save_lr_scheduler(scheduler, f"{tmp}/{layout}-sched.pt")
        torch.manual_seed(SEED + 1)
        with LazyInitContext():
            other = ctor()
        other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
        other_sched = torch.optim.lr_scheduler.StepLR(other_opt, step_size=1, gamma=0.5)
        other, other_opt, _, _, other_sched = Booster(plugin=GeminiPlugin(precision="fp32")).boost(
            other, other_opt, lr_scheduler=other_sched
        )
        booster.load_model(other, path)
        booster.load_optimizer(other_opt, f"{tmp}/{layout}-optim")
        booster.load_lr_scheduler(other_sched, f"{tmp}/{layout}-sched.pt")
        mine, theirs = full_state(model), full_state(other)
        next_losses = []
        for m, o in ((model, optimizer), (other, other_opt)):
            loss = loss_of("llama", m, ids)
            booster.backward(loss, o)
            o.step()
            next_losses.append(float(loss_of("llama", m, ids)))
        out[layout] = {
            "model_equal": all(torch.equal(mine[k], theirs[k]) for k in mine),
            "lr": [other_sched.get_last_lr(), scheduler.get_last_lr()],
            "next_equal": next_losses[0] == next_losses[1],
            "files": sorted(os.listdir(path)) if os.path.isdir(path) else [],
        }
    return out


def test_checkpoint_layouts_of_the_peer_api_round_trip(tmp_path: Path) -> None:
    for results in run_ranks(scenario_checkpoint_layouts, tmp_path):
        for layout, r in results.items():
            assert r["model_equal"], layout
            assert r["lr"][0] == r["lr"][1], layout
            assert r["next_equal"], f"{layout}: optimizer state did not round-trip"
        assert "model.safetensors.index.json" in results["safetensors_folder"]["files"]
        assert len(results["safetensors_folder"]["files"]) > 2  # several 1 MB shards
        assert "pytorch_model.bin.index.json" in results["folder"]["files"]
        assert ".metadata" in results["dcp"]["files"]


def scenario_dataloader() -> dict[str, Any]:
    plugin = LowLevelZeroPlugin()
    data = torch.utils.data.TensorDataset(torch.arange(20))
    loader = plugin.prepare_dataloader(data, batch_size=4, shuffle=True, seed=7)
    seen = [int(x) for (batch,) in loader for x in batch]
    return {"seen": seen, "world": dist.get_world_size()}


def test_prepare_dataloader_splits_the_dataset(tmp_path: Path) -> None:
    rank0, rank1 = run_ranks(scenario_dataloader, tmp_path)
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(20))
    assert len(rank0["seen"]) == len(rank1["seen"]) == 10


def _pipeline_llama() -> tuple[Any, torch.Tensor, dict[str, torch.Tensor], list[float]]:
    """A small untied Llama config, a batch, and an eager single-process build of the whole
    model: its state as built and its losses over two SGD steps on the batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                         tie_word_embeddings=False)  # fmt: skip
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(SEED)
    eager = LlamaForCausalLM(config)
    built = {k: v.clone() for k, v in eager.state_dict().items()}
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    eager_losses = []
    for _ in range(2):
        loss = eager(input_ids=ids, labels=ids).loss
        loss.backward()
        eager_opt.step()
        eager_opt.zero_grad()
        eager_losses.append(float(loss))
    return config, ids, built, eager_losses


def _boost_and_train_stage(
    config: Any, ids: torch.Tensor, plugin: HybridParallelPlugin
) -> tuple[Booster, nn.Module, dict[str, torch.Tensor], list[float | None]]:
    """Boost a lazy build of ``config`` with ``plugin`` (pipeline stages), keep each
    parameter's full value as boosted, then run two SGD steps with ``execute_pipeline``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    with LazyInitContext():
        model = LlamaForCausalLM(config)
    booster = Booster(plugin=plugin)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        # a stage is split by the plan's keys for the modules it holds, none other
        warnings.filterwarnings("error", message="Parallelize plan key")
        model, optimizer, *_ = booster.boost(model, optimizer)
    state = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    losses: list[float | None] = []
    for _ in range(2):
        out = booster.execute_pipeline(
            iter([{"input_ids": ids, "labels": ids}]), model, lambda o, i: o.loss, optimizer
        )
        optimizer.step()
        optimizer.zero_grad()
        losses.append(None if out["loss"] is None else float(out["loss"]))
    return booster, model, state, losses


def _dcp_roundtrip(booster: Booster, model: nn.Module, config: Any, plugin: Any) -> bool:
    """Save ``model``'s stages as DCP, load them into another lazy build (another seed) boosted
    with ``plugin``: True if every tensor came back equal."""
    from transformers import LlamaForCausalLM

    path = f"{os.environ['DORMANT_TEST_TMP']}/pp-dcp"
    booster.save_model(model, path, gather_dtensor=False)
    torch.manual_seed(SEED + 1)
    with LazyInitContext():
        other = LlamaForCausalLM(config)
    other, *_ = Booster(plugin=plugin).boost(other)
    booster.load_model(other, path)
    mine, theirs = model.state_dict(), other.state_dict()
    return all(torch.equal(mine[k].full_tensor(), theirs[k].full_tensor()) for k in mine)


def scenario_pipeline() -> dict[str, Any]:
    """HybridParallelPlugin(pp_size=2): each rank keeps its stage, exactly, and trains it."""
    config, ids, built, eager_losses = _pipeline_llama()
    plugin = HybridParallelPlugin(tp_size=1, pp_size=2, precision="fp32", num_microbatches=2)
    booster, model, state, losses = _boost_and_train_stage(config, ids, plugin)
    tmp = os.environ["DORMANT_TEST_TMP"]
    try:
        booster.save_model(model, f"{tmp}/pp.pt")
        refused = "no error"
    except DormantError as e:
        refused = str(e)
    other_plugin = HybridParallelPlugin(tp_size=1, pp_size=2, precision="fp32")
    return {
        "refused": refused,
        "roundtrip": _dcp_roundtrip(booster, model, config, other_plugin),
        "keys": sorted(state),
        "not_equal": sorted(k for k in state if not torch.equal(state[k], built[k])),
        "losses": losses,
        "eager_losses": eager_losses,
        "lazy_left": is_lazy(model),
    }


def test_pipeline_stages_hold_their_layers_exactly_and_train(tmp_path: Path) -> None:
    first, last = run_ranks(scenario_pipeline, tmp_path)
    layers = {
        "first": {k.split(".")[2] for k in first["keys"] if ".layers." in k},
        "last": {k.split(".")[2] for k in last["keys"] if ".layers." in k},
    }
    assert layers == {"first": {"0", "1"}, "last": {"2", "3"}}  # names of the whole model
    assert "model.embed_tokens.weight" in first["keys"]
    assert "model.embed_tokens.weight" not in last["keys"]
    assert "lm_head.weight" in last["keys"] and "lm_head.weight" not in first["keys"]
    for r in (first, last):
        assert r["not_equal"] == [] and not r["lazy_left"]
    assert first["losses"] == [None, None]
    for r in (first, last):
        assert "pass gather_dtensor=False" in r["refused"]
        assert r["roundtrip"]
    for got, want in zip(last["losses"], last["eager_losses"], strict=True):
        assert math.isclose(got, want, rel_tol=1e-5), (last["losses"], last["eager_losses"])


def scenario_pipeline_tensor_parallel() -> dict[str, Any]:
    """HybridParallelPlugin(tp_size=2, pp_size=2) at 4 ranks: each stage's layers split over tp."""
    return _pipeline_tensor_parallel(split_head=False)


def scenario_pipeline_tensor_parallel_head() -> dict[str, Any]:
    """The same with a plan that also splits the head, which only the last stage holds."""
    return _pipeline_tensor_parallel(split_head=True)


def _pipeline_tensor_parallel(split_head: bool) -> dict[str, Any]:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    from transformers import LlamaForCausalLM

    config, ids, built, eager_losses = _pipeline_llama()
    plan = None
    if split_head:
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        plan = {f"model.{k}": styles[v]() for k, v in config.base_model_tp_plan.items()}
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    plugin = HybridParallelPlugin(
        tp_size=2, pp_size=2, precision="fp32", num_microbatches=2, tp_plan=plan
    )
    booster, model, state, losses = _boost_and_train_stage(config, ids, plugin)
    other_plugin = HybridParallelPlugin(tp_size=2, pp_size=2, precision="fp32", tp_plan=plan)
    roundtrip = _dcp_roundtrip(booster, model, config, other_plugin)
    with LazyInitContext():
        too_many = LlamaForCausalLM(config)
    try:
        Booster(plugin=HybridParallelPlugin(tp_size=2, pp_size=3)).boost(too_many)
        not_dividing = "no error"
    except DormantError as e:
        not_dividing = str(e)
    split = sorted(
        k
        for k, v in model.state_dict().items()
        if any(p.is_shard() for p in v.placements) and v.to_local().shape != v.shape
    )
    return {
        "keys": sorted(state),
        "split": split,
        "roundtrip": roundtrip,
        "not_dividing": not_dividing,
        "not_equal": sorted(k for k in state if not torch.equal(state[k], built[k])),
        "losses": losses,
        "eager_losses": eager_losses,
        "lazy_left": is_lazy(model),
    }


@pytest.mark.parametrize(
    "scenario", [scenario_pipeline_tensor_parallel, scenario_pipeline_tensor_parallel_head]
)
def test_pipeline_stages_with_tensor_parallel_layers_are_exact_and_train(
    scenario: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    ranks = run_ranks(scenario, tmp_path, nproc=4)
    head_split = scenario is scenario_pipeline_tensor_parallel_head
    # the mesh is (pp, dp, tp) = (2, 1, 2): ranks 0 and 1 hold the first stage, 2 and 3 the last
    for r, (stage_layers, first) in zip(
        ranks, [({"0", "1"}, True)] * 2 + [({"2", "3"}, False)] * 2, strict=True
    ):
        assert {k.split(".")[2] for k in r["keys"] if ".layers." in k} == stage_layers
        assert ("model.embed_tokens.weight" in r["keys"]) == first
        assert ("lm_head.weight" in r["keys"]) != first
        assert r["not_equal"] == [] and not r["lazy_left"] and r["roundtrip"]
        # every projection of the stage's layers is split over tp (7 per layer, 2 layers), and
        # the head where the plan names it and the stage holds it
        projections = [k for k in r["split"] if "_proj." in k]
        head = ["lm_head.weight"] if head_split and not first else []
        assert len(projections) == 14 and r["split"] == sorted(projections + head), r["split"]
        assert "tp_size=2 x pp_size=3 = 6 does not divide the world size 4" in r["not_dividing"]
    for r in ranks[:2]:
        assert r["losses"] == [None, None]
    for r in ranks[2:]:
        for got, want in zip(r["losses"], r["eager_losses"], strict=True):
            assert math.isclose(got, want, rel_tol=1e-5), (r["losses"], r["eager_losses"])


def _boost_stage(config: Any, plugin: HybridParallelPlugin, lr: float) -> tuple[Booster, Any, Any]:
    """A lazy build of ``config`` and its SGD optimizer, boosted with ``plugin`` (stages)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    with LazyInitContext():
        model = LlamaForCausalLM(config)
    booster = Booster(plugin=plugin)
    model, optimizer, *_ = booster.boost(model, torch.optim.SGD(model.parameters(), lr=lr))
    return booster, model, optimizer


CLIP_NORM, CLIP_LR = 0.5, 0.5  # the whole model's gradient norm is about 2: clipping scales it


def scenario_pipeline_clipping(tp_size: int = 1) -> dict[str, Any]:
    """pp_size=2 with max_norm: clipping and get_grad_norm see the whole model's gradients."""
    from transformers import LlamaForCausalLM

    config, ids, *_ = _pipeline_llama()
    torch.manual_seed(SEED)
    eager = LlamaForCausalLM(config)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=CLIP_LR)
    eager_losses, eager_norms = [], []
    for _ in range(2):
        loss = eager(input_ids=ids, labels=ids).loss
        loss.backward()
        eager_norms.append(float(nn.utils.clip_grad_norm_(eager.parameters(), CLIP_NORM)))
        eager_opt.step()
        eager_opt.zero_grad()
        eager_losses.append(float(loss))
    plugin = HybridParallelPlugin(
        tp_size=tp_size, pp_size=2, precision="fp32", num_microbatches=2, max_norm=CLIP_NORM
    )
    booster, model, optimizer = _boost_stage(config, plugin, CLIP_LR)
    losses, norms, unclipped = [], [], None
    for _ in range(2):
        out = booster.execute_pipeline(
            iter([{"input_ids": ids, "labels": ids}]), model, lambda o, i: o.loss, optimizer
        )
        if unclipped is None:  # before any step: the current gradients' norm
            unclipped = optimizer.get_grad_norm()
        optimizer.step()
        norms.append(optimizer.get_grad_norm())  # the norm that clipping saw
        optimizer.zero_grad()
        losses.append(None if out["loss"] is None else float(out["loss"]))
    return {
        "losses": losses,
        "norms": norms,
        "unclipped": unclipped,
        "eager_losses": eager_losses,
        "eager_norms": eager_norms,
    }


def scenario_pipeline_tensor_parallel_clipping() -> dict[str, Any]:
    return scenario_pipeline_clipping(tp_size=2)


@pytest.mark.parametrize(
    ("scenario", "nproc"),
    [(scenario_pipeline_clipping, 2), (scenario_pipeline_tensor_parallel_clipping, 4)],
    ids=["pp2", "pp2xtp2"],
)
def test_pipeline_stages_clip_to_the_whole_models_gradient_norm(
    scenario: Callable[[], dict[str, Any]], nproc: int, tmp_path: Path
) -> None:
    ranks = run_ranks(scenario, tmp_path, nproc=nproc)
    half = nproc // 2  # the first stage's ranks, then the last stage's
    want = ranks[-1]["eager_norms"]
    assert want[0] > CLIP_NORM and want[1] > CLIP_NORM  # both steps clip
    for r in ranks:
        assert math.isclose(r["unclipped"], want[0], rel_tol=1e-5), (r["unclipped"], want)
        for got, norm in zip(r["norms"], want, strict=True):
            assert math.isclose(got, norm, rel_tol=1e-5), (r["norms"], want)
    for r in ranks[:half]:
        assert r["losses"] == [None, None]
    for r in ranks[half:]:
        for got, loss in zip(r["losses"], r["eager_losses"], strict=True):
            assert math.isclose(got, loss, rel_tol=1e-5), (r["losses"], r["eager_losses"])


# At this loss scale only the first stage's gradients overflow in fp16 (the last stage's from
# about 2**17.9): each stage alone would skip a different step.
OVERFLOW_SCALE = 13 * 2.0**14


def scenario_pipeline_fp16_overflow() -> dict[str, Any]:
    """pp_size=2 in fp16 (the default), with a loss scale that overflows at the first step."""
    config, ids, *_ = _pipeline_llama()
    plugin = HybridParallelPlugin(
        tp_size=1, pp_size=2, num_microbatches=2, initial_scale=OVERFLOW_SCALE
    )
    booster, model, optimizer = _boost_stage(config, plugin, 0.1)
    steps = []
    for _ in range(3):
        before = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
        scale = optimizer.scaler.get_scale()
        booster.execute_pipeline(
            iter([{"input_ids": ids, "labels": ids}]), model, lambda o, i: o.loss, optimizer
        )
        optimizer.step()
        optimizer.zero_grad()
        after = model.state_dict()
        steps.append(
            {
                "backed_off": optimizer.scaler.get_scale() < scale,
                "scale": optimizer.scaler.get_scale(),
                "changed": sorted(
                    k for k in before if not torch.equal(before[k], after[k].full_tensor())
                ),
            }
        )
    return {"steps": steps}


def test_pipeline_stages_in_fp16_skip_the_same_steps(tmp_path: Path) -> None:
    first, last = run_ranks(scenario_pipeline_fp16_overflow, tmp_path)
    assert first["steps"][0]["backed_off"] and last["steps"][0]["backed_off"]
    assert [s["backed_off"] for s in first["steps"]] == [s["backed_off"] for s in last["steps"]]
    assert [s["scale"] for s in first["steps"]] == [s["scale"] for s in last["steps"]]
    for r in (first, last):
        for step in r["steps"]:
            # a skipped step leaves every parameter as it was; the others train the stage
            assert (step["changed"] == []) == step["backed_off"], r["steps"]
