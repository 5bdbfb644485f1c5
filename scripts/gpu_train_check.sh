#!/usr/bin/env bash
# One prepared GPU check of `cafusion train` on CUDA: mixed precision (bf16 autocast, fp16 with grad
# scaling), fp32, resume, a timm model, 1D signals, and torchrun with nccl. Tiny generated data; a few
# seconds each. Usage (repo root, on a CUDA machine): bash scripts/gpu_train_check.sh OUT_DIR
set -euo pipefail
out=${1:-${OUT:-bench-results/gpu-train}}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py - "$out" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
y = rng.integers(0, 4, 512)
x = rng.normal(size=(512, 3, 16, 16)).astype("float32") + y[:, None, None, None] * 0.5
np.savez(f"{sys.argv[1]}/images.npz", x=x, y=y)
s = rng.normal(size=(512, 2, 64)).astype("float32") + y[:, None, None] * 0.5
np.savez(f"{sys.argv[1]}/signals.npz", x=s, y=y)
PY
device=${DEVICE:-cuda}
train() { echo "== cafusion train $*"; $py -m cafusion train --device "$device" --no-progress "$@"; }
train --data "$out/images.npz" --epochs 2 --precision bf16 --attn-opt learnable_temperature=true --out "$out/bf16"
train --data "$out/images.npz" --epochs 2 --precision fp16 --out "$out/fp16"
train --data "$out/images.npz" --epochs 2 --precision fp32 --attention caft_sum --out "$out/fp32"
train --data "$out/images.npz" --epochs 3 --precision bf16 --attn-opt learnable_temperature=true --out "$out/bf16" --resume
train --data "$out/images.npz" --epochs 1 --model timm:resnet10t --out "$out/timm"
train --data "$out/signals.npz" --epochs 2 --out "$out/signals"
echo "== torchrun nccl, 1 process"
$py -m torch.distributed.run --standalone --nproc_per_node 1 -m cafusion train --device "$device" --no-progress \
  --data "$out/images.npz" --epochs 1 --out "$out/ddp"
echo "gpu train check: all runs finished"
