"""Zoo: diffusers models built from tiny configs, eagerly and lazily, compared bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import ZooCase, check_zoo_case
from torch import nn

diffusers = pytest.importorskip("diffusers")

LIB = "diffusers"


def _build(model: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(diffusers, model)(**kwargs)

    return build


def _t() -> torch.Tensor:
    return torch.tensor([10])


def _fwd_unet2d(m: nn.Module) -> object:
    return m(torch.randn(1, 3, 32, 32), _t())


def _fwd_unet2d_cond(m: nn.Module) -> object:
    return m(torch.randn(1, 4, 16, 16), _t(), encoder_hidden_states=torch.randn(1, 4, 32))


def _fwd_vae(m: nn.Module) -> object:
    # sample_posterior=False: the decoder sees the mode, no draw from the posterior.
    return m(torch.randn(1, 3, 32, 32))


def _fused_qkv(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def fused() -> nn.Module:
        model = build()
        model.fuse_qkv_projections()  # new Linear layers from torch.cat of the q, k, v weights
        return model

    return fused


def _fwd_dit(m: nn.Module) -> object:
    return m(torch.randn(1, 4, 8, 8), timestep=_t(), class_labels=torch.tensor([3]))


def _fwd_sd3(m: nn.Module) -> object:
    return m(
        hidden_states=torch.randn(1, 4, 8, 8),
        encoder_hidden_states=torch.randn(1, 6, 32),
        pooled_projections=torch.randn(1, 16),
        timestep=_t(),
    )


def _fwd_pixart(m: nn.Module) -> object:
    return m(
        torch.randn(1, 4, 8, 8),
        encoder_hidden_states=torch.randn(1, 6, 32),
        timestep=_t(),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _fwd_flux(m: nn.Module) -> object:
    # Latents are packed 2x2: 4x4 patches of 4 channels each -> 16 tokens of 16 features.
    return m(
        hidden_states=torch.randn(1, 16, 16),
        encoder_hidden_states=torch.randn(1, 6, 32),
        pooled_projections=torch.randn(1, 16),
        timestep=torch.tensor([0.5]),
        img_ids=torch.stack(
            torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
        ).reshape(-1, 3),
        txt_ids=torch.zeros(6, 3),
    )


def _fwd_controlnet(m: nn.Module) -> object:
    # Freshly built, the zero convolutions make every residual zero: the parameters carry the check.
    return m(
        torch.randn(1, 4, 16, 16),
        _t(),
        encoder_hidden_states=torch.randn(1, 4, 32),
        controlnet_cond=torch.randn(1, 3, 32, 32),
    )


def _fwd_temporal_vae(m: nn.Module) -> object:
    return m(torch.randn(2, 3, 16, 16), num_frames=2)


def _fwd_unet_spatio_temporal(m: nn.Module) -> object:
    return m(
        torch.randn(1, 2, 4, 8, 8),
        _t(),
        encoder_hidden_states=torch.randn(1, 1, 32),
        added_time_ids=torch.tensor([[1.0, 2.0, 3.0]]),
    )


def _fwd_unet3d(m: nn.Module) -> object:
    return m(torch.randn(1, 4, 2, 8, 8), _t(), encoder_hidden_states=torch.randn(1, 4, 32))


def _fwd_unet_motion(m: nn.Module) -> object:
    # encoder_hidden_states per frame: batch * frames rows.
    return m(torch.randn(1, 4, 2, 8, 8), _t(), encoder_hidden_states=torch.randn(2, 4, 32))


def _fwd_t2i_adapter(m: nn.Module) -> object:
    return m(torch.randn(1, 3, 16, 16))


def _fwd_wan(m: nn.Module) -> object:
    return m(
        hidden_states=torch.randn(1, 4, 2, 8, 8),
        timestep=_t(),
        encoder_hidden_states=torch.randn(1, 6, 32),
    )


def _fwd_wan_vae(m: nn.Module) -> object:
    return m(torch.randn(1, 3, 1, 16, 16))


def _fwd_hunyuan_dit(m: nn.Module) -> object:
    return m(
        torch.randn(1, 4, 8, 8),
        timestep=torch.tensor([10.0]),
        encoder_hidden_states=torch.randn(1, 6, 32),
        text_embedding_mask=torch.ones(1, 6),
        encoder_hidden_states_t5=torch.randn(1, 6, 32),
        text_embedding_mask_t5=torch.ones(1, 6),
    )


def _fwd_consistency_vae(m: nn.Module) -> object:
    # The decoder is a diffusion loop; the encoder alone is enough for one output.
    return m.encode(torch.randn(1, 3, 16, 16)).latent_dist.mean


def _fwd_unet1d(m: nn.Module) -> object:
    return m(torch.randn(1, 2, 32), _t())


UNET_COND = dict(
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
VAE = dict(
    block_out_channels=(16, 32),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
)

SD3 = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    caption_projection_dim=32,
    pooled_projection_dim=16,
    out_channels=4,
    pos_embed_max_size=16,
)


CASES: list[ZooCase] = [
    ZooCase(
        "unet2d",
        LIB,
        _build(
            "UNet2DModel",
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        ),
        _fwd_unet2d,
    ),
    ZooCase("unet2d_condition", LIB, _build("UNet2DConditionModel", **UNET_COND), _fwd_unet2d_cond),
    ZooCase(
        "unet2d_condition_fused_qkv",
        LIB,
        _fused_qkv(_build("UNet2DConditionModel", **UNET_COND)),
        _fwd_unet2d_cond,
    ),
    ZooCase(
        "controlnet",
        LIB,
        _build(
            "ControlNetModel",
            **{
                k: v
                for k, v in UNET_COND.items()
                if k not in ("out_channels", "up_block_types", "sample_size")
            },
            conditioning_embedding_out_channels=(8, 16),
        ),
        _fwd_controlnet,
    ),
    ZooCase("autoencoder_kl", LIB, _build("AutoencoderKL", **VAE), _fwd_vae),
    ZooCase(
        "vq_model",
        LIB,
        _build(
            "VQModel",
            **{k: v for k, v in VAE.items() if k != "latent_channels"},
            latent_channels=3,
            num_vq_embeddings=16,
            vq_embed_dim=3,
        ),
        _fwd_vae,
    ),
    ZooCase(
        "autoencoder_tiny",
        LIB,
        _build(
            "AutoencoderTiny",
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
        ),
        _fwd_vae,
    ),
    ZooCase(
        "dit",
        LIB,
        _build(
            "DiTTransformer2DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,
        ),
        _fwd_dit,
    ),
    ZooCase("sd3", LIB, _build("SD3Transformer2DModel", **SD3), _fwd_sd3),
    ZooCase(
        "sd3_fused_qkv",
        LIB,
        _fused_qkv(_build("SD3Transformer2DModel", **SD3)),
        _fwd_sd3,
    ),
    ZooCase(
        "pixart",
        LIB,
        _build(
            "PixArtTransformer2DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=32,
            caption_channels=32,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=1000,
        ),
        _fwd_pixart,
    ),
    ZooCase(
        "flux",
        LIB,
        _build(
            "FluxTransformer2DModel",
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            axes_dims_rope=(4, 6, 6),
        ),
        _fwd_flux,
    ),
    ZooCase(
        "unet1d",
        LIB,
        _build(
            "UNet1DModel",
            sample_size=32,
            in_channels=2,
            out_channels=2,
            extra_in_channels=64,  # the Fourier time embedding is concatenated
            block_out_channels=(32, 32, 64),  # attention heads are channels // 32
            down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
            up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        ),
        _fwd_unet1d,
    ),
    ZooCase(
        "unet3d_condition",
        LIB,
        _build(
            "UNet3DConditionModel",
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        _fwd_unet3d,
    ),
    ZooCase(
        "unet_motion",
        LIB,
        _build(
            "UNetMotionModel",
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            cross_attention_dim=32,
            num_attention_heads=2,
            norm_num_groups=8,
            motion_num_attention_heads=2,
            motion_max_seq_length=8,
        ),
        _fwd_unet_motion,
    ),
    ZooCase(
        "unet_spatio_temporal",
        LIB,
        _build(
            "UNetSpatioTemporalConditionModel",
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24,
            layers_per_block=1,
            cross_attention_dim=32,
            num_attention_heads=(2, 4),
            num_frames=2,
        ),
        _fwd_unet_spatio_temporal,
    ),
    ZooCase(
        "t2i_adapter",
        LIB,
        _build("T2IAdapter", channels=[16, 32], num_res_blocks=1, downscale_factor=2),
        _fwd_t2i_adapter,
    ),
    ZooCase(
        "autoencoder_kl_temporal_decoder",
        LIB,
        _build(
            "AutoencoderKLTemporalDecoder",
            block_out_channels=(32, 64),  # its norms use 32 groups
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            latent_channels=4,
            layers_per_block=1,
        ),
        _fwd_temporal_vae,
    ),
    ZooCase(
        "autoencoder_kl_wan",
        LIB,
        _build(
            "AutoencoderKLWan",
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2],
            num_res_blocks=1,
            temperal_downsample=[False],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
        _fwd_wan_vae,
    ),
    ZooCase(
        "consistency_decoder_vae",
        LIB,
        _build(
            "ConsistencyDecoderVAE",
            encoder_block_out_channels=(16, 32),
            encoder_down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            encoder_layers_per_block=1,
            encoder_norm_num_groups=8,
            decoder_block_out_channels=(16, 32),
            decoder_down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            decoder_up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            decoder_layers_per_block=1,
            decoder_norm_num_groups=8,
            decoder_num_train_timesteps=16,
        ),
        _fwd_consistency_vae,
    ),
    ZooCase(
        "wan",
        LIB,
        _build(
            "WanTransformer3DModel",
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            text_dim=32,
            freq_dim=32,
            ffn_dim=64,
            num_layers=1,
            rope_max_seq_len=32,
        ),
        _fwd_wan,
    ),
    ZooCase(
        "hunyuan_dit",
        LIB,
        _build(
            "HunyuanDiT2DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            patch_size=2,
            sample_size=8,
            hidden_size=32,
            num_layers=2,
            cross_attention_dim=32,
            cross_attention_dim_t5=32,
            pooled_projection_dim=16,
            text_len=6,
            text_len_t5=6,
            use_style_cond_and_image_meta_size=False,
        ),
        _fwd_hunyuan_dit,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_diffusers(case: ZooCase) -> None:
    check_zoo_case(case)
