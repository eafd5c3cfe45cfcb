"""What the booster tests on real ranks share: the plugins, tiny transformers models, and how a
model is built (real, lazy or partly lazy) and compared (its full state dict) and trained.

Imported by ``test_booster_ranks.py``, ``test_booster_shards.py`` and ``test_user_sharding.py``
(``wide_llama``), and so on every rank by ``distributed/run.py``'s import of those modules;
``SEED`` is every rank's seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import dormant
from dormant import LazyInitContext
from dormant.booster.plugin import (
    GeminiPlugin,
    HybridParallelPlugin,
    LowLevelZeroPlugin,
    TorchDDPPlugin,
    TorchFSDPPlugin,
)

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


def memory_llama() -> nn.Module:
    """A 400 MB Llama (in the caller's context: lazily under ``LazyInitContext``) for per-rank
    memory measurements."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
