#!/usr/bin/env bash
# Regenerate docs/zoo.md: run every zoo case in the environment its library needs (the core
# .venv for transformers and diffusers, .venv-zoo for the torch 2.14.1 libraries; both made by
# tools/test.sh) and render one table from docs/zoo/*.json. About 25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python tests/zoo/make_table.py tests/zoo/test_transformers_text.py tests/zoo/test_transformers_media.py tests/zoo/test_diffusers.py
.venv-zoo/bin/python tests/zoo/make_table.py tests/zoo/test_torchvision.py tests/zoo/test_timm.py \
  tests/zoo/test_torchaudio.py tests/zoo/test_torchrec.py
