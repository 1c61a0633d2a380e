#!/usr/bin/env bash
# A GPU chunk of the default denoiser, for a session that is lent a device (issue 11's PSNR line at 25%): the same
# recipe as the CPU chunks (clean targets, then three LIDnet rounds; benchmarks/results/clean_target_prereg.md), on
# fresh simulated slices and many more steps. One device call of about 9.5 minutes:
#   0. issue 11's GPU speed line first (the shipped unet's slices/s, alone and through the pipeline; target > 300),
#      at most 30 s each, so a session with one device call measures it too;
#   1. simulate N slices with clean targets in PROCS parallel shards on the device's CPUs (new seeds 7001...);
#   2. pixel-loss steps from the shipped default on the GPU (the stage checkpoints every 500 steps; `timeout`
#      stops it with SIGTERM, which keeps a checkpoint at the step under way, if it runs past TRAIN_S);
#   3. the three LIDnet rounds from its result;
#   4. both runs' cards and weights into $OUT (a few MB), to be chosen here, on this machine, under a rule written
#      before the call, with scripts/compare_candidates.py and benchmarks/tissue_loss_pilot.py, then judged with
#      benchmarks/real_anatomy.py, as every chunk before.
# Usage (repo root on the device): OUT=... bash benchmarks/gpu_denoiser_chunk.sh   (run tool: timeout_s 560)
# Knobs: N (slices, 480), PROCS (16), STEPS (pixel steps, 8000), BATCH (32), TRAIN_S (300), ROUNDS_S (120),
# DEVICE (cuda).
# The device image has torch, scipy, scikit-image and safetensors but not platformdirs, pydicom or tqdm: simulate
# and train on dataset folders need none of them (checked on the CPU with those modules blocked, tiny settings).
set -u
OUT=${OUT:-bench-out/gpu-chunk}
N=${N:-480}; PROCS=${PROCS:-16}; STEPS=${STEPS:-8000}; BATCH=${BATCH:-32}; TRAIN_S=${TRAIN_S:-300}; ROUNDS_S=${ROUNDS_S:-120}
DEVICE=${DEVICE:-cuda}; WORK=${WORK:-/tmp/lidnet-gpu-chunk}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export NAPARI_LIDNET_MODEL_DIR="${NAPARI_LIDNET_MODEL_DIR:-$WORK/models}"
LIDNET="python3 -m napari_lidnet.cli"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; } | tee "$OUT/device.txt"
timeout 30 python3 benchmarks/speed.py --device "$DEVICE" --models unet --runs 20 2>&1 | tee "$OUT/speed_cuda.txt"
timeout 30 python3 benchmarks/throughput.py --devices "$DEVICE" --slices 64 --repeats 2 2>&1 | tee "$OUT/throughput_cuda.txt"

t0=$(date +%s)
per=$(( (N + PROCS - 1) / PROCS ))
for k in $(seq 0 $((PROCS - 1))); do
  OMP_NUM_THREADS=1 $LIDNET simulate --out "$WORK/data/part$k" --n "$per" --dose 0.25 --seed $((7001 + k)) \
    --kind abdomen --size 512 --domain random --kinds head,chest,abdomen --negatives 0.3 --target clean \
    > "$WORK/sim$k.log" 2>&1 &
done
wait
echo "simulated $((per * PROCS)) slices in $(( $(date +%s) - t0 )) s" | tee "$OUT/log.txt"
tail -n 2 "$WORK/sim0.log" >> "$OUT/log.txt"

t1=$(date +%s)
timeout -s TERM "$TRAIN_S" $LIDNET train --data "$WORK/data" --out "$WORK/unet-gpu" --denoiser unet --mode pixel \
  --rounds 0 --pretrain-detector-steps 0 --pretrain-denoiser-steps "$STEPS" --lr 2e-4 --init-detector default \
  --init-denoiser default --pretrain-from-init --batch-size "$BATCH" --patch-size 128 --seed 11 --device "$DEVICE" \
  --workers 8 --checkpoint-every 500 2>&1 | tee -a "$OUT/log.txt" | grep -v "pretrain-denoiser [0-9]*/" || true
echo "pixel stage: $(( $(date +%s) - t1 )) s" | tee -a "$OUT/log.txt"

START="$WORK/unet-gpu/best_denoiser"
[ -f "$START.json" ] || START="$WORK/unet-gpu/partial_denoiser"  # stopped before its end: the step it reached
t2=$(date +%s)
timeout -s TERM "$ROUNDS_S" $LIDNET train --data "$WORK/data" --out "$WORK/lidnet-gpu" --mode lidnet --denoiser unet \
  --init-denoiser "$START" --init-detector default --pretrain-denoiser-steps 0 --pretrain-detector-steps 0 \
  --rounds 3 --denoiser-steps 100 --detector-steps 50 --lr 1.25e-3 --detector-lr 1e-3 --batch-size 8 \
  --patch-size 128 --seed 0 --device "$DEVICE" --workers 8 2>&1 | tee -a "$OUT/log.txt" | grep -v "round[0-9]-" || true
echo "LIDnet rounds: $(( $(date +%s) - t2 )) s; whole call $(( $(date +%s) - t0 )) s" | tee -a "$OUT/log.txt"

for run in unet-gpu lidnet-gpu; do
  mkdir -p "$OUT/$run"
  cp "$WORK/$run"/*_denoiser.* "$WORK/$run/state.json" "$OUT/$run/" 2>/dev/null || echo "$run: nothing to copy" | tee -a "$OUT/log.txt"
done
