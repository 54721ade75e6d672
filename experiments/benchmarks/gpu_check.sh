#!/usr/bin/env bash
# GPU check (< 5 min on one GPU): two-head vs softmax-only throughput (bf16, channels_last,
# ResNet-50), the same fed by the real input pipeline (is the GPU starved?), and a 2-step DDP
# smoke when more than one GPU is present. Prints one table.
#
#   experiments/benchmarks/gpu_check.sh [--out results.json]   # on a GPU machine
#   experiments/benchmarks/gpu_check.sh --cpu --quick           # the script itself, on CPU
#
# Without CUDA (and without --cpu) it stops with one paragraph saying so (exit status 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PYTHON" -m experiments.benchmarks.gpu_check "$@"
