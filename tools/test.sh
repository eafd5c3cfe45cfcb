#!/usr/bin/env bash
# Install everything the tests need into fresh virtual environments and run them. Used as-is by
# CI (.ci/run), which runs the whole suite; `--core` skips the model zoo. `--help` says more.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash tools/test.sh [--core] [--help]

Makes fresh virtual environments (.venv, and .venv-zoo for the zoo) with what the tests need, and
runs the tests. Times are for a 2-core machine with a warm pip cache; downloads for an empty one.

  (no option)  everything CI runs: lint (ruff), type check (mypy), the core tests on torch
               2.13.0 (CPU build), then the model zoo (torchvision, timm, torchaudio, torchrec)
               in a second environment on torch 2.14.1. About 15 min. Downloads about 0.6 GB
               for the core and 5.9 GB for the zoo (PyPI's torch 2.14.1 for Linux is a CUDA
               build, with 16 nvidia-* packages; see TORCH_INDEX_URL).
  --core       lint, type check and the core tests only, no zoo environment. About 5-6 min
               (install about 1.5 min, tests 4-5 min of which the examples take about 1 and
               the sharding libraries' tests about 1). Downloads about 0.6 GB (torch 2.13.0's
               CPU wheel is 190 MB; triton, which torchtitan imports, 286 MB), 2.4 GB
               installed.
  -h, --help   print this and exit.

Environment:
  PYTHON           interpreter for the environments (default: python3.11)
  PIP_FIND_LINKS   folder of wheels pip may take packages from (default: /opt/wheels if present)
  TORCH_INDEX_URL  index to take the zoo's torch, torchvision and torchaudio from, before the
                   rest: https://download.pytorch.org/whl/cpu gives CPU builds (torch's is
                   a few hundred MB; not measured here, where that index cannot be reached)
EOF
}

CORE_ONLY=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --core) CORE_ONLY=1 ;;
    *) echo "tools/test.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
# The CPU build of torch 2.13.0 lies on this machine's disk; elsewhere pip takes it from PyPI.
FIND=()
if [ -d "${PIP_FIND_LINKS:-/opt/wheels}" ]; then FIND=(--find-links "${PIP_FIND_LINKS:-/opt/wheels}"); fi

# The zoo libraries that need torch 2.14.1 run in their own environment (below), not here.
ZOO_TESTS=(tests/zoo/test_torchvision.py tests/zoo/test_timm.py tests/zoo/test_torchaudio.py
  tests/zoo/test_torchrec.py)

echo "== core environment (torch 2.13.0)"
"$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "${FIND[@]}" torch==2.13.0 -e ".[test,dev,clients]"
.venv/bin/pip install -q --no-deps torchtitan==0.3.0  # its imports are in the clients extra
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q --durations=15 tests "${ZOO_TESTS[@]/#/--ignore=}"

if [ "$CORE_ONLY" = 1 ]; then exit 0; fi
echo "== zoo environment (torch 2.14.1: torchvision, timm, torchaudio, torchrec)"
"$PY" -m venv .venv-zoo
.venv-zoo/bin/pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  grep -E '^torch(vision|audio)?==' tools/zoo-requirements.txt \
    | xargs .venv-zoo/bin/pip install -q --index-url "$TORCH_INDEX_URL"
fi
.venv-zoo/bin/pip install -q "${FIND[@]}" -r tools/zoo-requirements.txt
.venv-zoo/bin/pip install -q --no-deps -r tools/zoo-requirements-nodeps.txt
.venv-zoo/bin/pip install -q --no-deps -e .
.venv-zoo/bin/pytest -q --durations=15 "${ZOO_TESTS[@]}"
