"""Tiny configs and inputs of the transformers zoo (``test_transformers_text`` and
``test_transformers_media`` build each model eagerly and lazily and compare them bit for bit)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from helpers import ZooCase
from torch import nn

LIB = "transformers"
VOCAB = 128
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def token_ids(n: int = 8, vocab: int = VOCAB) -> torch.Tensor:
    """A fixed batch of token ids that avoids the special tokens 0, 1, 2."""
    return (torch.arange(n) * 7 + 3).remainder(vocab - 3).add(3).unsqueeze(0)


def pixels(size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, size, size)


def build(model: str, config: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cfg = getattr(transformers, config)(**kwargs)
        return getattr(transformers, model)(cfg)

    return build


def fwd_ids(m: nn.Module) -> object:
    return m(input_ids=token_ids())


def fwd_seq2seq(m: nn.Module) -> object:
    return m(input_ids=token_ids(), decoder_input_ids=token_ids(5))


def fwd_pixels(size: int = 32) -> Callable[[nn.Module], object]:
    def fwd(m: nn.Module) -> object:
        return m(pixel_values=pixels(size))

    return fwd


def fwd_audio(m: nn.Module) -> object:
    return m(input_values=torch.randn(1, 400))


# Decoder-only language models share one tiny shape.
LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    **TOKENS,
)


def lm(name: str, model: str, config: str, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, build(model, config, **kwargs), fwd_ids)


def vision(name: str, model: str, config: str, size: int = 32, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, build(model, config, **kwargs), fwd_pixels(size))


VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
BERT_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    pad_token_id=0,
)
WAV2VEC2 = dict(
    vocab_size=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CLIP_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


def clip(
    config_name: str, model_name: str, text_cls: str, vision_cls: str, projection_dim: int = 16
) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cfg = getattr(transformers, config_name)(
            text_config=getattr(transformers, text_cls)(**CLIP_TEXT).to_dict(),
            vision_config=getattr(transformers, vision_cls)(**CLIP_VISION).to_dict(),
            projection_dim=projection_dim,
        )
        return getattr(transformers, model_name)(cfg)

    return build


def fwd_clip(m: nn.Module) -> object:
    return m(input_ids=token_ids(), pixel_values=pixels(32))


def blip2(model_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cfg = transformers.Blip2Config(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            qformer_config=dict(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                encoder_hidden_size=32,
                cross_attention_frequency=1,
                pad_token_id=0,
            ),
            text_config=dict(
                model_type="opt",
                vocab_size=VOCAB,
                hidden_size=32,
                ffn_dim=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
                **TOKENS,
            ),
            num_query_tokens=4,
            image_token_index=VOCAB - 1,
        )
        return getattr(transformers, model_name)(cfg)

    return build


def fwd_blip2(m: nn.Module) -> object:
    ids = torch.cat([torch.full((1, 4), VOCAB - 1), token_ids(6, VOCAB - 1)], dim=1)
    return m(pixel_values=pixels(32), input_ids=ids)


def sam() -> nn.Module:
    cfg = transformers.SamConfig(
        vision_config=transformers.SamVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
            window_size=2,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=transformers.SamPromptEncoderConfig(
            hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=transformers.SamMaskDecoderConfig(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=32,
        ),
    )
    return transformers.SamModel(cfg)


def fwd_sam(m: nn.Module) -> object:
    return m(pixel_values=pixels(64), input_points=torch.tensor([[[[10.0, 20.0]]]]))


def detr() -> nn.Module:
    backbone = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    cfg = transformers.DetrConfig(
        backbone_config=backbone,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        d_model=32,
    )
    return transformers.DetrForObjectDetection(cfg)


def whisper() -> nn.Module:
    cfg = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        d_model=32,
        max_source_positions=16,
        max_target_positions=32,
        decoder_start_token_id=1,
        **TOKENS,
    )
    return transformers.WhisperForConditionalGeneration(cfg)


def fwd_whisper(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 16, 32), decoder_input_ids=token_ids(5))


def llava() -> nn.Module:
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**CLIP_VISION),
        text_config=transformers.LlamaConfig(**LLAMA_LIKE),
        image_token_index=VOCAB - 1,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return transformers.LlavaForConditionalGeneration(cfg)


def bf16_llama() -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_LIKE)).to(torch.bfloat16)


def llama_from_config_bf16() -> nn.Module:
    # from_config(dtype=...) builds under torch.set_default_dtype.
    cfg = transformers.LlamaConfig(**LLAMA_LIKE)
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def llama_resized() -> nn.Module:
    # mean_resizing (the default) draws new rows from a MultivariateNormal fitted to the old ones.
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_LIKE))
    model.resize_token_embeddings(VOCAB + 12)
    return model


def speech_to_text() -> nn.Module:
    cfg = transformers.Speech2TextConfig(
        vocab_size=VOCAB,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        d_model=32,
        max_source_positions=64,
        max_target_positions=64,
        num_conv_layers=2,
        conv_kernel_sizes=[5, 5],
        conv_channels=16,
        input_feat_per_channel=16,
        decoder_start_token_id=2,
        **TOKENS,
    )
    return transformers.Speech2TextForConditionalGeneration(cfg)


def fwd_speech_to_text(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16), decoder_input_ids=token_ids(5))


def deformable_detr() -> nn.Module:
    backbone = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2"],
    )
    cfg = transformers.DeformableDetrConfig(
        backbone_config=backbone,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,  # 1 trips a tie_weights_keys check in transformers itself
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        d_model=32,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        disable_custom_kernels=True,
    )
    return transformers.DeformableDetrForObjectDetection(cfg)


def qwen2_vl() -> nn.Module:
    cfg = transformers.Qwen2VLConfig(
        text_config=dict(
            **LLAMA_LIKE,
            rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0),
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=VOCAB - 1,
        video_token_id=VOCAB - 2,
        vision_start_token_id=VOCAB - 3,
    )
    return transformers.Qwen2VLForConditionalGeneration(cfg)


def fwd_qwen2_vl(m: nn.Module) -> object:
    # One image of 2x2 patches (4x4 pixels, 2 frames each), merged 2x2 into a single token.
    ids = torch.cat([torch.tensor([[VOCAB - 3, VOCAB - 1]]), token_ids(5, VOCAB - 4)], dim=1)
    return m(
        input_ids=ids,
        pixel_values=torch.randn(4, 3 * 2 * 4 * 4),
        image_grid_thw=torch.tensor([[1, 2, 2]]),
        mm_token_type_ids=(ids == VOCAB - 1).int(),
    )


def llava_frozen_vision() -> nn.Module:
    model = llava()
    model.model.vision_tower.requires_grad_(False)
    return model


def paligemma() -> nn.Module:
    cfg = transformers.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **CLIP_VISION, projection_dim=32),
        text_config=dict(model_type="gemma", **LLAMA_LIKE, head_dim=8),
        image_token_index=VOCAB - 1,
        projection_dim=32,
        vocab_size=VOCAB,
    )
    return transformers.PaliGemmaForConditionalGeneration(cfg)


def fwd_image_tokens(m: nn.Module) -> object:
    # 16 image tokens (a 32x32 image in 8x8 patches), then text.
    ids = torch.cat([torch.full((1, 16), VOCAB - 1), token_ids(4, VOCAB - 1)], dim=1)
    return m(pixel_values=pixels(32), input_ids=ids)


def videomae() -> nn.Module:
    cfg = transformers.VideoMAEConfig(
        image_size=16,
        patch_size=8,
        num_frames=2,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return transformers.VideoMAEModel(cfg)


def fwd_video(m: nn.Module) -> object:
    return m(pixel_values=torch.randn(1, 2, 3, 16, 16))


def musicgen() -> nn.Module:
    cfg = transformers.MusicgenDecoderConfig(
        vocab_size=64,
        max_position_embeddings=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=4,
        hidden_size=32,
        num_codebooks=2,
        pad_token_id=0,
        bos_token_id=1,
    )
    return transformers.MusicgenForCausalLM(cfg)


def fwd_musicgen(m: nn.Module) -> object:
    return m(input_ids=token_ids(8, 64).view(2, 4))  # (batch * codebooks, seq)


def vits() -> nn.Module:
    cfg = transformers.VitsConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=8,
        spectrogram_bins=16,
        upsample_initial_channel=16,
        upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        depth_separable_channels=2,
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=1,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        pad_token_id=0,
    )
    return transformers.VitsModel(cfg)


def encodec() -> nn.Module:
    cfg = transformers.EncodecConfig(
        target_bandwidths=[1.5],
        sampling_rate=800,
        audio_channels=1,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[4, 2],
        codebook_size=16,
        codebook_dim=16,
        num_lstm_layers=1,
        norm_type="weight_norm",
    )
    return transformers.EncodecModel(cfg)


def fwd_encodec(m: nn.Module) -> object:
    return m(input_values=torch.randn(1, 1, 64))


PARAKEET_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    conv_kernel_size=3,
    subsampling_factor=4,
    subsampling_conv_channels=8,
    num_mel_bins=16,
    max_position_embeddings=64,
)


def parakeet_ctc() -> nn.Module:
    cfg = transformers.ParakeetCTCConfig(
        vocab_size=VOCAB, encoder_config=PARAKEET_ENCODER, pad_token_id=0
    )
    return transformers.ParakeetForCTC(cfg)


def parakeet_rnnt() -> nn.Module:
    cfg = transformers.ParakeetRNNTConfig(
        vocab_size=VOCAB,
        decoder_hidden_size=32,
        num_decoder_layers=1,
        encoder_config=PARAKEET_ENCODER,
        pad_token_id=0,
        blank_token_id=VOCAB - 1,
    )
    return transformers.ParakeetForRNNT(cfg)


def fwd_mel(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16))


def fwd_mel_rnnt(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16), decoder_input_ids=token_ids(1))


T5_LIKE = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=1,
    num_heads=4,
    relative_attention_num_buckets=8,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
BART_LIKE = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    decoder_start_token_id=2,
    **TOKENS,
)


def s2s(name: str, model: str, config: str, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, build(model, config, **kwargs), fwd_seq2seq)
