#!/usr/bin/env bash
# Install everything the tests need into fresh virtual environments and run the whole suite:
# lint, type check, the core tests (torch 2.13.0) and the model zoo (torch 2.14.1 for the
# libraries that need it). Used as-is by CI (.ci/run).
set -euo pipefail
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
.venv/bin/pip install -q "${FIND[@]}" torch==2.13.0 -e ".[test,dev]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q --durations=15 tests "${ZOO_TESTS[@]/#/--ignore=}"

if [ -f tools/zoo-requirements.txt ]; then
  echo "== zoo environment (torch 2.14.1: torchvision, timm, torchaudio, torchrec)"
  "$PY" -m venv .venv-zoo
  .venv-zoo/bin/pip install -q --upgrade pip
  .venv-zoo/bin/pip install -q "${FIND[@]}" -r tools/zoo-requirements.txt
  .venv-zoo/bin/pip install -q --no-deps -r tools/zoo-requirements-nodeps.txt
  .venv-zoo/bin/pip install -q --no-deps -e .
  .venv-zoo/bin/pytest -q --durations=15 "${ZOO_TESTS[@]}"
fi
