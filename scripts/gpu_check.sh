#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 8 minutes on one H100): the CUDA tests, VisualMixer's CUDA
# benchmark against the gather floor, and a short run of the authors' 224-px protocol, clear against VisualMixer
# (ResNet-18 at 224 px, bf16, 10% of CIFAR-10, 2 rounds). Figures and logs go to ${OUT:-outputs/gpu_check}.
# Usage (on the GPU machine, from the repository root, with the venv active):
#   FL_VMIX_DATA=../shared/data OUT=outputs/gpu_check bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
status=0
timeout 180 python -m pytest -q -p no:cacheprovider -k "cuda or CUDA" fl_vmix >"$OUT/cuda_tests.log" 2>&1 || status=$?
tail -3 "$OUT/cuda_tests.log"
timeout 120 python scripts/bench_vmix.py --device cuda --repeats 10 >"$OUT/bench_vmix_cuda.log" 2>&1 || status=$?
tail -15 "$OUT/bench_vmix_cuda.log"
timeout 300 python scripts/bench_gpu.py --preset prototype_cifar10 --model resnet18 --amp bf16 --data-fraction 0.1 \
  --rounds 2 --data "${FL_VMIX_DATA:-../shared/data}" --out "$OUT/prototype" >"$OUT/bench_gpu.log" 2>&1 || status=$?
tail -6 "$OUT/bench_gpu.log"
exit "$status"
