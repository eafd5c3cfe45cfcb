"""Libraries' own from_pretrained inside LazyInitContext: a lazy model, the library's values.

Each checkpoint is written by the test (``save_pretrained``, ``torch.save``) into a temporary
directory. The reference is the same ``from_pretrained`` call without the context, from the
same RNG state, so keys the checkpoint lacks are initialised the library's way in both.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import assert_same, rng_unchanged

from dormant import LazyInitContext, MaterializationError, is_lazy, materialize


def llama_config(**kwargs: object) -> object:
    return transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        **kwargs,
    )  # fmt: skip


def save_checkpoint(kind: str, root: Path) -> Path:
    torch.manual_seed(0)
    untied = llama_config(tie_word_embeddings=False)
    if kind == "safetensors":
        transformers.LlamaForCausalLM(llama_config()).save_pretrained(root)
    elif kind == "sharded":  # several files and model.safetensors.index.json
        transformers.LlamaForCausalLM(untied).save_pretrained(root, max_shard_size="20KB")
    elif kind == "bin":  # pytorch_model.bin, the torch.save format
        model = transformers.LlamaForCausalLM(untied)
        model.config.save_pretrained(root)
        torch.save(model.state_dict(), root / "pytorch_model.bin")
    elif kind == "missing lm_head":  # a base model's checkpoint loaded with a head
        transformers.LlamaModel(untied).save_pretrained(root)
    return root


def lazy_and_eager(path: Path, **kwargs: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(1)
    eager = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    eager_rng = torch.get_rng_state()  # moved only by the init of keys the checkpoint lacks
    torch.manual_seed(1)
    with LazyInitContext():
        lazy = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    assert torch.equal(torch.get_rng_state(), eager_rng), "generator not where eager leaves it"
    return eager, lazy


@pytest.mark.parametrize("kind", ["safetensors", "sharded", "bin", "missing lm_head"])
def test_transformers_from_pretrained_is_lazy_and_equals_the_library(
    kind: str, tmp_path: Path
) -> None:
    eager, lazy = lazy_and_eager(save_checkpoint(kind, tmp_path))
    not_lazy = [k for k, t in lazy.state_dict().items() if not is_lazy(t)]
    assert not_lazy == [], f"loaded for real at build: {not_lazy}"
    materialize(lazy)
    assert_same(eager, lazy)
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(eager(ids).logits, lazy(ids).logits)


def test_dtype_conversion_is_lazy_too(tmp_path: Path) -> None:
    eager, lazy = lazy_and_eager(save_checkpoint("safetensors", tmp_path), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and is_lazy(p) for p in lazy.parameters())
    materialize(lazy)
    assert_same(eager, lazy)


def test_only_keys_the_checkpoint_lacks_are_randomly_initialised(
    tmp_path: Path,
) -> None:
    eager, lazy = lazy_and_eager(save_checkpoint("missing lm_head", tmp_path))
    report = materialize(lazy, report=True)
    assert_same(eager, lazy)
    assert len(report.random_ops) == 1, report.random_ops  # lm_head.weight, the one missing key


def test_diffusers_from_pretrained_is_lazy_and_equals_the_library(tmp_path: Path) -> None:
    import diffusers

    torch.manual_seed(0)
    diffusers.UNet2DModel(
        sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(tmp_path)  # fmt: skip
    eager = diffusers.UNet2DModel.from_pretrained(tmp_path)
    with rng_unchanged(), LazyInitContext():
        lazy = diffusers.UNet2DModel.from_pretrained(tmp_path)
    assert all(is_lazy(t) for t in lazy.state_dict().values())
    materialize(lazy)
    assert_same(eager, lazy)


TRUNCATE_AFTER_FROM_PRETRAINED = """
import os, sys, torch, transformers
from dormant import LazyInitContext, materialize
path = sys.argv[1]
with LazyInitContext():
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
file = os.path.join(path, "model.safetensors")
os.truncate(file, os.path.getsize(file) // 2)
try:
    materialize(model)
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_checkpoint_truncated_after_from_pretrained_is_an_error_not_a_crash(
    tmp_path: Path,
) -> None:
    save_checkpoint("safetensors", tmp_path)
    # A child process: touching a page of a memory map past the end of the file is a SIGBUS.
    run = subprocess.run(
        [sys.executable, "-c", TRUNCATE_AFTER_FROM_PRETRAINED, str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, f"returncode {run.returncode}: {run.stderr[-2000:]}"
    assert "MaterializationError checkpoint file" in run.stdout, run.stdout
    assert "model.safetensors changed after the model was built from it (size" in run.stdout


def test_a_changed_shard_is_an_error_when_an_earlier_shard_was_mapped_at_its_addresses(
    tmp_path: Path,
) -> None:
    # Loaders open the shards of a checkpoint one after the other. Once the first one's tensors
    # are gone, its memory map goes, and the next shard of the same size is mapped at the same
    # addresses: its tensors must still be checked against their own file.
    from safetensors import safe_open
    from safetensors.torch import save_file

    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file({"w": torch.zeros(256, 1024)}, first)
    save_file({"w": torch.ones(256, 1024)}, second)
    with LazyInitContext():
        with safe_open(first, "pt") as f:
            f.get_tensor("w")  # read, then dropped (a key the model does not use)
        gc.collect()
        holder = torch.nn.Module()
        with safe_open(second, "pt") as f:
            holder.register_buffer("w", f.get_tensor("w"))
    save_file({"w": torch.full((256, 1024), 2.0)}, second)  # rewritten before materialize
    with pytest.raises(MaterializationError, match=r"second\.safetensors changed after"):
        materialize(holder)
