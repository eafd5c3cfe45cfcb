"""Model zoo: torchaudio models (speech recognition, synthesis, separation).

Each model is built eagerly and lazily from the same seed; every parameter and buffer and one
forward output (eval mode, a fraction of a second of audio) must be bit-identical. Factory
functions (``wav2vec2_base``, ``hubert_base``, ``conv_tasnet_base``, ``emformer_rnnt_base``) are
used with their defaults; models without one get the configuration of torchaudio's own
pipelines or docs, kept small where the class takes sizes.
"""

from __future__ import annotations

import pytest

torchaudio = pytest.importorskip("torchaudio")

import torch  # noqa: E402
from helpers import ZooCase, check_zoo_case  # noqa: E402
from torchaudio import models  # noqa: E402

LIBRARY = "torchaudio"


def _waveform(model: torch.nn.Module) -> object:
    return model(torch.randn(1, 1600))


def _conformer(model: torch.nn.Module) -> object:
    return model(torch.randn(2, 20, 80), torch.tensor([20, 15]))


def _emformer(model: torch.nn.Module) -> object:
    # segment_length 4 and right context 1: 12 frames plus the right context.
    return model(torch.randn(2, 13, 80), torch.tensor([13, 9]))


def _emformer_rnnt(model: torch.nn.Module) -> object:
    sources = torch.randn(1, 24, 80)
    targets = torch.randint(0, 64, (1, 5), dtype=torch.int32)
    return model(sources, torch.tensor([24]), targets, torch.tensor([5]))


def _wav2letter(model: torch.nn.Module) -> object:
    return model(torch.randn(1, 1, 4000))


def _wavernn(model: torch.nn.Module) -> object:
    # hop_length 200, kernel_size 5: 10 spectrogram frames give (10 - 5 + 1) * 200 samples.
    waveform = torch.randn(1, 1, 1200)
    specgram = torch.randn(1, 1, 128, 10)
    return model(waveform, specgram)


def _tacotron2(model: torch.nn.Module) -> object:
    # Teacher-forced decoding (the prenet's dropout is always on, so this also checks that the
    # RNG is seeded alike for both models).
    tokens = torch.randint(0, 148, (2, 12))
    mels = torch.randn(2, 80, 16)
    return model(tokens, torch.tensor([12, 9]), mels, torch.tensor([16, 11]))


def _deepspeech(model: torch.nn.Module) -> object:
    return model(torch.randn(1, 1, 30, 80))


def _conv_tasnet(model: torch.nn.Module) -> object:
    return model(torch.randn(1, 1, 800))


CASES: list[ZooCase] = [
    ZooCase("wav2vec2_base", LIBRARY, models.wav2vec2_base, _waveform),
    ZooCase("hubert_base", LIBRARY, models.hubert_base, _waveform),
    ZooCase(
        "conformer",
        LIBRARY,
        lambda: models.Conformer(
            input_dim=80, num_heads=4, ffn_dim=256, num_layers=4, depthwise_conv_kernel_size=31
        ),
        _conformer,
    ),
    ZooCase(
        "emformer",
        LIBRARY,
        lambda: models.Emformer(
            input_dim=80,
            num_heads=4,
            ffn_dim=256,
            num_layers=4,
            segment_length=4,
            left_context_length=8,
            right_context_length=1,
            max_memory_size=4,
        ),
        _emformer,
    ),
    ZooCase(
        "emformer_rnnt_base",
        LIBRARY,
        lambda: models.emformer_rnnt_base(num_symbols=64),
        _emformer_rnnt,
    ),
    ZooCase("wav2letter", LIBRARY, lambda: models.Wav2Letter(num_classes=40), _wav2letter),
    ZooCase(
        "wavernn",
        LIBRARY,
        lambda: models.WaveRNN(upsample_scales=[5, 5, 8], n_classes=512, hop_length=200),
        _wavernn,
    ),
    ZooCase("tacotron2", LIBRARY, models.Tacotron2, _tacotron2),
    ZooCase("deepspeech", LIBRARY, lambda: models.DeepSpeech(n_feature=80), _deepspeech),
    ZooCase("conv_tasnet_base", LIBRARY, models.conv_tasnet_base, _conv_tasnet),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torchaudio(case: ZooCase) -> None:
    check_zoo_case(case)
