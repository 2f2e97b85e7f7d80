#!/usr/bin/env bash
# The first run on a GPU machine, in one command: set up .venv with the test extras (onnxruntime-gpu where an
# NVIDIA GPU is, see scripts/bootstrap.sh), then `vbp doctor --gpu`: installed builds and providers, why CUDA
# is not used if it is not, the GPU tests, a CUDA-graph run of NetSVF with its node placement, the GPU-vs-CPU
# mask difference with and without TF32, `vbp bench --quick` on ort-cuda and torch-cuda; one JSON file in
# out/gpu-check/. Without a GPU it says so, runs the CPU parts and exits 0. bench/README.md explains the numbers.
# Usage: bash scripts/gpu-check.sh [vbp doctor options, e.g. --out check.json --no-bench]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
. .venv/bin/activate
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
exec vbp doctor --gpu "$@"
