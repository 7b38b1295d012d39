"""Shared fixtures: real MNIST, and tiny VAEs trained and exported once per session.

The service tests run against these exports, so every HTTP test exercises real ONNX graphs produced by
the project's own training and export code; nothing is committed as a binary test asset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The MNIST cache folder (`make data` fills it; fetched here too so plain `pytest` works)."""
    from training.data import fetch_mnist

    path = Path(os.environ.get("VAE_DATA_DIR", ROOT / "data"))
    fetch_mnist(path)
    return path


@pytest.fixture(scope="session")
def mnist(data_dir: Path):
    from training.data import load_mnist

    return load_mnist(data_dir)


@pytest.fixture(scope="session")
def mnist_digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The first 100 real test digits as float32 (N, 1, 28, 28) in [0, 1], and their labels."""
    return mnist.x_test[:100].astype(np.float32) / 255.0, mnist.y_test[:100]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _train_and_export(
    mnist, models_dir: Path, run_dir: Path, name: str, latent_dim: int, epochs: int
) -> Path:
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    config = TrainConfig(
        latent_dim=latent_dim,
        hidden_dims=(128,),
        epochs=epochs,
        train_limit=6000,
        test_limit=500,
        seed=3,
        threads=2,
    )
    result = train(config, run_dir, dataset=mnist, progress=False)
    trained_on = mnist.limited(config.train_limit, config.test_limit)
    target, _ = export_run(
        result.model, trained_on, result.final, models_dir, name, measured_with="tests/conftest.py"
    )
    return target


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, mnist) -> Path:
    """A models/ folder with `tiny/1` (latent 8) and `tiny-2d/1` (latent 2), both MLP VAEs on real MNIST.

    Treat it as read-only: tests that modify a model copy it first (see `model_copy`).
    """
    root = tmp_path_factory.mktemp("models")
    runs = tmp_path_factory.mktemp("runs")
    _train_and_export(mnist, root, runs / "tiny", "tiny", latent_dim=8, epochs=3)
    _train_and_export(mnist, root, runs / "tiny-2d", "tiny-2d", latent_dim=2, epochs=3)
    return root


@pytest.fixture
def model_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the fixture models/ folder."""
    import shutil

    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target
