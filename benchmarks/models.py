"""The benchmark models: name -> builder, at full size and as a tiny warm-up of the same family.

Imported by both benchmark venvs (the main one with transformers 5.x, and the peer venv with
colossalai and transformers 4.51): only torch at the top, libraries inside the builders. The
Llama configs use only keyword arguments that mean the same in both transformers versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

LLAMA: dict[str, dict[str, int]] = {
    # ~134M: GPT-2-small-sized Llama.
    "llama-125m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12
    ),
    # ~220M: the model (untied embeddings: 2 x 32.8M of its parameters are embeddings).
    "llama-220m": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        tie_word_embeddings=False,
    ),
    # ~374M.
    "llama-350m": dict(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16
    ),
    # ~1.1B: TinyLlama's shape.
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    # Llama 2 7B / 13B and Llama 2/3 70B shapes (vocab 32000).
    "llama-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ),
    "llama-13b": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40
    ),
    "llama-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
}
LLAMA_TINY = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, vocab_size=99
)

# ViT-B/16 (transformers' ViTConfig defaults, written out): 86M parameters.
VIT_B = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
)
VIT_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)

# Stable Diffusion 1.x's UNet layout (cross-attention down/up blocks, 2 layers per block, text
# context 768) at half the channels of SD's (320, 640, 1280, 1280): 220M parameters instead of 860M.
UNET_SD_HALF = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(160, 320, 640, 640),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
UNET_TINY = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


def _llama(cfg: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        kwargs = {"vocab_size": 32000, **cfg}
        kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
        return LlamaForCausalLM(LlamaConfig(**kwargs))

    return build


def _vit(cfg: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import ViTConfig, ViTModel

        return ViTModel(ViTConfig(**cfg))

    return build


def _unet(cfg: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**cfg)

    return build


@dataclass(frozen=True)
class Model:
    """One benchmark model."""

    name: str
    label: str  # for the table
    short: str  # for the plot
    family: str  # "transformers" or "diffusers": picks the init pass of the meta-device path
    build: Callable[[], nn.Module] = field(repr=False)
    tiny: Callable[[], nn.Module] = field(repr=False)  # same code paths, for the warm-up
    full: bool  # construct + materialize; False: construct only (too big to build eagerly)
    repeats: int


def _m(name: str, label: str, family: str, build: Any, tiny: Any, full: bool, rep: int) -> Model:
    short = label.split(" (")[0].replace("UNet2DConditionModel", "UNet2DCondition")
    return Model(name, label, short, family, build, tiny, full, rep)


MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        _m("llama-125m", "Llama 134M", "transformers", _llama(LLAMA["llama-125m"]),
           _llama(LLAMA_TINY), True, 5),
        _m("llama-220m", "Llama 220M (untied embeddings)", "transformers",
           _llama(LLAMA["llama-220m"]), _llama(LLAMA_TINY), True, 5),
        _m("llama-350m", "Llama 374M", "transformers", _llama(LLAMA["llama-350m"]),
           _llama(LLAMA_TINY), True, 5),
        _m("llama-1b", "Llama 1.1B", "transformers", _llama(LLAMA["llama-1b"]),
           _llama(LLAMA_TINY), True, 3),
        _m("vit-b", "ViT-B/16 (transformers ViTModel) 86M", "transformers", _vit(VIT_B),
           _vit(VIT_TINY), True, 5),
        _m("unet-sd-half", "UNet2DConditionModel (SD layout, half width) 220M", "diffusers",
           _unet(UNET_SD_HALF), _unet(UNET_TINY), True, 5),
        _m("llama-7b", "Llama 6.7B", "transformers", _llama(LLAMA["llama-7b"]),
           _llama(LLAMA_TINY), False, 3),
        _m("llama-13b", "Llama 13B", "transformers", _llama(LLAMA["llama-13b"]),
           _llama(LLAMA_TINY), False, 3),
        _m("llama-70b", "Llama 69B", "transformers", _llama(LLAMA["llama-70b"]),
           _llama(LLAMA_TINY), False, 3),
    ]
}  # fmt: skip


def init_pass(model: nn.Module, family: str) -> None:
    """The model's own initialization, as PyTorch's meta-device recipe runs it after to_empty.

    transformers: ``init_weights()`` (in 5.x it runs ``_init_weights`` on every module, rotary
    ``inv_freq`` buffers included, and re-ties; during a build under ``torch.device("meta")`` it
    skips itself, so this is the one pass). diffusers has no model-level init: every module's
    ``reset_parameters``, as FSDP's default ``param_init_fn`` does.
    """
    import torch

    with torch.no_grad():
        if family == "transformers":
            model.init_weights()  # type: ignore[operator]
        else:
            for m in model.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
