#!/usr/bin/env bash
# The GPU measurements the open issues still lack, cheapest first, in one device call of about 4 minutes:
#   issue 11: the shipped denoiser's slices/s on the GPU (target > 300), alone and through the pipeline;
#   issue 15: the wall time of a 100-slice 512 x 512 `lidnet adapt` job on the GPU (target < 10 minutes).
# Results go to $OUT (the device tool brings them back) and benchmarks/results/adapt_cuda_100x512.{md,json}.
# A session's device time is 15 minutes, machine start included: this call first (timeout_s 420; its steps are
# capped at 60 + 60 + 270 s), then issue 12's call from benchmarks/reproduce_lidnet.py's docstring with
# --budget-s 360 --reserve-s 60 (timeout_s 420). Every step's whole output lands in $OUT as it runs (tee).
# Usage (repo root, python3 with torch + CUDA and the plugin's requirements): OUT=... bash benchmarks/gpu_open_issues.sh
set -u
OUT=${OUT:-bench-out/gpu-open}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
# The device image has torch, scipy, scikit-image and safetensors but not platformdirs, pydicom or tqdm: nothing
# here needs the latter two, and a model folder given by the environment spares platformdirs (checked 2026-12-02 on
# the CPU with those modules blocked: speed, throughput, adapt_benchmark and reproduce_lidnet --preset hard ran).
export NAPARI_LIDNET_MODEL_DIR="${NAPARI_LIDNET_MODEL_DIR:-/tmp/lidnet-models}"
nvidia-smi -L | tee "$OUT/device.txt"
timeout 60 python3 benchmarks/speed.py --device cuda --models unet,detector --runs 20 2>&1 | tee "$OUT/speed_cuda.txt"
timeout 60 python3 benchmarks/throughput.py --devices cuda --slices 64 2>&1 | tee "$OUT/throughput_cuda.txt"
timeout 270 python3 benchmarks/adapt_benchmark.py --slices 100 --size 512 --pixel-mm 0.7 --test-slices 8 \
  --methods default 'A neighbours' --no-real --device cuda --tag cuda_100x512 2>&1 | tee "$OUT/adapt_cuda.txt" | tail -30
cp benchmarks/results/adapt_cuda_100x512.* "$OUT/" 2>/dev/null || echo "adapt benchmark wrote no results" | tee -a "$OUT/adapt_cuda.txt"
