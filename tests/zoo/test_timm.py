"""Model zoo: timm, the smallest real variant of (nearly) every family.

One architecture per timm model module (smallest variant that is not a ``test_*`` config), plus
the sub-families named apart (deit3, beitv2, gmlp, resmlp, coatnet, maxxvit, ...). Each model is
built with ``pretrained=False`` eagerly and lazily from the same seed; every parameter and buffer
and one forward output (eval mode, one image at the model's default input size unless noted)
must be bit-identical.

Left out: the multi-hundred-million-parameter encoders that timm ships only in large sizes
(``deepseek_vit``, ``gemma4_vit``, ``qwen3_vit``, ``mobilenetv5``, ``naflexvit``, SAM ViT,
NASNet/PNASNet-large): too slow for CI on two cores.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

timm = pytest.importorskip("timm")

import torch  # noqa: E402
from helpers import ZooCase, check_zoo_case  # noqa: E402

LIBRARY = "timm"

# model name -> input size override (square), where the default input is large and the model
# takes any size.
MODELS: dict[str, int | None] = {
    # vision transformers
    "vit_tiny_patch16_224": None,
    "vit_relpos_small_patch16_224": None,
    "vit_tiny_r_s16_p8_224": None,  # hybrid (ResNet stem)
    "deit_tiny_patch16_224": None,
    "deit_tiny_distilled_patch16_224": None,
    "deit3_small_patch16_224": None,
    "beit_base_patch16_224": None,
    "beitv2_base_patch16_224": None,
    "eva02_tiny_patch14_224": None,
    "convit_tiny": None,
    "tnt_s_patch16_224": None,
    "cait_xxs24_224": None,
    "coat_tiny": None,
    "coat_lite_tiny": None,
    "crossvit_tiny_240": None,
    "pit_ti_224": None,
    "xcit_nano_12_p16_224": None,
    "twins_svt_small": None,
    "twins_pcpvt_small": None,
    "pvt_v2_b0": None,
    "nest_tiny": None,
    "volo_d1_224": None,
    "visformer_tiny": None,
    "vitamin_small_224": None,
    "tiny_vit_5m_224": None,
    "levit_128s": None,
    "levit_conv_128s": None,
    "efficientformer_l1": None,
    "efficientformerv2_s0": None,
    "mvitv2_tiny": None,
    "hiera_tiny_224": None,
    "sam2_hiera_tiny": 224,
    "gcvit_xxtiny": None,
    "davit_tiny": None,
    "focalnet_tiny_srf": None,
    # windowed / hybrid attention
    "swin_tiny_patch4_window7_224": None,
    "swinv2_tiny_window8_256": None,
    "swinv2_cr_tiny_224": None,
    "maxvit_pico_rw_256": None,
    "maxxvitv2_nano_rw_256": None,
    "coatnet_pico_rw_224": None,
    "halonet_h1": None,
    "botnet26t_256": None,
    "mobilevit_xxs": None,
    "mobilevitv2_050": None,
    "edgenext_xx_small": None,
    "efficientvit_b0": None,
    "efficientvit_m0": None,
    "efficientvim_m1": None,
    "swiftformer_xs": None,
    "fastvit_t8": None,
    "shvit_s1": None,
    "iformer_t": None,
    "lowformer_b0": None,
    "nextvit_small": None,
    "csatv2": 224,
    # MLPs and metaformers
    "mixer_s16_224": None,
    "gmlp_ti16_224": None,
    "resmlp_12_224": None,
    "gmixer_12_224": None,
    "sequencer2d_s": None,
    "poolformer_s12": None,
    "convformer_s18": None,
    "caformer_s18": None,
    "mambaout_femto": None,
    "inception_next_atto": None,
    "convmixer_768_32": None,
    # convolutional networks
    "resnet18": None,
    "resnet10t": None,
    "resnet50d": None,
    "resnetv2_18": None,
    "legacy_seresnet18": None,
    "skresnet18": None,
    "resnest14d": None,
    "res2next50": None,
    "tresnet_m": None,
    "regnetx_002": None,
    "regnety_002": None,
    "regnetz_005": None,
    "nf_regnet_b0": None,
    "nfnet_l0": None,
    "convnext_atto": None,
    "rdnet_tiny": None,
    "densenet121": None,
    "dla46_c": None,
    "dpn48b": None,
    "hrnet_w18_small": None,
    "cs3darknet_s": None,
    "cspnext_tiny": None,
    "ese_vovnet19b_slim_dw": None,
    "selecsls42": None,
    "xception41p": None,
    "legacy_xception": None,
    "inception_v3": None,
    "mobileone_s1": None,
    "repvgg_a0": None,
    "gernet_s": None,
    "cpubone_nano": None,
    "hgnetv2_b0": None,
    "fasternet_t0": None,
    "starnet_s050": None,
    "rexnet_100": None,
    "repghostnet_050": None,
    "repvit_m0_9": None,
    "ghostnet_050": None,
    "ghostnetv3_050": None,
    "lcnetv2_small": None,
    "efficientnet_b0": None,
    "tf_efficientnetv2_b0": None,
    "mixnet_s": None,
    "mobilenetv2_050": None,
    "mobilenetv3_small_050": None,
    "lcnet_035": None,
    "hardcorenas_a": None,
}


def _forward(size: int | None, model: torch.nn.Module) -> object:
    channels, height, width = model.pretrained_cfg["input_size"]
    if size is not None:
        height = width = size
    return model(torch.randn(1, channels, height, width))


CASES: list[ZooCase] = [
    ZooCase(
        name,
        LIBRARY,
        functools.partial(timm.create_model, name, pretrained=False),
        functools.partial(_forward, size),
    )
    for name, size in MODELS.items()
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_timm(case: ZooCase) -> None:
    check_zoo_case(case)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224"])
def test_timm_pretrained_is_lazy_and_equals_the_file(name: str, fmt: str, tmp_path: Path) -> None:
    from helpers import assert_same
    from safetensors.torch import save_file

    from dormant import LazyInitContext, is_lazy, materialize

    torch.manual_seed(0)
    source = timm.create_model(name, num_classes=10)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "safetensors":
        save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    overlay = {"file": str(path), "num_classes": 10}
    torch.manual_seed(1)
    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    eager_rng = torch.get_rng_state()  # timm initialises at random, then loads the file
    torch.manual_seed(1)
    with LazyInitContext():
        lazy = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(torch.get_rng_state(), eager_rng), "generator not where eager leaves it"
    assert all(is_lazy(t) for t in lazy.state_dict().values())
    materialize(lazy)
    assert_same(source, lazy)  # every tensor from the file, none from the random init
