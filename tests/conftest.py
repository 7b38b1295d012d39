"""Shared fixtures: real MNIST, and a models/ folder of VAEs fitted to it once per session.

`models_dir` holds linear VAEs fitted to real MNIST in closed form and written as ONNX graphs with onnx.helper
(tests/mnist_models.py), so the service, web and bench tests never import torch; tests/training/conftest.py
replaces it with VAEs trained and exported by the project's own code for the export tests. Nothing is
committed as a binary test asset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


# training.datasets.mnist.MNIST_CACHE, named here because the training package imports torch.
MNIST_CACHE = "mnist.npz"
# What the fixture models are fitted and measured on: a closed-form fit needs few images.
FIT_TRAIN, FIT_TEST = 2000, 500


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The MNIST cache folder (`make data` fills it; fetched here too so plain `pytest` works)."""
    path = Path(os.environ.get("VAE_DATA_DIR", ROOT / "data"))
    if not (path / MNIST_CACHE).is_file():
        from training.datasets.mnist import fetch_mnist

        fetch_mnist(path)
    return path


@pytest.fixture(scope="session")
def mnist(data_dir: Path):
    from training.datasets.mnist import load_mnist

    return load_mnist(data_dir)


@pytest.fixture(scope="session")
def mnist_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    """The MNIST cache's arrays (uint8 images (N, 1, 28, 28), int64 labels, `source`), read without torch."""
    with np.load(data_dir / MNIST_CACHE, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="session")
def mnist_digits(mnist_arrays) -> tuple[np.ndarray, np.ndarray]:
    """The first 100 real test digits as float32 (N, 1, 28, 28) in [0, 1], and their labels."""
    return mnist_arrays["x_test"][:100].astype(np.float32) / 255.0, mnist_arrays["y_test"][:100]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, mnist_arrays) -> Path:
    """A models/ folder with `tiny/1` (latent 8) and `tiny-2d/1` (latent 2), linear VAEs fitted to real MNIST.

    Treat it as read-only: tests that modify a model copy it first (see `model_copy`).
    """
    from mnist_models import write_mnist_models

    root = tmp_path_factory.mktemp("models")
    x_train, x_test = mnist_arrays["x_train"][:FIT_TRAIN], mnist_arrays["x_test"][:FIT_TEST]
    return write_mnist_models(root, x_train, x_test, source=str(mnist_arrays.get("source", MNIST_CACHE)))


@pytest.fixture
def model_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the fixture models/ folder."""
    import shutil

    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target
