#!/usr/bin/env bash
# The checks to run on a lent GPU machine, in one call (README, "GPU"): the CUDA tests, inference speed and
# throughput on the GPU, training throughput on one GPU, and gloo scaling over the machine's CPU cores.
# Usage (repo root, python3 with torch + CUDA; pydicom and platformdirs on PYTHONPATH): bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_inference.py tests/test_distributed.py tests/test_manifest.py \
  2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 90 python3 benchmarks/speed.py --device cuda --runs 20 2>&1 | tee "$OUT/speed_cuda.txt"
timeout 90 python3 benchmarks/throughput.py --devices cuda 2>&1 | tee "$OUT/throughput_cuda.txt"
timeout 120 python3 benchmarks/train_scaling.py --procs 1 --device cuda --batch-per-proc 16 --steps 30 \
  --json "$OUT/train_scaling_cuda.json" 2>&1 | tee "$OUT/train_scaling_cuda.txt"
timeout 120 python3 benchmarks/train_scaling.py --procs 1 --device cuda --batch-per-proc 16 --steps 30 --workers 4 \
  2>&1 | tee -a "$OUT/train_scaling_cuda.txt"
timeout 120 python3 benchmarks/gpu_profile.py 2>&1 | tee "$OUT/gpu_profile.txt"
timeout 180 python3 benchmarks/train_scaling.py --procs 1 2 4 8 --device cpu --steps 12 \
  --json "$OUT/train_scaling_cpu16.json" 2>&1 | tee "$OUT/train_scaling_cpu16.txt"
