"""Model zoo: every builder of ``torchvision.models.list_models()``.

Classification, detection and segmentation, and also video, optical flow and the quantizable
classification models (built in float, ``quantize=False``). Each model is built eagerly and
lazily from the same seed; every parameter and buffer and one forward output (eval mode, small
input) must be bit-identical. ``weights=None`` everywhere and ``weights_backbone=None`` for
detection and segmentation (no downloads); detection models get a small ``min_size``/``max_size``
so that their forward pass stays cheap on a CPU (the architecture is unchanged).
"""

from __future__ import annotations

import functools

import pytest

torchvision = pytest.importorskip("torchvision")

import torch  # noqa: E402
from helpers import ZooCase, check_zoo_case  # noqa: E402
from torchvision import models  # noqa: E402

LIBRARY = "torchvision"

# Classification models whose input size is fixed by the architecture (position embeddings,
# window partitions) or bounded below; everything else runs on 64x64.
_IMAGE_SIZE = {"inception_v3": 80, "maxvit_t": 224}
_IMAGE_SIZE.update({name: 224 for name in models.list_models(module=models) if "vit_" in name})

# Detection: resize to at most 160 pixels inside the model (the architecture is unchanged).
_SMALL_DETECTION = {"min_size": 128, "max_size": 160}
_FIXED_SIZE_DETECTION = {"ssd300_vgg16", "ssdlite320_mobilenet_v3_large"}


def _build(name: str, **kwargs: object) -> torch.nn.Module:
    return models.get_model(name, weights=None, **kwargs)


def _classify(size: int, model: torch.nn.Module) -> object:
    return model(torch.randn(1, 3, size, size))


def _detect(model: torch.nn.Module) -> object:
    return model([torch.rand(3, 120, 150)])


def _segment(model: torch.nn.Module) -> object:
    return model(torch.randn(1, 3, 64, 64))


def _video(frames: int, size: int, model: torch.nn.Module) -> object:
    return model(torch.randn(1, 3, frames, size, size))


# MViT's position embeddings fix its input (16 frames of 224x224); S3D's final pooling needs
# 16 frames of 224x224 too. The others take 4 frames of 64x64.
_VIDEO_SIZE = {"mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224), "s3d": (16, 224)}


def _flow(model: torch.nn.Module) -> object:
    # 128x128 is the smallest input whose correlation pyramid has four levels.
    return model(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), num_flow_updates=2)


def _cases() -> list[ZooCase]:
    cases = []
    for name in models.list_models(module=models):
        cases.append(
            ZooCase(
                name,
                LIBRARY,
                functools.partial(_build, name),
                functools.partial(_classify, _IMAGE_SIZE.get(name, 64)),
            )
        )
    for name in models.list_models(module=models.detection):
        kwargs: dict[str, object] = {"weights_backbone": None}
        if name not in _FIXED_SIZE_DETECTION:
            kwargs.update(_SMALL_DETECTION)
        cases.append(ZooCase(name, LIBRARY, functools.partial(_build, name, **kwargs), _detect))
    for name in models.list_models(module=models.segmentation):
        build = functools.partial(_build, name, weights_backbone=None)
        cases.append(ZooCase(name, LIBRARY, build, _segment))
    for name in models.list_models(module=models.video):
        forward = functools.partial(_video, *_VIDEO_SIZE.get(name, (4, 64)))
        cases.append(ZooCase(name, LIBRARY, functools.partial(_build, name), forward))
    for name in models.list_models(module=models.optical_flow):
        cases.append(ZooCase(name, LIBRARY, functools.partial(_build, name), _flow))
    for name in models.list_models(module=models.quantization):
        build = functools.partial(_build, name, quantize=False)
        size = _IMAGE_SIZE.get(name.removeprefix("quantized_"), 64)
        cases.append(ZooCase(name, LIBRARY, build, functools.partial(_classify, size)))
    return cases


CASES: list[ZooCase] = _cases()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torchvision(case: ZooCase) -> None:
    check_zoo_case(case)
