#!/usr/bin/env bash
# Reproduce the committed default models: fetch data, train, evaluate, export (with ONNX parity checks), verify.
#   bash scripts/make_models.sh [DATA_DIR] [OUT_DIR]
# OUT_DIR defaults to runs/reproduced-models so the committed, immutable versions in models/ are never touched;
# the script ends by printing reproduced vs committed test metrics. To publish over models/ deliberately:
#   FORCE=1 bash scripts/make_models.sh data models
set -euo pipefail
DATA_DIR=${1:-data}
OUT_DIR=${2:-runs/reproduced-models}
PY=${PYTHON:-.venv/bin/python}
K=${EVAL_K:-1000}  # IWAE samples for the recorded test NLL (docs/likelihood-protocol.md)
FORCE_FLAG=()
[[ "${FORCE:-0}" == 1 ]] && FORCE_FLAG=(--force)

"$PY" -m training data --data-dir "$DATA_DIR"

# models/mnist/1: convolutional VAE, 32-D latent, dynamically binarized MNIST (the likelihood papers' protocol),
# 90 epochs with a cosine learning rate and 5 epochs of KL warm-up: about 18 minutes on 2 CPU cores.
"$PY" -m training train --run-dir runs/models/mnist --data-dir "$DATA_DIR" --no-progress \
  --arch conv --hidden-dims 256 --latent-dim 32 --activation elu --binarize \
  --epochs 90 --lr-schedule cosine --kl-warmup-epochs 5 --eval-every 10 --threads 2
"$PY" -m training export --checkpoint runs/models/mnist/last.pt --models-dir "$OUT_DIR" --name mnist \
  --version 1 --k "$K" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 32-D latent, dynamically binarized MNIST"

# models/mnist/2 (the served default): mnist/1's network with a VampPrior of 100 learned pseudo-inputs
# (Tomczak and Welling 2018), 85 epochs: about 52 minutes on 2 quiet CPU cores (37 s per epoch). Its test NLL
# is recorded at k = 1000 on the 10k test images (k = 5000 on a subset measures the gap; docs/ablation.md).
"$PY" -m training train --run-dir runs/models/mnist-2 --data-dir "$DATA_DIR" --no-progress \
  --arch conv --hidden-dims 256 --latent-dim 32 --activation elu --binarize --prior vamp --vamp-components 100 \
  --epochs 85 --lr-schedule cosine --kl-warmup-epochs 5 --eval-every 10 --threads 2 --seed 1
"$PY" -m training export --checkpoint runs/models/mnist-2/last.pt --models-dir "$OUT_DIR" --name mnist \
  --version 2 --k "$K" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 32-D latent, VampPrior (100 pseudo-inputs), dynamically binarized MNIST"

# models/mnist-2d/1: a 2-D latent MLP VAE for the manifold view (Kingma and Welling, fig. 4): about 4 minutes.
"$PY" -m training train --run-dir runs/models/mnist-2d --data-dir "$DATA_DIR" --no-progress \
  --arch mlp --hidden-dims 512 512 --latent-dim 2 --activation elu --binarize \
  --epochs 60 --lr-schedule cosine --eval-every 10 --threads 2
"$PY" -m training export --checkpoint runs/models/mnist-2d/last.pt --models-dir "$OUT_DIR" --name mnist-2d \
  --version 1 --k "$K" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "2-D latent MLP VAE on dynamically binarized MNIST, for the latent manifold"

# models/fashion/1: the same convolutional VAE on Fashion-MNIST (Debian dataset-fashion-mnist) with the
# discretized logistic mixture likelihood (5 components), whose NLL is a code length in bits/dim; 4 epochs,
# about 25 minutes on a shared 2-core CPU at nice 10. IWAE with k = 10 on all 10k test images keeps the CPU
# evaluation under 10 minutes (docs/datasets.md).
"$PY" -m training train --run-dir runs/models/fashion --data-dir "$DATA_DIR" --no-progress \
  --dataset fashion --arch conv --hidden-dims 256 --latent-dim 32 --activation elu \
  --likelihood discretized_logistic --epochs 4 --lr-schedule cosine --kl-warmup-epochs 1 --eval-every 2 \
  --threads 1
"$PY" -m training export --checkpoint runs/models/fashion/last.pt --models-dir "$OUT_DIR" --name fashion \
  --version 1 --k "${EVAL_K_FASHION:-10}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 32-D latent, Fashion-MNIST, discretized logistic mixture"

# models/emoji/1: RGB 32x32 emoji (Noto + Twemoji, split by emoji), discretized logistic mixture; 32x32 rather
# than 64x64 because a 2-core CPU trains it in about 40 minutes (64x64 costs 4x per epoch). IWAE k = 100.
"$PY" -m training train --run-dir runs/models/emoji --data-dir "$DATA_DIR" --no-progress \
  --dataset emoji --image-size 32 --channels 3 --arch conv --conv-channels 32 64 128 --hidden-dims 512 \
  --latent-dim 64 --activation elu --likelihood discretized_logistic --epochs 20 --lr-schedule cosine \
  --kl-warmup-epochs 2 --eval-every 5 --threads 1
"$PY" -m training export --checkpoint runs/models/emoji/last.pt --models-dir "$OUT_DIR" --name emoji \
  --version 1 --k "${EVAL_K_EMOJI:-100}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 64-D latent, 32x32 RGB emoji (Noto + Twemoji), discretized logistic mixture"

# models/emoji/2 (the served emoji default): emoji/1's network with PixelCNN++'s linear coupling of the colour
# channels (G and B locations depend on the preceding channels), 80 epochs: about 17 minutes on 2 quiet cores.
"$PY" -m training train --run-dir runs/models/emoji-2 --data-dir "$DATA_DIR" --no-progress \
  --dataset emoji --image-size 32 --channels 3 --arch conv --conv-channels 32 64 128 --hidden-dims 512 \
  --latent-dim 64 --activation elu --likelihood discretized_logistic --channel-coupling --epochs 80 \
  --lr-schedule cosine --kl-warmup-epochs 2 --eval-every 5 --threads 2 --seed 1
"$PY" -m training export --checkpoint runs/models/emoji-2/last.pt --models-dir "$OUT_DIR" --name emoji \
  --version 2 --k "${EVAL_K_EMOJI:-100}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 64-D latent, 32x32 RGB emoji, discretized logistic mixture with channel coupling"

# models/emoji/3: emoji/2's network and likelihood, decoded as four pixel groups (the
# pixels of each 2x2 cell in turn, each conditioned on z and the groups before; Reed et al. 2017) with
# neighbour anchors (mixture components at the decoded neighbours' colours), 60 epochs: about 45 minutes on 2
# quiet cores. Exports a third graph, scorer.onnx (x -> -log p(x | z = encoder mean)), for the reconstruct score.
"$PY" -m training train --run-dir runs/models/emoji-4 --data-dir "$DATA_DIR" --no-progress \
  --dataset emoji --image-size 32 --channels 3 --arch conv --conv-channels 32 64 128 --hidden-dims 512 \
  --latent-dim 64 --activation elu --likelihood discretized_logistic --channel-coupling --pixel-groups 4 \
  --neighbour-anchors --epochs 60 --lr-schedule cosine --kl-warmup-epochs 2 --eval-every 5 --threads 2 --seed 1
"$PY" -m training export --checkpoint runs/models/emoji-4/last.pt --models-dir "$OUT_DIR" --name emoji \
  --version 3 --k "${EVAL_K_EMOJI:-100}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 64-D latent, 32x32 RGB emoji, four pixel groups with neighbour anchors"

# models/emoji/4: emoji/3 with the pixel groups two levels deep (the (0,0) pixels of
# each 2x2 cell decoded in the same four groups at half resolution, so seven groups in all), 60 epochs: about 47
# minutes on 2 quiet cores. Its latent closes early and reopens from epoch 15 (models/emoji/4/README.md).
"$PY" -m training train --run-dir runs/models/emoji-11 --data-dir "$DATA_DIR" --no-progress \
  --dataset emoji --image-size 32 --channels 3 --arch conv --conv-channels 32 64 128 --hidden-dims 512 \
  --latent-dim 64 --activation elu --likelihood discretized_logistic --channel-coupling --pixel-groups 7 \
  --neighbour-anchors --epochs 60 --lr-schedule cosine --kl-warmup-epochs 2 --eval-every 5 --threads 2 --seed 1
"$PY" -m training export --checkpoint runs/models/emoji-11/last.pt --models-dir "$OUT_DIR" --name emoji \
  --version 4 --k "${EVAL_K_EMOJI:-100}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 64-D latent, 32x32 RGB emoji, seven pixel groups (two levels) with neighbour anchors"

# Novelty calibration files (docs/novelty.md): the statistic on half of each version's test split.
"$PY" -m training.novelty "$OUT_DIR"/mnist/1 "$OUT_DIR"/mnist/2 "$OUT_DIR"/mnist-2d/1 "$OUT_DIR"/fashion/1 \
  "$OUT_DIR"/emoji/3 "$OUT_DIR"/emoji/4 --data-dir "$DATA_DIR"

# models/emoji/5: emoji/4's files and weights plus sampler.onnx, which draws images
# from p(x | z) pixel group by pixel group (docs/samples.md); a minute, no training.
[ -e "$OUT_DIR/emoji/5" ] && [ "${#FORCE_FLAG[@]}" -gt 0 ] && rm -r "$OUT_DIR/emoji/5"
"$PY" -m training.sampler_version "$OUT_DIR/emoji/4" --version 5

# models/emoji/6: emoji/4 fine-tuned for 12 epochs with free bits (each latent unit's KL counted as at least 4
# nats), so that z carries 184 nats instead of 50; about 14 minutes on 2 quiet cores. Exported with its sampler.
"$PY" -m training train --run-dir runs/models/emoji-fb4 --data-dir "$DATA_DIR" --no-progress \
  --dataset emoji --image-size 32 --channels 3 --arch conv --conv-channels 32 64 128 --hidden-dims 512 \
  --latent-dim 64 --activation elu --likelihood discretized_logistic --channel-coupling --pixel-groups 7 \
  --neighbour-anchors --init-from "$OUT_DIR/emoji/4" --free-bits 4 --epochs 12 --lr 3e-4 --lr-schedule cosine \
  --kl-warmup-epochs 0 --eval-every 6 --threads 2 --seed 1
"$PY" -m training export --checkpoint runs/models/emoji-fb4/last.pt --models-dir "$OUT_DIR" --name emoji \
  --version 6 --k "${EVAL_K_EMOJI:-100}" --data-dir "$DATA_DIR" "${FORCE_FLAG[@]}" \
  --description "Convolutional VAE, 64-D latent, 32x32 RGB emoji, seven pixel groups (two levels) with neighbour anchors; emoji/4 fine-tuned 12 epochs with free bits (4 nats per latent unit): 184 nats in z"
"$PY" -m training.novelty "$OUT_DIR/emoji/6" --data-dir "$DATA_DIR"

# models/emoji/7 (the served emoji default): emoji/6's graphs with its aggregate posterior as prior (the
# posteriors of 4,095 training images and N(0, I)), class draws from each class's own components; no training.
[ -e "$OUT_DIR/emoji/7" ] && [ "${#FORCE_FLAG[@]}" -gt 0 ] && rm -r "$OUT_DIR/emoji/7"
"$PY" -m training.aggregate_prior "$OUT_DIR/emoji/6" --data-dir "$DATA_DIR" --version 7 \
  --iwae-k "${EVAL_K_EMOJI:-100}"

"$PY" scripts/compare_models.py "$OUT_DIR" models
