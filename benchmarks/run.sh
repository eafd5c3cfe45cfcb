#!/usr/bin/env bash
# Run every benchmark and write docs/benchmarks.md and docs/benchmarks.png.
#   bash benchmarks/run.sh                                # the full run (~70-90 min, 2 cores)
#   bash benchmarks/run.sh --models llama-125m --repeats 1   # a quick check of the pipeline
# Needs the main venv of README.md's set-up command (.venv, or MAIN_PYTHON=...); makes the peer
# venv (.venv-peer: colossalai 0.5.0) on first use and adds matplotlib to both venvs.
# Raw results: bench-out/ (git-ignored). Extra arguments go to benchmarks/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
MAIN=${MAIN_PYTHON:-.venv/bin/python}
PEER=${PEER_VENV:-.venv-peer}
OUT=${BENCH_OUT:-bench-out}

if ! "$MAIN" -c "import dormant, transformers, diffusers, accelerate" 2>/dev/null; then
  echo "run.sh: $MAIN cannot import dormant, transformers, diffusers and accelerate;" >&2
  echo "  make it with: python3.11 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[test]'" >&2
  exit 1
fi
"$MAIN" -c "import matplotlib" 2>/dev/null || "$MAIN" -m pip install -q matplotlib
bash benchmarks/setup_peer_venv.sh "$PEER"

mkdir -p "$OUT"
rm -rf "$OUT/results.jsonl" "$OUT/digests" "$OUT/sharded.md" "$OUT/from_pretrained.md"
# Imports are paid once per venv (the measurements fork from a template process); keep their
# bytecode outside the venvs so later runs import faster.
export PYTHONPYCACHEPREFIX="$PWD/$OUT/pycache"
unset PYTHONDONTWRITEBYTECODE
"$MAIN" benchmarks/bench.py --env main --out "$OUT" "$@"
"$PEER/bin/python" benchmarks/bench.py --env peer --out "$OUT" "$@"
"$MAIN" benchmarks/sharded_boost.py --out "$OUT/sharded.md"
"$MAIN" benchmarks/from_pretrained.py --out "$OUT/from_pretrained.md"
"$MAIN" benchmarks/scale.py --out "$OUT/scale.md"
"$MAIN" benchmarks/report.py --out "$OUT" --docs docs --elapsed "$(($(date +%s) - start))"
echo "run.sh: done in $(($(date +%s) - start)) s"
