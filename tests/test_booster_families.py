"""Tied weights and nested blocks under every sharding plugin, on real 2-rank gloo runs.

FSDP2 manages each parameter in one group, and shards nested modules only inside out: a model
whose embeddings are tied to its head (BERT, GPT-2, T5, BART) or whose blocks nest (a diffusers
UNet) must still boost exactly, train, and round-trip a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_ranks
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dormant import LazyInitContext, is_lazy
from dormant.booster import Booster
from dormant.booster.plugin import (
    GeminiPlugin,
    HybridParallelPlugin,
    LowLevelZeroPlugin,
    TorchFSDPPlugin,
)

SEED = 4321

PLUGINS: dict[str, Callable[[], Any]] = {
    "fsdp": TorchFSDPPlugin,
    # fp32: the API's fp16 default skips a first step whose scaled gradients overflow
    "gemini": lambda: GeminiPlugin(precision="fp32"),
    "zero2": lambda: LowLevelZeroPlugin(stage=2, precision="fp32"),
    "hybrid": lambda: HybridParallelPlugin(tp_size=1, precision="fp32"),
}


def bert() -> nn.Module:
    from transformers import BertConfig, BertForPreTraining

    return BertForPreTraining(
        BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            vocab_size=96, max_position_embeddings=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )  # fmt: skip


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=32, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0)
    )  # fmt: skip


def t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=2,
                 dropout_rate=0.0, tie_word_embeddings=True)
    )  # fmt: skip


def bart() -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(
        BartConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48,
                   decoder_ffn_dim=48, max_position_embeddings=32, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0)
    )  # fmt: skip


def unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def loss_of(family: str, model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if family == "unet":
        return model(torch.randn(2, 3, 8, 8, generator=g), 3).sample.square().mean()
    ids = torch.randint(3, 96, (2, 8), generator=g)
    if family == "bert":
        out = model(input_ids=ids, labels=ids, next_sentence_label=torch.zeros(2).long())
        return out.loss
    if family in ("t5", "bart"):
        return model(input_ids=ids, decoder_input_ids=ids, labels=ids).loss
    return model(input_ids=ids, labels=ids).loss


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "bert": bert,
    "gpt2": gpt2,
    "t5": t5,
    "bart": bart,
    "unet": unet,
}
# Tied pairs each family declares, checked to be one tensor after boosting.
TIES = {
    "bert": ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    "gpt2": ("lm_head.weight", "transformer.wte.weight"),
    "t5": ("lm_head.weight", "shared.weight"),
    "bart": ("lm_head.weight", "model.shared.weight"),
}


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    options = StateDictOptions(full_state_dict=True)
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=options).items()}


def scenario_families() -> dict[str, Any]:
    tmp = os.environ["DORMANT_TEST_TMP"]
    out: dict[str, Any] = {}
    for family, ctor in FAMILIES.items():
        torch.manual_seed(SEED)
        eager = {k: v.clone() for k, v in ctor().state_dict().items()}
        for name, make in PLUGINS.items():
            torch.manual_seed(SEED)
            with LazyInitContext():
                model = ctor()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            booster = Booster(plugin=make())
            model, optimizer, *_ = booster.boost(model, optimizer)
            state = full_state(model)
            params = dict(model.named_parameters(remove_duplicate=False))
            tie = TIES.get(family)
            r: dict[str, Any] = {
                "not_equal": sorted(k for k in eager if not torch.equal(eager[k], state[k])),
                "missing": sorted(set(eager) - set(state)),
                "lazy_left": is_lazy(model),
                "tied": tie is None or params[tie[0]] is params[tie[1]],
            }
            loss = loss_of(family, model)
            booster.backward(loss, optimizer)
            optimizer.step()
            optimizer.zero_grad()
            trained = full_state(model)
            r["trained"] = any(not torch.equal(trained[k], state[k]) for k in state)
            path = f"{tmp}/{family}-{name}"
            booster.save_model(model, path)
            torch.manual_seed(SEED + 1)  # other values, so the load has something to do
            with LazyInitContext():
                other = ctor()
            other, *_ = Booster(plugin=make()).boost(other)
            booster.load_model(other, path)
            loaded = full_state(other)
            r["roundtrip"] = all(torch.equal(trained[k], loaded[k]) for k in trained)
            out[f"{family}/{name}"] = r
            del model, other, optimizer
    return out


@pytest.fixture(scope="module")
def family_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(scenario_families, tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("plugin", list(PLUGINS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tied_and_nested_models_boost_train_and_round_trip(
    family_results: list[dict[str, Any]], family: str, plugin: str
) -> None:
    for rank, results in enumerate(family_results):
        r = results[f"{family}/{plugin}"]
        assert r["missing"] == [], f"rank {rank}: keys missing after boost: {r['missing']}"
        assert r["not_equal"] == [], f"rank {rank}: not bit-identical to eager: {r['not_equal']}"
        assert not r["lazy_left"]
        assert r["tied"], f"rank {rank}: {TIES[family]} are no longer one tensor"
        assert r["trained"], f"rank {rank}: a training step changed nothing"
        assert r["roundtrip"], f"rank {rank}: the checkpoint did not load back equal"


def test_blocks_skip_tied_and_order_nested() -> None:
    from dormant.booster.plugin.sharding import blocks

    torch.manual_seed(SEED)
    model = bert()
    found = blocks(model)
    # BertEmbeddings holds the word embeddings the head shares: left to the root
    assert [type(b).__name__ for b in found] == ["BertLayer", "BertLayer"]
    model = unet()
    found = blocks(model)
    position = {id(m): i for i, m in enumerate(found)}
    for outer in found:
        for inner in outer.modules():
            if inner is not outer and id(inner) in position:
                assert position[id(inner)] < position[id(outer)], "a block before its child"


def scenario_source_document() -> dict[str, Any]:
    """The source document's two examples, with only the imports changed (2 ranks, CPU)."""
    import torch.distributed as dist
    from transformers import BertConfig, BertForPreTraining, LlamaConfig, LlamaForCausalLM

    path = os.path.join(os.environ["DORMANT_TEST_TMP"], "bert-tiny")
    if dist.get_rank() == 0:  # a local stand-in for "prajjwal1/bert-tiny" (no hub here)
        config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=512, vocab_size=1024)  # fmt: skip
        with torch.random.fork_rng():  # every rank's generator stays where launch() put it
            BertForPreTraining(config).save_pretrained(path)
    dist.barrier()
    reference = BertForPreTraining.from_pretrained(path).state_dict()

    plugin = GeminiPlugin()
    booster = Booster(plugin)

    # 1. Initialize model from scratch
    with LazyInitContext():
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4
            )
        )
    model, *_ = booster.boost(model)
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    out: dict[str, Any] = {"llama_lazy_left": is_lazy(model)}

    # 2. Initialize model from pretrained
    with LazyInitContext():
        model = BertForPreTraining.from_pretrained(path)
    model, *_ = booster.boost(model)
    state = full_state(model)
    out["bert_not_equal"] = sorted(k for k in reference if not torch.equal(reference[k], state[k]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=ids, labels=ids, next_sentence_label=torch.zeros(2).long()).loss.backward()
    optimizer.step()
    out["bert_trained"] = not torch.equal(
        full_state(model)["bert.encoder.layer.0.output.dense.weight"],
        state["bert.encoder.layer.0.output.dense.weight"],
    )
    return out


def test_source_document_examples_run_as_written(tmp_path: Path) -> None:
    for r in run_ranks(scenario_source_document, tmp_path):
        assert not r["llama_lazy_left"]
        assert r["bert_not_equal"] == [], r["bert_not_equal"]
        assert r["bert_trained"]
