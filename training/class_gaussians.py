"""Class-conditional sampling without retraining: one Gaussian per class fitted to the aggregate posterior.

For class c, q(z | c) = (1/N_c) sum_i q(z | x_i) over its training images is a mixture of the encoder's
Gaussians; the Gaussian with the same first two moments has

    mean_c = avg_i mu_i,    cov_c = Cov_i(mu_i) + avg_i diag(sigma_i^2)

(the law of total variance). Sampling z = mean_c + temperature * L_c eps with L_c L_c^T = cov_c and
eps ~ N(0, I) drawn from numpy's PCG64 with the request's seed gives "a 7", "a sneaker", "a smiling face".

The parameters live beside the graphs in `classes.npz` (vae_contract/classes.py writes, reads and draws from
them), whose sha256 the manifest records like the graphs'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.models import VAE
from vae_contract.classes import ClassGaussians

# Added to every covariance's diagonal so its Cholesky factor exists even for a class of one image.
JITTER = 1e-6


@torch.no_grad()
def fit_class_gaussians(
    model: VAE, x: torch.Tensor, labels: np.ndarray, names: list[str] | tuple[str, ...], batch_size: int = 500
) -> ClassGaussians:
    """Moment-matched Gaussians of each class's aggregate posterior over the images x (N, C, H, W)."""
    model.eval()
    means, variances = [], []
    for start in range(0, len(x), batch_size):
        mu, log_var = model.encode(x[start : start + batch_size])
        means.append(mu.double().cpu())
        variances.append(log_var.double().exp().cpu())
    mu_all, var_all = torch.cat(means).numpy(), torch.cat(variances).numpy()
    d = mu_all.shape[1]
    k = len(names)
    mean = np.zeros((k, d))
    chol = np.zeros((k, d, d))
    counts = np.zeros(k, dtype=np.int64)
    for c in range(k):
        rows = labels == c
        counts[c] = int(rows.sum())
        if counts[c] == 0:  # a class with no training image: its Gaussian is the prior
            chol[c] = np.eye(d)
            continue
        centred = mu_all[rows] - mu_all[rows].mean(axis=0)
        cov = centred.T @ centred / counts[c] + np.diag(var_all[rows].mean(axis=0)) + JITTER * np.eye(d)
        mean[c] = mu_all[rows].mean(axis=0)
        chol[c] = np.linalg.cholesky(cov)
    return ClassGaussians(tuple(names), counts, mean.astype(np.float32), chol.astype(np.float32))


def train_classifier(
    x: torch.Tensor, labels: np.ndarray, classes: int, epochs: int = 3, seed: int = 0
) -> torch.nn.Module:
    """A small MLP classifier on real training images (x float (N, C, H, W) in [0, 1]); only for measuring."""
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 256), nn.ReLU(), nn.Linear(256, classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, labels: np.ndarray) -> float:
    predicted = torch.cat([net(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).numpy()
    return float(np.mean(predicted == np.asarray(labels)))


@torch.no_grad()
def conditional_recognition(
    model: VAE, gaussians: ClassGaussians, net: torch.nn.Module, per_class: int = 100, seed: int = 0
) -> dict[str, float]:
    """Per class, the share of `per_class` conditional samples (decoder mean images) the classifier labels as
    the class asked for; classes without training images are skipped."""
    rates = {}
    for label, name in enumerate(gaussians.names):
        if gaussians.counts[label] == 0:
            continue
        z = torch.from_numpy(gaussians.draw(label, per_class, seed + label))
        predicted = net(model.decode(z)).argmax(1).numpy()
        rates[name] = float(np.mean(predicted == label))
    return rates


def main(argv: list[str] | None = None) -> int:
    """`python -m training.class_gaussians --checkpoint C`: fit the class Gaussians of a trained model and
    report how often a classifier trained on the real data recognises the asked class in conditional
    samples."""
    import argparse
    import json

    from training.checkpoints import load_checkpoint
    from training.data import load_dataset, to_float

    parser = argparse.ArgumentParser(prog="python -m training.class_gaussians", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    model, _ = load_checkpoint(Path(args.checkpoint))
    cfg = model.config
    dataset = load_dataset(cfg.dataset, args.data_dir or cfg.data_dir, cfg.image_size, cfg.channels)
    names = dataset.classes or tuple(str(i) for i in range(int(dataset.y_train.max()) + 1))
    x_train, x_test = to_float(dataset.x_train), to_float(dataset.x_test)
    gaussians = fit_class_gaussians(model, x_train, dataset.y_train, names)
    net = train_classifier(x_train, dataset.y_train, len(names), args.classifier_epochs)
    rates = conditional_recognition(model, gaussians, net, args.per_class)
    report = {
        "classifier_test_accuracy": round(accuracy(net, x_test, dataset.y_test), 4),
        "chance": round(1 / len(rates), 4),
        "recognised": round(float(np.mean(list(rates.values()))), 4),
        "per_class": {k: round(v, 3) for k, v in rates.items()},
        "samples_per_class": args.per_class,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
