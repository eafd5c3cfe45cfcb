"""Zoo: transformers models built from tiny configs, eagerly and lazily, compared bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import ZooCase, check_zoo_case
from torch import nn

transformers = pytest.importorskip("transformers")

LIB = "transformers"
VOCAB = 128
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _ids(n: int = 8, vocab: int = VOCAB) -> torch.Tensor:
    """A fixed batch of token ids that avoids the special tokens 0, 1, 2."""
    return (torch.arange(n) * 7 + 3).remainder(vocab - 3).add(3).unsqueeze(0)


def _pixels(size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, size, size)


def _build(model: str, config: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cfg = getattr(transformers, config)(**kwargs)
        return getattr(transformers, model)(cfg)

    return build


def _fwd_ids(m: nn.Module) -> object:
    return m(input_ids=_ids())


def _fwd_seq2seq(m: nn.Module) -> object:
    return m(input_ids=_ids(), decoder_input_ids=_ids(5))


def _fwd_pixels(size: int = 32) -> Callable[[nn.Module], object]:
    def fwd(m: nn.Module) -> object:
        return m(pixel_values=_pixels(size))

    return fwd


def _fwd_audio(m: nn.Module) -> object:
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


def _lm(name: str, model: str, config: str, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, _build(model, config, **kwargs), _fwd_ids)


def _vision(name: str, model: str, config: str, size: int = 32, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, _build(model, config, **kwargs), _fwd_pixels(size))


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


def _clip(
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


def _fwd_clip(m: nn.Module) -> object:
    return m(input_ids=_ids(), pixel_values=_pixels(32))


def _blip2(model_name: str) -> Callable[[], nn.Module]:
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


def _fwd_blip2(m: nn.Module) -> object:
    ids = torch.cat([torch.full((1, 4), VOCAB - 1), _ids(6, VOCAB - 1)], dim=1)
    return m(pixel_values=_pixels(32), input_ids=ids)


def _sam() -> nn.Module:
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


def _fwd_sam(m: nn.Module) -> object:
    return m(pixel_values=_pixels(64), input_points=torch.tensor([[[[10.0, 20.0]]]]))


def _detr() -> nn.Module:
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


def _whisper() -> nn.Module:
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


def _fwd_whisper(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 16, 32), decoder_input_ids=_ids(5))


def _llava() -> nn.Module:
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**CLIP_VISION),
        text_config=transformers.LlamaConfig(**LLAMA_LIKE),
        image_token_index=VOCAB - 1,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return transformers.LlavaForConditionalGeneration(cfg)


def _bf16_llama() -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_LIKE)).to(torch.bfloat16)


def _llama_from_config_bf16() -> nn.Module:
    # from_config(dtype=...) builds under torch.set_default_dtype.
    cfg = transformers.LlamaConfig(**LLAMA_LIKE)
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def _llama_resized() -> nn.Module:
    # mean_resizing (the default) draws new rows from a MultivariateNormal fitted to the old ones.
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_LIKE))
    model.resize_token_embeddings(VOCAB + 12)
    return model


def _speech_to_text() -> nn.Module:
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


def _fwd_speech_to_text(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16), decoder_input_ids=_ids(5))


def _deformable_detr() -> nn.Module:
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


def _qwen2_vl() -> nn.Module:
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


def _fwd_qwen2_vl(m: nn.Module) -> object:
    # One image of 2x2 patches (4x4 pixels, 2 frames each), merged 2x2 into a single token.
    ids = torch.cat([torch.tensor([[VOCAB - 3, VOCAB - 1]]), _ids(5, VOCAB - 4)], dim=1)
    return m(
        input_ids=ids,
        pixel_values=torch.randn(4, 3 * 2 * 4 * 4),
        image_grid_thw=torch.tensor([[1, 2, 2]]),
        mm_token_type_ids=(ids == VOCAB - 1).int(),
    )


def _llava_frozen_vision() -> nn.Module:
    model = _llava()
    model.model.vision_tower.requires_grad_(False)
    return model


def _paligemma() -> nn.Module:
    cfg = transformers.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **CLIP_VISION, projection_dim=32),
        text_config=dict(model_type="gemma", **LLAMA_LIKE, head_dim=8),
        image_token_index=VOCAB - 1,
        projection_dim=32,
        vocab_size=VOCAB,
    )
    return transformers.PaliGemmaForConditionalGeneration(cfg)


def _fwd_image_tokens(m: nn.Module) -> object:
    # 16 image tokens (a 32x32 image in 8x8 patches), then text.
    ids = torch.cat([torch.full((1, 16), VOCAB - 1), _ids(4, VOCAB - 1)], dim=1)
    return m(pixel_values=_pixels(32), input_ids=ids)


def _videomae() -> nn.Module:
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


def _fwd_video(m: nn.Module) -> object:
    return m(pixel_values=torch.randn(1, 2, 3, 16, 16))


def _musicgen() -> nn.Module:
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


def _fwd_musicgen(m: nn.Module) -> object:
    return m(input_ids=_ids(8, 64).view(2, 4))  # (batch * codebooks, seq)


def _vits() -> nn.Module:
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


def _encodec() -> nn.Module:
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


def _fwd_encodec(m: nn.Module) -> object:
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


def _parakeet_ctc() -> nn.Module:
    cfg = transformers.ParakeetCTCConfig(
        vocab_size=VOCAB, encoder_config=PARAKEET_ENCODER, pad_token_id=0
    )
    return transformers.ParakeetForCTC(cfg)


def _parakeet_rnnt() -> nn.Module:
    cfg = transformers.ParakeetRNNTConfig(
        vocab_size=VOCAB,
        decoder_hidden_size=32,
        num_decoder_layers=1,
        encoder_config=PARAKEET_ENCODER,
        pad_token_id=0,
        blank_token_id=VOCAB - 1,
    )
    return transformers.ParakeetForRNNT(cfg)


def _fwd_mel(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16))


def _fwd_mel_rnnt(m: nn.Module) -> object:
    return m(input_features=torch.randn(1, 32, 16), decoder_input_ids=_ids(1))


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


def _s2s(name: str, model: str, config: str, **kwargs: object) -> ZooCase:
    return ZooCase(name, LIB, _build(model, config, **kwargs), _fwd_seq2seq)


CASES: list[ZooCase] = [
    # decoder-only language models
    _lm("llama", "LlamaForCausalLM", "LlamaConfig", **LLAMA_LIKE),
    ZooCase("llama_bf16", LIB, _bf16_llama, _fwd_ids),
    ZooCase("llama_from_config_bf16", LIB, _llama_from_config_bf16, _fwd_ids),
    ZooCase("llama_resized_embeddings", LIB, _llama_resized, _fwd_ids),
    _lm("mistral", "MistralForCausalLM", "MistralConfig", **LLAMA_LIKE, sliding_window=4),
    _lm(
        "mixtral",
        "MixtralForCausalLM",
        "MixtralConfig",
        **LLAMA_LIKE,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    _lm("qwen2", "Qwen2ForCausalLM", "Qwen2Config", **LLAMA_LIKE),
    _lm("qwen3", "Qwen3ForCausalLM", "Qwen3Config", **LLAMA_LIKE, head_dim=8),
    _lm(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        **LLAMA_LIKE,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
    ),
    _lm("gemma", "GemmaForCausalLM", "GemmaConfig", **LLAMA_LIKE, head_dim=8),
    _lm("gemma2", "Gemma2ForCausalLM", "Gemma2Config", **LLAMA_LIKE, head_dim=8),
    _lm(
        "gemma3_text",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        **LLAMA_LIKE,
        head_dim=8,
        sliding_window=4,
    ),
    _lm("phi", "PhiForCausalLM", "PhiConfig", **LLAMA_LIKE),
    _lm("phi3", "Phi3ForCausalLM", "Phi3Config", **LLAMA_LIKE),
    _lm("stablelm", "StableLmForCausalLM", "StableLmConfig", **LLAMA_LIKE),
    _lm("starcoder2", "Starcoder2ForCausalLM", "Starcoder2Config", **LLAMA_LIKE),
    _lm("olmo2", "Olmo2ForCausalLM", "Olmo2Config", **LLAMA_LIKE),
    _lm("cohere", "CohereForCausalLM", "CohereConfig", **LLAMA_LIKE),
    _lm("granite", "GraniteForCausalLM", "GraniteConfig", **LLAMA_LIKE),
    _lm(
        "deepseek_v3",
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        **LLAMA_LIKE,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=8,
    ),
    _lm(
        "gpt_oss",
        "GptOssForCausalLM",
        "GptOssConfig",
        **LLAMA_LIKE,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=4,
    ),
    _lm(
        "falcon",
        "FalconForCausalLM",
        "FalconConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        **TOKENS,
    ),
    _lm(
        "gpt2",
        "GPT2LMHeadModel",
        "GPT2Config",
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        **TOKENS,
    ),
    _lm(
        "gpt_neo",
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        attention_types=[[["global", "local"], 1]],
        num_heads=4,
        max_position_embeddings=64,
        window_size=4,
        **TOKENS,
    ),
    _lm(
        "gptj",
        "GPTJForCausalLM",
        "GPTJConfig",
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        rotary_dim=4,
        **TOKENS,
    ),
    _lm(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **TOKENS,
    ),
    _lm(
        "codegen",
        "CodeGenForCausalLM",
        "CodeGenConfig",
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        n_ctx=64,
        rotary_dim=4,
        **TOKENS,
    ),
    _lm(
        "opt",
        "OPTForCausalLM",
        "OPTConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        **TOKENS,
    ),
    _lm(
        "bloom",
        "BloomForCausalLM",
        "BloomConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        n_layer=2,
        n_head=4,
        **TOKENS,
    ),
    _lm(
        "xglm",
        "XGLMForCausalLM",
        "XGLMConfig",
        vocab_size=VOCAB,
        d_model=32,
        ffn_dim=64,
        num_layers=2,
        attention_heads=4,
        max_position_embeddings=64,
        **TOKENS,
    ),
    _lm(
        "ctrl",
        "CTRLLMHeadModel",
        "CTRLConfig",
        vocab_size=VOCAB,
        n_embd=32,
        dff=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        **TOKENS,
    ),
    _lm(
        "reformer",
        "ReformerModelWithLMHead",
        "ReformerConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        attention_head_size=8,
        num_attention_heads=4,
        feed_forward_size=64,
        attn_layers=["local", "lsh"],
        axial_pos_shape=[4, 4],
        axial_pos_embds_dim=[16, 16],
        max_position_embeddings=16,
        local_attn_chunk_length=4,
        lsh_attn_chunk_length=4,
        num_buckets=2,
        is_decoder=True,
        pad_token_id=0,
        eos_token_id=2,
    ),
    # state-space and recurrent language models
    _lm(
        "mamba",
        "MambaForCausalLM",
        "MambaConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        **TOKENS,
    ),
    _lm(
        "falcon_mamba",
        "FalconMambaForCausalLM",
        "FalconMambaConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        use_mambapy=True,
        **TOKENS,
    ),
    _lm(
        "mamba2",
        "Mamba2ForCausalLM",
        "Mamba2Config",
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_heads=8,
        head_dim=8,
        n_groups=1,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        chunk_size=4,
        **TOKENS,
    ),
    _lm(
        "jamba",
        "JambaForCausalLM",
        "JambaConfig",
        **LLAMA_LIKE,
        num_experts=2,
        num_experts_per_tok=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    ),
    _lm(
        "rwkv",
        "RwkvForCausalLM",
        "RwkvConfig",
        vocab_size=VOCAB,
        context_length=64,
        hidden_size=32,
        num_hidden_layers=2,
        attention_hidden_size=32,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # encoders
    _lm("bert", "BertForPreTraining", "BertConfig", **BERT_LIKE),
    _lm("roberta", "RobertaForMaskedLM", "RobertaConfig", **{**BERT_LIKE, "pad_token_id": 1}),
    _lm("albert", "AlbertForMaskedLM", "AlbertConfig", **BERT_LIKE, embedding_size=16),
    _lm("deberta", "DebertaForMaskedLM", "DebertaConfig", **BERT_LIKE),
    _lm("deberta_v2", "DebertaV2ForMaskedLM", "DebertaV2Config", **BERT_LIKE),
    _lm("electra", "ElectraForPreTraining", "ElectraConfig", **BERT_LIKE, embedding_size=16),
    _lm(
        "distilbert",
        "DistilBertForMaskedLM",
        "DistilBertConfig",
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
    _lm("roformer", "RoFormerForMaskedLM", "RoFormerConfig", **BERT_LIKE),
    _lm(
        "esm",
        "EsmForMaskedLM",
        "EsmConfig",
        **BERT_LIKE,
        position_embedding_type="rotary",
        mask_token_id=3,
    ),
    _lm("mpnet", "MPNetForMaskedLM", "MPNetConfig", **{**BERT_LIKE, "pad_token_id": 1}),
    _lm(
        "longformer",
        "LongformerForMaskedLM",
        "LongformerConfig",
        **{**BERT_LIKE, "pad_token_id": 1},
        attention_window=4,
    ),
    _lm(
        "bigbird",
        "BigBirdForMaskedLM",
        "BigBirdConfig",
        **BERT_LIKE,
        attention_type="original_full",
    ),
    _lm(
        "funnel",
        "FunnelForMaskedLM",
        "FunnelConfig",
        vocab_size=VOCAB,
        block_sizes=[1, 1],
        d_model=32,
        n_head=4,
        d_head=8,
        d_inner=64,
        pad_token_id=0,
    ),
    _lm(
        "fnet",
        "FNetForMaskedLM",
        "FNetConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
    _lm(
        "modernbert",
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        cls_token_id=1,
        sep_token_id=2,
        **TOKENS,
    ),
    _lm(
        "xlnet",
        "XLNetLMHeadModel",
        "XLNetConfig",
        vocab_size=VOCAB,
        d_model=32,
        n_layer=2,
        n_head=4,
        d_inner=64,
        **TOKENS,
    ),
    # encoder-decoders
    _s2s("t5", "T5ForConditionalGeneration", "T5Config", **{**T5_LIKE, "num_layers": 2}),
    _s2s("mt5", "MT5ForConditionalGeneration", "MT5Config", **T5_LIKE),
    _s2s("longt5", "LongT5ForConditionalGeneration", "LongT5Config", **T5_LIKE, local_radius=2),
    _s2s(
        "switch_transformers",
        "SwitchTransformersForConditionalGeneration",
        "SwitchTransformersConfig",
        **{**T5_LIKE, "num_layers": 2},
        num_decoder_layers=2,
        num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=1,
        num_experts=4,
        expert_capacity=8,
    ),
    _s2s("bart", "BartForConditionalGeneration", "BartConfig", **BART_LIKE),
    _s2s("pegasus", "PegasusForConditionalGeneration", "PegasusConfig", **BART_LIKE),
    _s2s("marian", "MarianMTModel", "MarianConfig", **BART_LIKE),
    _s2s("m2m100", "M2M100ForConditionalGeneration", "M2M100Config", **BART_LIKE),
    _s2s(
        "led",
        "LEDForConditionalGeneration",
        "LEDConfig",
        **{k: v for k, v in BART_LIKE.items() if k != "max_position_embeddings"},
        max_encoder_position_embeddings=64,
        max_decoder_position_embeddings=64,
        attention_window=[4],
    ),
    ZooCase("whisper", LIB, _whisper, _fwd_whisper),
    ZooCase("speech_to_text", LIB, _speech_to_text, _fwd_speech_to_text),
    # vision
    _vision("vit", "ViTModel", "ViTConfig", **VIT),
    _vision("vit_mim", "ViTForMaskedImageModeling", "ViTConfig", **VIT, encoder_stride=8),
    _vision("vit_cls", "ViTForImageClassification", "ViTConfig", **VIT, num_labels=5),
    _vision(
        "vit_mae",
        "ViTMAEForPreTraining",
        "ViTMAEConfig",
        **VIT,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
    ),
    _vision(
        "beit",
        "BeitForMaskedImageModeling",
        "BeitConfig",
        **VIT,
        vocab_size=VOCAB,
        use_relative_position_bias=True,
        use_mask_token=True,
        layer_scale_init_value=0.1,
    ),
    _vision("dinov2", "Dinov2Model", "Dinov2Config", **VIT),
    _vision(
        "swin",
        "SwinModel",
        "SwinConfig",
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=4,
    ),
    _vision(
        "convnext",
        "ConvNextForImageClassification",
        "ConvNextConfig",
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=5,
    ),
    _vision(
        "resnet",
        "ResNetForImageClassification",
        "ResNetConfig",
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=5,
    ),
    _vision(
        "regnet",
        "RegNetForImageClassification",
        "RegNetConfig",
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        groups_width=8,
        num_labels=5,
    ),
    _vision(
        "mobilenet_v2",
        "MobileNetV2ForImageClassification",
        "MobileNetV2Config",
        image_size=32,
        depth_multiplier=0.25,
        num_labels=5,
    ),
    _vision(
        "efficientnet",
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        image_size=32,
        width_coefficient=0.1,
        depth_coefficient=0.1,
        hidden_dim=128,
        num_labels=5,
    ),
    _vision(
        "mobilevit",
        "MobileViTForImageClassification",
        "MobileViTConfig",
        image_size=32,
        hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32],
        num_labels=5,
    ),
    _vision(
        "segformer",
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=5,
    ),
    _vision(
        "dpt",
        "DPTForDepthEstimation",
        "DPTConfig",
        **VIT,
        backbone_out_indices=[0, 1],
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        reassemble_factors=[2, 1],
    ),
    _vision(
        "yolos",
        "YolosForObjectDetection",
        "YolosConfig",
        **{**VIT, "image_size": [32, 32]},
        num_detection_tokens=4,
    ),
    ZooCase("detr", LIB, _detr, _fwd_pixels(64)),
    ZooCase("deformable_detr", LIB, _deformable_detr, _fwd_pixels(64)),
    ZooCase("sam", LIB, _sam, _fwd_sam),
    ZooCase("videomae", LIB, _videomae, _fwd_video),
    # multimodal
    ZooCase(
        "clip",
        LIB,
        _clip("CLIPConfig", "CLIPModel", "CLIPTextConfig", "CLIPVisionConfig"),
        _fwd_clip,
    ),
    ZooCase(
        "siglip",
        LIB,
        _clip("SiglipConfig", "SiglipModel", "SiglipTextConfig", "SiglipVisionConfig"),
        _fwd_clip,
    ),
    ZooCase(
        "owlvit",
        LIB,
        _clip(
            "OwlViTConfig",
            "OwlViTForObjectDetection",
            "OwlViTTextConfig",
            "OwlViTVisionConfig",
            projection_dim=32,
        ),
        _fwd_clip,
    ),
    ZooCase("blip2", LIB, _blip2("Blip2Model"), _fwd_blip2),
    ZooCase("blip2_cg", LIB, _blip2("Blip2ForConditionalGeneration"), _fwd_blip2),
    ZooCase("llava", LIB, _llava, _fwd_image_tokens),
    ZooCase("llava_frozen_vision", LIB, _llava_frozen_vision, _fwd_image_tokens),
    ZooCase("paligemma", LIB, _paligemma, _fwd_image_tokens),
    ZooCase("qwen2_vl", LIB, _qwen2_vl, _fwd_qwen2_vl),
    # audio
    ZooCase("wav2vec2", LIB, _build("Wav2Vec2ForCTC", "Wav2Vec2Config", **WAV2VEC2), _fwd_audio),
    ZooCase(
        "wav2vec2_pretraining",
        LIB,
        _build(
            "Wav2Vec2ForPreTraining",
            "Wav2Vec2Config",
            **WAV2VEC2,
            num_codevectors_per_group=8,
            num_codevector_groups=2,
            codevector_dim=16,
            proj_codevector_dim=16,
        ),
        _fwd_audio,
    ),
    # Without SpecAugment there is no masked_spec_embed: the rest of Wav2Vec2 on its own.
    ZooCase(
        "wav2vec2_no_specaug",
        LIB,
        _build("Wav2Vec2ForCTC", "Wav2Vec2Config", **WAV2VEC2, mask_time_prob=0.0),
        _fwd_audio,
    ),
    ZooCase("hubert", LIB, _build("HubertModel", "HubertConfig", **WAV2VEC2), _fwd_audio),
    ZooCase(
        "wavlm",
        LIB,
        _build(
            "WavLMModel",
            "WavLMConfig",
            **WAV2VEC2,
            mask_time_prob=0.0,
            num_buckets=16,
            max_bucket_distance=32,
        ),
        _fwd_audio,
    ),
    ZooCase(
        "data2vec_audio",
        LIB,
        _build(
            "Data2VecAudioModel",
            "Data2VecAudioConfig",
            **{**WAV2VEC2, "num_conv_pos_embeddings": 4},
            mask_time_prob=0.0,
        ),
        _fwd_audio,
    ),
    ZooCase("encodec", LIB, _encodec, _fwd_encodec),
    ZooCase("parakeet_ctc", LIB, _parakeet_ctc, _fwd_mel),
    ZooCase("parakeet_rnnt", LIB, _parakeet_rnnt, _fwd_mel_rnnt),
    ZooCase("musicgen", LIB, _musicgen, _fwd_musicgen),
    ZooCase("vits", LIB, _vits, _fwd_ids),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_transformers(case: ZooCase) -> None:
    check_zoo_case(case)
