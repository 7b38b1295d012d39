"""What training reads: a dataset by name (MNIST, Fashion-MNIST, emoji, IDX files or an image folder, each
loaded by its module under `training/datasets/`), as float tensors, in batches. Batches are sliced from
tensors, not collated item by item, which is what makes an epoch on two CPU cores fast.

Every problem with the data ends in one `DataError` (`training.errors`) whose message says how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from training.datasets.images import ImageDataset, load_idx_dir, load_image_folder
from training.datasets.mnist import load_mnist
from training.errors import DataError


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 in [0, 1], the convention of torchvision's ToTensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def load_dataset(dataset: str, data_dir: str | Path, image_size: int = 32, channels: int = 3) -> ImageDataset:
    if dataset == "mnist":
        return load_mnist(Path(data_dir))
    if dataset == "idx":
        return load_idx_dir(Path(data_dir))
    if dataset == "folder":
        return load_image_folder(Path(data_dir), image_size, channels)
    if dataset == "fashion":
        from training.datasets.fashion import load_fashion

        return load_fashion(Path(data_dir))
    if dataset == "emoji":
        from training.datasets.emoji import load_emoji

        return load_emoji(Path(data_dir), image_size)
    raise DataError(f"unknown dataset {dataset!r}: use mnist, fashion, emoji, idx or folder")


# --- batches


def iterate_batches(
    x: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    binarize: bool = False,
    hflip: bool = False,
) -> Iterator[torch.Tensor]:
    """Slices of a float tensor already in memory; with `binarize`, each batch is a fresh Bernoulli draw;
    with `hflip`, each image is mirrored left to right with probability 1/2."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator, device=x.device) if shuffle else None
    for start in range(0, n, batch_size):
        batch = x[order[start : start + batch_size]] if order is not None else x[start : start + batch_size]
        if hflip:
            mirror = torch.rand(batch.shape[0], generator=generator, device=x.device) < 0.5
            batch = torch.where(mirror[:, None, None, None], batch.flip(-1), batch)
        yield torch.bernoulli(batch, generator=generator) if binarize else batch


def binarize_once(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed Bernoulli draw of a test set, so every evaluation sees the same binary images."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
