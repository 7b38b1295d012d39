"""One epoch of the MLP VAE: pytorch/examples' own loop against ours, measured in the same process.

    .venv/bin/python -m bench.train_speed [--data-dir data] [--epochs 1] [--threads 2]

The reference is pytorch/examples vae/main.py (model, loss and train loop copied as they are), fed the way
torchvision feeds it: a Dataset that turns each uint8 digit into a PIL image and then a tensor (ToTensor),
collated by a DataLoader with batch 128 and shuffling. torchvision itself is not a dependency, so its
MNIST class is reproduced in `_TorchvisionStyleMNIST`. Ours slices batches from one tensor in memory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset


class _TorchvisionStyleMNIST(Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images[:, 0]  # (N, 28, 28) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index], mode="L")  # as torchvision.datasets.MNIST does
        tensor = torch.from_numpy(np.array(img, dtype=np.uint8)).float().div(255).unsqueeze(0)  # ToTensor
        return tensor, 0


class _ExamplesVAE(nn.Module):  # pytorch/examples vae/main.py, verbatim apart from names
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def _examples_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def examples_epoch(images: np.ndarray) -> tuple[float, float]:
    """Seconds for one epoch of pytorch/examples' loop, and its mean training loss."""
    torch.manual_seed(1)
    loader = DataLoader(_TorchvisionStyleMNIST(images), batch_size=128, shuffle=True)
    model = _ExamplesVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    tic, total = time.perf_counter(), 0.0
    for data, _ in loader:
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = _examples_loss(recon_batch, data, mu, logvar)
        loss.backward()
        total += loss.item()
        optimizer.step()
    return time.perf_counter() - tic, total / len(images)


def ours_epoch(dataset) -> tuple[float, float]:
    from training.config import TrainConfig
    from training.train import train

    with tempfile.TemporaryDirectory() as run:
        result = train(
            TrainConfig(epochs=1, eval_every=10, test_limit=100), Path(run), dataset, progress=False
        )
    row = result.history[0]
    return row["seconds"], row["train"]["neg_elbo"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--repeats", type=int, default=2, help="epochs of each, alternating; best time wins")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from training.datasets.mnist import load_mnist

    dataset = load_mnist(Path(args.data_dir))
    examples, ours = [], []
    for _ in range(args.repeats):  # alternate so drifting machine load hits both equally
        examples.append(examples_epoch(dataset.x_train))
        ours.append(ours_epoch(dataset))
    best_examples, best_ours = min(t for t, _ in examples), min(t for t, _ in ours)
    report = {
        "images": len(dataset.x_train),
        "threads": torch.get_num_threads(),
        "pytorch_examples_epoch_s": round(best_examples, 2),
        "ours_epoch_s": round(best_ours, 2),
        "speedup": round(best_examples / best_ours, 2),
        "pytorch_examples_samples_per_s": round(len(dataset.x_train) / best_examples),
        "ours_samples_per_s": round(len(dataset.x_train) / best_ours),
        "first_epoch_train_loss": {
            "pytorch_examples": round(examples[0][1], 2),
            "ours": round(ours[0][1], 2),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
