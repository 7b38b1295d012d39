#!/usr/bin/env bash
# Train a VAE and publish it as the next version of models/NAME (the compose `train` profile runs this).
#   vae-train-and-export NAME [training flags...]      e.g. vae-train-and-export mnist --epochs 30 --arch conv
# Uses every visible GPU: one process per GPU under torchrun (DDP, NCCL) when there are several, a single
# process otherwise (CUDA when present, else CPU). NPROC overrides the process count; TRAIN_DEVICE the device
# (cpu runs DDP over gloo). Data and runs go to $VAE_DATA_DIR and /work/runs; the exported version lands in
# $VAE_MODELS_DIR with its manifest and hashes, where the service picks it up on its next start.
set -euo pipefail
name=${1:?usage: vae-train-and-export NAME [training flags...]}
shift
data_dir=${VAE_DATA_DIR:-/work/data}
models_dir=${VAE_MODELS_DIR:-/app/models}
run_dir=${RUNS_DIR:-/work/runs}/$name-$(date -u +%Y%m%dT%H%M%SZ)
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
device=${TRAIN_DEVICE:-$([[ $gpus -gt 0 ]] && echo cuda || echo cpu)}
nproc=${NPROC:-$([[ $device == cuda && $gpus -gt 1 ]] && echo "$gpus" || echo 1)}

python -m training data --data-dir "$data_dir"
train_args=(train --run-dir "$run_dir" --data-dir "$data_dir" --device "$device" --no-progress "$@")
if [[ $nproc -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$nproc" -m training "${train_args[@]}" --distributed
else
  python -m training "${train_args[@]}"
fi
python -m training export --checkpoint "$run_dir/last.pt" --models-dir "$models_dir" --name "$name" \
  --data-dir "$data_dir" --device "$device"
