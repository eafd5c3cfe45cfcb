#!/usr/bin/env bash
# Make the peer venv: colossalai 0.5.0 (PyPI) on torch 2.13.0 CPU with transformers 4.51.3, for
# benchmarks/bench.py's "colossalai" rows. colossalai declares torch<=2.5.1, so it gets its own
# venv and is installed without its dependencies (recipe: shared/PEERS.md). dormant is not
# installed there. Idempotent: does nothing if the venv already imports colossalai.lazy.
# Usage: bash benchmarks/setup_peer_venv.sh [VENV_DIR]   (default: .venv-peer)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-peer}
PY=${PYTHON:-python3.11}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import colossalai.lazy, matplotlib" 2>/dev/null
then
  echo "peer venv $VENV: ready"
  exit 0
fi
echo "== peer venv $VENV: colossalai 0.5.0, torch 2.13.0, transformers 4.51.3"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" download -q --no-deps colossalai==0.5.0 -d "$tmp"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation "$tmp"/colossalai-0.5.0.tar.gz
# colossalai's own dependencies (its declared torch pin is ignored: torch stays 2.13.0), plus
# diffusers for the UNet row (0.32.2: newer ones need huggingface-hub>=1 or peft>=0.17, which
# transformers 4.51.3 and peft 0.13.2 refuse) and matplotlib for plotting; psutil for the harness.
"$VENV/bin/pip" install -q torch==2.13.0 numpy tqdm psutil packaging rich click contexttimer \
  einops pydantic safetensors "transformers==4.51.3" "peft==0.13.2" "diffusers==0.32.2" matplotlib
"$VENV/bin/python" -c "import torch, colossalai.lazy, transformers; \
print('peer venv ready: torch', torch.__version__, 'transformers', transformers.__version__)"
