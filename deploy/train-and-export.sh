#!/usr/bin/env bash
# Train a VAE and publish it as the next version of models/NAME (the compose `train` profile runs this).
#   vae-train-and-export NAME [training flags...]      e.g. vae-train-and-export mnist --latent-dim 32 --epochs 30
# A new version of a served model must keep its latent size (the service refuses a change: clients store
# embeddings); the served mnist is 32-D, so train it with --latent-dim 32 or publish under a new NAME.
# Uses every visible GPU: one process per GPU under torchrun (DDP, NCCL) when there are several, a single
# process otherwise (CUDA when present, else CPU). NPROC overrides the process count; TRAIN_DEVICE the device
# (cpu runs DDP over gloo). Data and runs go to $VAE_DATA_DIR and /work/runs; the exported version lands in
# $VAE_MODELS_DIR with its manifest and hashes; a running service loads, verifies and warms it within its
# reload interval (VAE_RELOAD_INTERVAL_S, 5 s) and serves it to unpinned requests: no restart.
# EXPORT_ARGS adds export flags, e.g. EXPORT_ARGS="--k 0" to skip the IWAE evaluation on a quick run.
set -euo pipefail
name=${1:?usage: vae-train-and-export NAME [training flags...]}
shift
data_dir=${VAE_DATA_DIR:-/work/data}
models_dir=${VAE_MODELS_DIR:-/app/models}
run_dir=${RUNS_DIR:-/work/runs}/$name-$(date -u +%Y%m%dT%H%M%SZ)
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
device=${TRAIN_DEVICE:-$([[ $gpus -gt 0 ]] && echo cuda || echo cpu)}
nproc=${NPROC:-$([[ $device == cuda && $gpus -gt 1 ]] && echo "$gpus" || echo 1)}

# Only the data set this run trains on (the --dataset flag or the --config file, else TrainConfig's default).
dataset=$(python - "$@" <<'PY'
import json, sys
from training.config import TrainConfig
args, dataset = sys.argv[1:], TrainConfig().dataset
for i, a in enumerate(args):
    if a == "--config" and i + 1 < len(args):
        dataset = json.load(open(args[i + 1])).get("dataset", dataset)
for i, a in enumerate(args):
    if a.startswith("--dataset="):
        dataset = a.split("=", 1)[1]
    elif a == "--dataset" and i + 1 < len(args):
        dataset = args[i + 1]
print(dataset)
PY
)
if [[ $dataset == mnist || $dataset == fashion || $dataset == emoji ]]; then
  python -m training data --dataset "$dataset" --data-dir "$data_dir"
fi  # idx and folder data sets are the user's own folders: nothing to fetch
train_args=(train --run-dir "$run_dir" --data-dir "$data_dir" --device "$device" --no-progress "$@")
if [[ $nproc -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$nproc" -m training "${train_args[@]}" --distributed
else
  python -m training "${train_args[@]}"
fi
read -r -a export_args <<<"${EXPORT_ARGS:-}"
python -m training export --checkpoint "$run_dir/last.pt" --models-dir "$models_dir" --name "$name" \
  --data-dir "$data_dir" --device "$device" "${export_args[@]}"
